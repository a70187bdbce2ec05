"""Training layouts' pose conventions ↔ FlashWorld's 11-number cameras, on the host in float64.

| layout                     | pose stored                          | camera axes               |
|----------------------------|--------------------------------------|---------------------------|
| nerfstudio transforms.json | camera-to-world 4×4                  | OpenGL (y up, looks −z)   |
| RealEstate10K, OpenCV      | world-to-camera 3×4 (R, t)           | OpenCV (y down, looks +z) |
| COLMAP images.txt/.bin     | world-to-camera qvec (w, x, y, z), t | OpenCV                    |

Readers convert with the `*_to_cameras` functions, which first check every pose (finite, a proper
rotation block) and intrinsics and raise a `DataError` naming the file and the frame. The
`cameras_to_*` functions go the other way, to write a layout. The maths is `geometry.cameras`'s, run
under `jax.enable_x64`; it is jitted per power-of-two frame count, so clips of every length share a
handful of compilations instead of compiling each operation for each new length.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from flashworld_jax.data.clips import DataError
from flashworld_jax.geometry import cameras, quaternions

# Pose files carry 6-17 significant digits; anything further from a rotation is not a rotation.
ROTATION_TOLERANCE = 1e-3
# The smallest padded frame count: short clips share one compilation.
_MIN_PADDED_FRAMES = 8


@jax.jit
def _opengl_c2w_to_cameras(c2w, intrinsics):
  return cameras.c2w_to_cameras(c2w, intrinsics)


@jax.jit
def _opencv_w2c_to_cameras(rotation, translation, intrinsics):
  c2w_cv = cameras.invert_rigid(cameras.rigid_matrix(rotation, translation))
  return cameras.c2w_to_cameras(cameras.opencv_to_opengl(c2w_cv), intrinsics)


@jax.jit
def _quaternions_to_rotations(qvec):
  return quaternions.quat_to_rotmat(qvec)


@jax.jit
def _cameras_to_opengl_c2w(cams):
  return cameras.cameras_to_c2w(cams)


@jax.jit
def _cameras_to_opencv_w2c(cams):
  w2c = cameras.world_to_camera_opencv(cams)
  return w2c[..., :3, :3], w2c[..., :3, 3], quaternions.rotmat_to_quat(w2c[..., :3, :3])


def _in_float64(fn, *arrays: np.ndarray):
  """fn on float64 arrays sharing a leading frame axis; the axis is padded (with copies of the last
  frame) to a power of two and the outputs are cut back."""
  count = arrays[0].shape[0]
  if count == 0:
    raise ValueError("no frames to convert")
  padded = max(_MIN_PADDED_FRAMES, 1 << (count - 1).bit_length())
  arrays = [np.pad(np.asarray(a, np.float64), [(0, padded - count)] + [(0, 0)] * (a.ndim - 1),
                   mode="edge") for a in arrays]
  with jax.enable_x64(True):
    outputs = fn(*arrays)
  return jax.tree.map(lambda x: np.array(x[:count]), outputs)


def _frame(frame_names: Sequence[str], index: int) -> str:
  return f"frame {index} ({frame_names[index]})"


def check_poses(rotation: np.ndarray, translation: np.ndarray, path: str,
                frame_names: Sequence[str]) -> None:
  """DataError unless every pose is finite and its [3, 3] block a proper rotation
  (max|RᵀR − I| ≤ ROTATION_TOLERANCE and det R > 0)."""
  rotation = np.asarray(rotation, np.float64)
  translation = np.asarray(translation, np.float64)
  finite = np.isfinite(rotation).all(axis=(1, 2)) & np.isfinite(translation).all(axis=1)
  if not finite.all():
    i = int(np.argmin(finite))
    raise DataError(path, f"{_frame(frame_names, i)}: the pose has non-finite entries (rotation "
                    f"{rotation[i].tolist()}, translation {translation[i].tolist()})",
                    "invalid pose")
  error = np.abs(np.swapaxes(rotation, 1, 2) @ rotation - np.eye(3)).max(axis=(1, 2))
  det = np.linalg.det(rotation)
  bad = (error > ROTATION_TOLERANCE) | (det <= 0)
  if bad.any():
    i = int(np.argmax(bad))
    raise DataError(path, f"{_frame(frame_names, i)}: the rotation block {rotation[i].tolist()} is "
                    f"not a rotation (max|RᵀR − I| = {error[i]:.3g}, det = {det[i]:.3g}; expected "
                    f"an orthonormal matrix with det +1 within {ROTATION_TOLERANCE})",
                    "invalid pose")


def check_intrinsics(intrinsics: np.ndarray, path: str, frame_names: Sequence[str]) -> None:
  """DataError unless every [fx/W, fy/H, cx/W, cy/H] is finite with positive focal lengths."""
  intrinsics = np.asarray(intrinsics, np.float64)
  bad = ~np.isfinite(intrinsics).all(axis=1) | (intrinsics[:, 0] <= 0) | (intrinsics[:, 1] <= 0)
  if bad.any():
    i = int(np.argmax(bad))
    raise DataError(path, f"{_frame(frame_names, i)}: normalised intrinsics fx/W, fy/H, cx/W, cy/H "
                    f"= {intrinsics[i].tolist()}; expected finite values with positive focal "
                    "lengths", "invalid intrinsics")


def opengl_c2w_to_cameras(c2w: np.ndarray, intrinsics: np.ndarray, path: str,
                          frame_names: Sequence[str]) -> np.ndarray:
  """Cameras [F, 11] from OpenGL camera-to-world matrices [F, 4, 4] or [F, 3, 4] and normalised
  intrinsics [F, 4] (nerfstudio, Blender)."""
  c2w = np.asarray(c2w, np.float64)
  if c2w.shape[1] == 4:
    bottom_ok = np.abs(c2w[:, 3] - [0.0, 0.0, 0.0, 1.0]).max(axis=1) <= ROTATION_TOLERANCE
    if not bottom_ok.all():
      i = int(np.argmin(bottom_ok))
      raise DataError(path, f"{_frame(frame_names, i)}: the bottom row of the 4×4 pose is "
                      f"{c2w[i, 3].tolist()}, expected [0, 0, 0, 1]", "invalid pose")
  check_poses(c2w[:, :3, :3], c2w[:, :3, 3], path, frame_names)
  check_intrinsics(intrinsics, path, frame_names)
  return _in_float64(_opengl_c2w_to_cameras, c2w[:, :3], intrinsics)


def opencv_w2c_to_cameras(rotation: np.ndarray, translation: np.ndarray, intrinsics: np.ndarray,
                          path: str, frame_names: Sequence[str]) -> np.ndarray:
  """Cameras [F, 11] from OpenCV world-to-camera rotations [F, 3, 3] and translations [F, 3] and
  normalised intrinsics [F, 4] (RealEstate10K, COLMAP)."""
  check_poses(rotation, translation, path, frame_names)
  check_intrinsics(intrinsics, path, frame_names)
  return _in_float64(_opencv_w2c_to_cameras, rotation, translation, intrinsics)


def colmap_to_cameras(qvec: np.ndarray, tvec: np.ndarray, intrinsics: np.ndarray, path: str,
                      frame_names: Sequence[str]) -> np.ndarray:
  """Cameras [F, 11] from COLMAP world-to-camera quaternions [F, 4] (w, x, y, z; unit length, as
  COLMAP writes them), translations [F, 3] and normalised intrinsics [F, 4]."""
  qvec = np.asarray(qvec, np.float64)
  norm = np.linalg.norm(qvec, axis=1)
  bad = ~np.isfinite(qvec).all(axis=1) | (np.abs(norm - 1.0) > ROTATION_TOLERANCE)
  if bad.any():
    i = int(np.argmax(bad))
    raise DataError(path, f"{_frame(frame_names, i)}: quaternion {qvec[i].tolist()} has norm "
                    f"{norm[i]:.6g}, expected a unit quaternion (within {ROTATION_TOLERANCE})",
                    "invalid pose")
  rotation = _in_float64(_quaternions_to_rotations, qvec)
  return opencv_w2c_to_cameras(rotation, tvec, intrinsics, path, frame_names)


def cameras_to_opengl_c2w(cams: np.ndarray) -> np.ndarray:
  """OpenGL camera-to-world matrices [F, 4, 4] of cameras [F, 11] (a transforms.json pose)."""
  return _in_float64(_cameras_to_opengl_c2w, cams)


def cameras_to_opencv_w2c(cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """OpenCV world-to-camera rotations [F, 3, 3] and translations [F, 3] of cameras [F, 11]."""
  rotation, translation, _ = _in_float64(_cameras_to_opencv_w2c, cams)
  return rotation, translation


def cameras_to_colmap(cams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """COLMAP qvec [F, 4] (w, x, y, z, unit, w ≥ 0) and tvec [F, 3] of cameras [F, 11]."""
  _, translation, qvec = _in_float64(_cameras_to_opencv_w2c, cams)
  return qvec, translation
