"""Moving Gaussians from the normalised frame to the request's world frame (spec flashworld.md §11).

A similarity transform x ↦ s·R·x + t acts on a Gaussian as: μ' = s·R·μ + t, scales' = s·scales,
q' = q_R ⊗ q (Hamilton, wxyz) and the view-dependent colour f'(d) = f(Rᵀd), i.e. each SH band l ≥ 1
is multiplied by a (2l+1)×(2l+1) matrix. Host-side numpy: it runs once per exported scene.
"""
from __future__ import annotations

import numpy as np
from absl import logging

from flashworld_jax.export import layout

# The degree-2 real SH basis of 3DGS / gsplat (its sign convention matters for band 1).
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)

# s_norm = T_norm + 0.01, so s_norm at (or just above) 0.01 means every camera centre coincides.
DEGENERATE_S_NORM = 0.01 + 1e-6

# Generic directions for fitting the band-rotation matrices: more than 2l + 1 = 5, none special.
_FIT_DIRECTIONS = np.random.default_rng(0).normal(size=(16, 3))
_FIT_DIRECTIONS /= np.linalg.norm(_FIT_DIRECTIONS, axis=1, keepdims=True)

# 180° about x: the request's y-up world to an OpenCV-style (y-down, z-forward) world.
OPENCV_FROM_REQUEST = np.diag([1.0, -1.0, -1.0])


def sh_basis(directions: np.ndarray) -> np.ndarray:
  """The 9 degree-2 SH basis functions at unit `directions` [..., 3] → [..., 9] (coefficient order)."""
  x, y, z = directions[..., 0], directions[..., 1], directions[..., 2]
  return np.stack([
      np.full_like(x, SH_C0),
      -SH_C1 * y, SH_C1 * z, -SH_C1 * x,
      SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * z * z - x * x - y * y),
      SH_C2[3] * x * z, SH_C2[4] * (x * x - y * y),
  ], axis=-1)


def sh_rotation(rotation: np.ndarray) -> np.ndarray:
  """9×9 block-diagonal M with coefficients' = M·coefficients for a scene rotated by `rotation`.

  The rotated colour must satisfy f'(d) = f(Rᵀd); per band l the least-squares fit over generic
  directions D is exact because band l is closed under rotation: M_l = pinv(Y_l(D))·Y_l(Rᵀ·D).
  """
  basis = sh_basis(_FIT_DIRECTIONS)
  rotated = sh_basis(_FIT_DIRECTIONS @ rotation)   # row i: Y(Rᵀ d_i)
  matrix = np.zeros((layout.NUM_SH_COEFFS, layout.NUM_SH_COEFFS))
  matrix[0, 0] = 1.0
  for band in (slice(1, 4), slice(4, 9)):
    matrix[band, band] = np.linalg.pinv(basis[:, band]) @ rotated[:, band]
  return matrix


def quaternion_from_matrix(rotation: np.ndarray) -> np.ndarray:
  """Unit quaternion (w, x, y, z), w ≥ 0, of a 3×3 rotation matrix (Shepperd's stable branches)."""
  r = np.asarray(rotation, dtype=np.float64)
  trace = np.trace(r)
  if trace > 0:
    s = 2.0 * np.sqrt(trace + 1.0)
    q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
  elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
    s = 2.0 * np.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
    q = [(r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s]
  elif r[1, 1] > r[2, 2]:
    s = 2.0 * np.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
    q = [(r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s]
  else:
    s = 2.0 * np.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
    q = [(r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s]
  q = np.asarray(q) / np.linalg.norm(q)
  return q if q[0] >= 0 else -q


def matrix_from_quaternion(q: np.ndarray) -> np.ndarray:
  """3×3 rotation matrix of a unit quaternion (w, x, y, z)."""
  w, x, y, z = np.asarray(q, dtype=np.float64)
  return np.array([
      [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
  ])


def left_multiplication_matrix(p: np.ndarray) -> np.ndarray:
  """4×4 L with L·q = p ⊗ q (Hamilton product, quaternions as (w, x, y, z) columns)."""
  w, x, y, z = np.asarray(p, dtype=np.float64)
  return np.array([[w, -x, -y, -z],
                   [x, w, -z, y],
                   [y, z, w, -x],
                   [z, -y, x, w]])


def _check_rotation(rotation: np.ndarray, name: str) -> np.ndarray:
  r = np.asarray(rotation, dtype=np.float64)
  if r.shape != (3, 3):
    raise ValueError(f"{name}: got shape {r.shape}, expected a 3×3 rotation")
  if not np.allclose(r @ r.T, np.eye(3), atol=1e-4) or np.linalg.det(r) < 0:
    raise ValueError(f"{name}: {r.tolist()} is not a proper rotation (orthonormal, det +1)")
  return r


def transform_gaussians(gaussians, rotation: np.ndarray, translation: np.ndarray,
                        scale: float) -> np.ndarray:
  """Applies x ↦ scale·R·x + t to [N, 38] Gaussians (positions, scales, rotations, SH bands 1-2).

  The rotation is snapped to its unit quaternion so that positions, orientations and SH use one
  exactly orthonormal R. float64 input stays float64, anything else becomes float32.
  """
  g = layout.as_gaussians(gaussians)
  if not np.isfinite(scale) or scale <= 0:
    raise ValueError(f"scale: got {scale!r}, expected a finite positive number")
  t = np.asarray(translation, dtype=np.float64)
  if t.shape != (3,):
    raise ValueError(f"translation: got shape {t.shape}, expected (3,)")
  q_ref = quaternion_from_matrix(_check_rotation(rotation, "rotation"))
  r = matrix_from_quaternion(q_ref)

  out = g.copy()
  positions = np.ascontiguousarray(g[:, layout.POSITION], dtype=np.float64)
  out[:, layout.POSITION] = positions @ (scale * r).T + t
  out[:, layout.SCALE] = g[:, layout.SCALE] * scale
  out[:, layout.ROTATION] = g[:, layout.ROTATION] @ left_multiplication_matrix(q_ref).T.astype(g.dtype)
  # One [3N, 9] × [9, 9] GEMM: rows are (Gaussian, channel) pairs, columns SH coefficients.
  n, k = len(g), layout.NUM_SH_COEFFS
  sh = g[:, layout.SH].reshape(n, k, 3).transpose(0, 2, 1).reshape(n * 3, k)
  rotated = sh @ sh_rotation(r).T.astype(g.dtype)
  out[:, layout.SH] = rotated.reshape(n, 3, k).transpose(0, 2, 1).reshape(n, 3 * k)
  return out


def gaussians_to_world(gaussians, ref_c2w: np.ndarray, s_norm: float) -> np.ndarray:
  """Normalised-frame Gaussians [N, 38] → the request's world frame (undoes camera normalisation).

  Args:
    gaussians: [N, 38] in the frame where camera 0 is the identity and translations were divided by
      s_norm.
    ref_c2w: [4, 4] camera-to-world matrix of the trajectory's first camera.
    s_norm: T_norm + 0.01 as returned by the camera normalisation.
  """
  c2w = np.asarray(ref_c2w, dtype=np.float64)
  if c2w.shape != (4, 4) or not np.allclose(c2w[3], [0, 0, 0, 1]):
    raise ValueError(f"ref_c2w: got {c2w.tolist()}, expected a 4×4 rigid camera-to-world matrix")
  _check_rotation(c2w[:3, :3], "ref_c2w[:3, :3]")
  s_norm = float(s_norm)
  if not np.isfinite(s_norm) or s_norm <= 0:
    raise ValueError(f"s_norm: got {s_norm!r}, expected a finite positive number")
  if s_norm <= DEGENERATE_S_NORM:
    logging.warning("s_norm = %.6g: degenerate trajectory (all camera centres coincide, T_norm = 0); "
                    "the exported scene's scale is arbitrary", s_norm)
  return transform_gaussians(gaussians, c2w[:3, :3], c2w[:3, 3], s_norm)


def to_opencv_world(gaussians) -> np.ndarray:
  """Rotates Gaussians 180° about x, (x, y, z) → (x, −y, −z), for viewers assuming a y-down world.

  The same call converts back (the rotation is its own inverse).
  """
  return transform_gaussians(gaussians, OPENCV_FROM_REQUEST, np.zeros(3), 1.0)
