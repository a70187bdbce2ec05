"""The 11-float camera vector and camera-to-world matrices (spec §7.1, §7.2).

A camera vector is [q_w, q_x, q_y, q_z, t_x, t_y, t_z, f_x/W, f_y/H, c_x/W, c_y/H]: a camera-to-world
rotation quaternion (any non-zero norm), the camera centre, and intrinsics normalised by the image
width W and height H. Camera axes are OpenGL / three.js: x right, y up, looking along −z.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flashworld_jax.geometry._arrays import as_float_array
from flashworld_jax.geometry.quaternions import quat_to_rotmat, rotmat_to_quat

CAMERA_DIM = 11
# REF adds this to the largest camera distance, so a trajectory of equal centres still divides safely.
NORM_EPS = 0.01
# Flipping camera y and z turns OpenGL camera axes (y up, looking −z) into OpenCV ones (y down, +z).
_GL_CV_FLIP = (1.0, -1.0, -1.0, 1.0)


def _cameras(cams: jax.typing.ArrayLike) -> jax.Array:
  return as_float_array(cams, "cams", (CAMERA_DIM,))


def rigid_matrix(rotation: jax.Array, translation: jax.Array) -> jax.Array:
  """[..., 4, 4] homogeneous matrices from rotations [..., 3, 3] and translations [..., 3]."""
  batch = jnp.broadcast_shapes(rotation.shape[:-2], translation.shape[:-1])
  top = jnp.concatenate([jnp.broadcast_to(rotation, batch + (3, 3)),
                         jnp.broadcast_to(translation, batch + (3,))[..., None]], axis=-1)
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], top.dtype), batch + (1, 4))
  return jnp.concatenate([top, bottom], axis=-2)


def cameras_to_c2w(cams: jax.typing.ArrayLike) -> jax.Array:
  """Camera-to-world matrices [..., 4, 4] (OpenGL camera axes) of camera vectors [..., 11]."""
  cams = _cameras(cams)
  return rigid_matrix(quat_to_rotmat(cams[..., 0:4]), cams[..., 4:7])


def c2w_to_cameras(c2w: jax.typing.ArrayLike, intrinsics4: jax.typing.ArrayLike) -> jax.Array:
  """Camera vectors [..., 11] from c2w [..., 4, 4] (or [..., 3, 4]) and normalised intrinsics [..., 4].

  The quaternion is unit length with w ≥ 0.
  """
  c2w = jnp.asarray(c2w)
  if c2w.ndim < 2 or c2w.shape[-2:] not in ((4, 4), (3, 4)):
    raise ValueError(f"c2w must have shape [..., 4, 4] or [..., 3, 4], got {tuple(c2w.shape)}")
  c2w = as_float_array(c2w, "c2w", tuple(c2w.shape[-2:]))
  intrinsics4 = as_float_array(intrinsics4, "intrinsics4", (4,)).astype(c2w.dtype)
  quat = rotmat_to_quat(c2w[..., :3, :3])
  batch = jnp.broadcast_shapes(quat.shape[:-1], intrinsics4.shape[:-1])
  parts = (quat, c2w[..., :3, 3], intrinsics4)
  return jnp.concatenate([jnp.broadcast_to(p, batch + p.shape[-1:]) for p in parts], axis=-1)


def invert_rigid(m: jax.typing.ArrayLike) -> jax.Array:
  """Inverse of rigid transforms [..., 4, 4] (orthonormal rotation block): [Rᵀ, −Rᵀt]."""
  m = as_float_array(m, "m", (4, 4))
  rotation_t = jnp.swapaxes(m[..., :3, :3], -1, -2)
  return rigid_matrix(rotation_t, -jnp.einsum("...ij,...j->...i", rotation_t, m[..., :3, 3]))


def opengl_to_opencv(c2w: jax.typing.ArrayLike) -> jax.Array:
  """c2w·diag(1, −1, −1, 1): swaps OpenGL and OpenCV camera axes; it is its own inverse."""
  c2w = as_float_array(c2w, "c2w", (4, 4))
  return c2w * jnp.asarray(_GL_CV_FLIP, c2w.dtype)


# The axis flip is an involution, so the same function converts back.
opencv_to_opengl = opengl_to_opencv


def world_to_camera_opencv(cams: jax.typing.ArrayLike) -> jax.Array:
  """World-to-camera view matrices [..., 4, 4] with OpenCV camera axes (the renderer's viewmats)."""
  return invert_rigid(opengl_to_opencv(cameras_to_c2w(cams)))


def intrinsics_matrix(cams: jax.typing.ArrayLike, height: int, width: int) -> jax.Array:
  """Pinhole matrices K [..., 3, 3] in pixels of a height × width image."""
  cams = _cameras(cams)
  fx, fy, cx, cy = jnp.moveaxis(cams[..., 7:11], -1, 0)
  zero, one = jnp.zeros_like(fx), jnp.ones_like(fx)
  rows = (fx * width, zero, cx * width, zero, fy * height, cy * height, zero, zero, one)
  return jnp.stack(rows, axis=-1).reshape(cams.shape[:-1] + (3, 3))


def normalize_cameras(
    cams: jax.typing.ArrayLike,
    ref_c2w: jax.typing.ArrayLike | None = None,
    s_norm: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Expresses a trajectory [..., N, 11] in the frame of its first camera, scaled into the unit ball.

  REF `normalize_cameras` (spec §7.2): c2w'_i = ref_c2w⁻¹·c2w_i with ref_c2w = c2w_0, translations
  divided by s_norm = max_i ‖t'_i‖ + 0.01, quaternions back to unit length with w ≥ 0, intrinsics
  unchanged. Pass `ref_c2w` [..., 4, 4] and `s_norm` [...] of an earlier call to normalise other
  cameras (e.g. the video trajectory) into the same frame.

  Returns:
    (cams_n [..., N, 11], ref_c2w [..., 4, 4], s_norm [...]).
  """
  cams = _cameras(cams)
  if cams.ndim < 2 or cams.shape[-2] < 1:
    raise ValueError(f"cams must have shape [..., N, 11] with N ≥ 1, got {tuple(cams.shape)}")
  if (ref_c2w is None) != (s_norm is None):
    raise ValueError("ref_c2w and s_norm must be given together (both from one normalize_cameras call)")
  c2w = cameras_to_c2w(cams)
  if ref_c2w is None:
    ref_c2w = c2w[..., 0, :, :]
  ref_c2w = as_float_array(ref_c2w, "ref_c2w", (4, 4)).astype(cams.dtype)
  relative = invert_rigid(ref_c2w)[..., None, :, :] @ c2w
  if s_norm is None:
    s_norm = jnp.max(jnp.linalg.norm(relative[..., :3, 3], axis=-1), axis=-1) + NORM_EPS
  s_norm = jnp.asarray(s_norm, cams.dtype)
  translation = relative[..., :3, 3] / s_norm[..., None, None]
  quat = rotmat_to_quat(relative[..., :3, :3])
  return jnp.concatenate([quat, translation, cams[..., 7:]], axis=-1), ref_c2w, s_norm


def denormalize_points(points: jax.typing.ArrayLike, ref_c2w: jax.typing.ArrayLike,
                       s_norm: jax.typing.ArrayLike) -> jax.Array:
  """Maps points [..., 3] from the normalised frame back to the world: R_ref·(s_norm·p) + t_ref.

  `ref_c2w` is a single [4, 4] matrix and `s_norm` a scalar (one scene).
  """
  points = as_float_array(points, "points", (3,))
  ref_c2w = as_float_array(ref_c2w, "ref_c2w", (4, 4)).astype(points.dtype)
  scaled = points * jnp.asarray(s_norm, points.dtype)
  return scaled @ jnp.swapaxes(ref_c2w[..., :3, :3], -1, -2) + ref_c2w[..., :3, 3]


def denormalize_c2w(c2w_n: jax.typing.ArrayLike, ref_c2w: jax.typing.ArrayLike,
                    s_norm: jax.typing.ArrayLike) -> jax.Array:
  """Maps camera-to-world matrices [..., 4, 4] from the normalised frame back to the world frame.

  `ref_c2w` is a single [4, 4] matrix and `s_norm` a scalar (one scene).
  """
  c2w_n = as_float_array(c2w_n, "c2w_n", (4, 4))
  ref_c2w = as_float_array(ref_c2w, "ref_c2w", (4, 4)).astype(c2w_n.dtype)
  scaled = rigid_matrix(c2w_n[..., :3, :3], c2w_n[..., :3, 3] * jnp.asarray(s_norm, c2w_n.dtype))
  return ref_c2w @ scaled
