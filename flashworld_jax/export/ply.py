"""3DGS PLY in the standard INRIA layout (formats.md §3): writer and tolerant reader."""
from __future__ import annotations

import numpy as np
import plyfile
from absl import logging

from flashworld_jax.export import layout, world_frame
from flashworld_jax.io.atomic import atomic_path

_REST = layout.NUM_SH_COEFFS - 1   # SH coefficients above DC per channel (8 for degree 2)
PROPERTIES = (
    ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    + tuple(f"f_rest_{i}" for i in range(3 * _REST))
    + ("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"))
# f_rest count → SH degree; the reference writer's layout instead puts all 27 values in f_dc_*.
_DEGREE_FROM_REST = {0: 0, 9: 1, 24: 2, 45: 3}
_REFERENCE_DC = 27
_HEADER_LIMIT = 1 << 20


def _header(num_points: int) -> bytes:
  lines = ["ply", "format binary_little_endian 1.0", f"element vertex {num_points}"]
  lines += [f"property float {name}" for name in PROPERTIES]
  lines.append("end_header")
  return ("\n".join(lines) + "\n").encode("ascii")


def encode(gaussians: np.ndarray) -> np.ndarray:
  """[N, 38] activated Gaussians → [N, 41] little-endian float32 rows in `PROPERTIES` order."""
  n = len(gaussians)
  sh = gaussians[:, layout.SH].reshape(n, layout.NUM_SH_COEFFS, 3)
  rows = np.zeros((n, len(PROPERTIES)), dtype="<f4")
  rows[:, 0:3] = gaussians[:, layout.POSITION]
  rows[:, 6:9] = sh[:, 0]
  # Channel-major rest: f_rest[c·8 + k − 1] = SH[3k + c].
  rows[:, 9:9 + 3 * _REST] = sh[:, 1:].transpose(0, 2, 1).reshape(n, 3 * _REST)
  rows[:, 33] = layout.opacity_to_logit(gaussians[:, layout.OPACITY])
  rows[:, 34:37] = layout.scale_to_log(gaussians[:, layout.SCALE])
  rows[:, 37:41] = layout.normalised_quaternions(gaussians[:, layout.ROTATION])
  return rows


def write_ply(path: str, gaussians, *, opacity_threshold: float | None = None,
              opencv_world: bool = False) -> int:
  """Writes world-frame Gaussians [N, 38] as a binary 3DGS PLY, atomically. Returns the point count.

  Args:
    path: output file.
    gaussians: [N, 38] activated Gaussians (formats.md §2), already in the frame to store.
    opacity_threshold: drop Gaussians whose activated opacity is below it (None keeps all).
    opencv_world: rotate 180° about x first, for viewers that assume a y-down world.
  """
  g = layout.drop_transparent(layout.as_gaussians(gaussians), opacity_threshold)
  if opencv_world:
    g = world_frame.to_opencv_world(g)
  rows = encode(g)
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(_header(len(rows)))
    f.write(memoryview(rows).cast("B"))
  return len(rows)


def _check_binary_little_endian(path: str) -> None:
  with open(path, "rb") as f:
    head = f.read(_HEADER_LIMIT)
  if not head.startswith(b"ply"):
    raise ValueError(f"path: {path!r} is not a PLY file (expected the magic line 'ply')")
  end = head.find(b"end_header")
  if end < 0:
    raise ValueError(f"path: {path!r} has no 'end_header' within the first {_HEADER_LIMIT} bytes")
  formats = [line.split() for line in head[:end].decode("ascii", "replace").splitlines()
             if line.startswith("format")]
  fmt = formats[0][1] if formats and len(formats[0]) > 1 else "missing"
  if fmt != "binary_little_endian":
    raise ValueError(f"path: {path!r} has PLY format {fmt!r}; only binary_little_endian is supported "
                     "(ASCII and big-endian files must be converted first)")


def _sh_from_properties(vertex: np.ndarray, names: set[str]) -> tuple[np.ndarray, int]:
  """Coefficient-major SH [N, 9, 3] (degree ≤ 2 kept, missing bands zero) and the file's degree."""
  n = len(vertex)
  sh = np.zeros((n, layout.NUM_SH_COEFFS, 3), dtype=np.float32)
  num_dc = sum(1 for name in names if name.startswith("f_dc_"))
  num_rest = sum(1 for name in names if name.startswith("f_rest_"))
  if num_dc == _REFERENCE_DC and num_rest == 0:
    # Reference writer (quirk a): all 27 values coefficient-major under f_dc_*.
    _require(names, [f"f_dc_{i}" for i in range(_REFERENCE_DC)])
    for i in range(_REFERENCE_DC):
      sh[:, i // 3, i % 3] = vertex[f"f_dc_{i}"]
    return sh, layout.SH_DEGREE
  if num_dc != 3 or num_rest not in _DEGREE_FROM_REST:
    raise ValueError(f"vertex properties: {num_dc} f_dc_* and {num_rest} f_rest_*; expected 3 f_dc_* "
                     f"with 0, 9, 24 or 45 f_rest_*, or the reference layout's 27 f_dc_* alone")
  _require(names, [f"f_dc_{c}" for c in range(3)] + [f"f_rest_{i}" for i in range(num_rest)])
  degree = _DEGREE_FROM_REST[num_rest]
  rest_per_channel = num_rest // 3
  for c in range(3):
    sh[:, 0, c] = vertex[f"f_dc_{c}"]
    for k in range(1, min(rest_per_channel + 1, layout.NUM_SH_COEFFS)):
      sh[:, k, c] = vertex[f"f_rest_{c * rest_per_channel + k - 1}"]
  if degree > layout.SH_DEGREE:
    logging.warning("PLY has SH degree %d; coefficients above degree %d are dropped",
                    degree, layout.SH_DEGREE)
  return sh, degree


def _require(names: set[str], wanted: list[str]) -> None:
  missing = [name for name in wanted if name not in names]
  if missing:
    raise ValueError(f"vertex properties: missing {missing}")


def read_ply(path: str, *, opencv_world: bool = False) -> tuple[np.ndarray, int]:
  """Reads a binary little-endian 3DGS PLY → (activated Gaussians [N, 38] float32, file SH degree).

  Properties are found by name (extra properties and elements are ignored); the SH degree comes
  from the f_rest_* count; the reference writer's 27-f_dc_* layout is recognised. `opencv_world`
  undoes the writer's flag of the same name.
  """
  _check_binary_little_endian(path)
  data = plyfile.PlyData.read(path)
  if "vertex" not in [element.name for element in data.elements]:
    raise ValueError(f"path: {path!r} has no 'vertex' element")
  vertex = data["vertex"].data
  names = set(vertex.dtype.names)
  _require(names, ["x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2",
                   "rot_0", "rot_1", "rot_2", "rot_3"])
  sh, degree = _sh_from_properties(vertex, names)

  def columns(*keys: str) -> np.ndarray:
    return np.stack([np.asarray(vertex[k], dtype=np.float64) for k in keys], axis=1)

  g = np.empty((len(vertex), layout.NUM_CHANNELS), dtype=np.float32)
  g[:, layout.POSITION] = columns("x", "y", "z")
  g[:, layout.OPACITY] = layout.sigmoid(np.asarray(vertex["opacity"], dtype=np.float64))
  g[:, layout.SCALE] = np.exp(columns("scale_0", "scale_1", "scale_2"))
  g[:, layout.ROTATION] = layout.normalised_quaternions(columns("rot_0", "rot_1", "rot_2", "rot_3"))
  g[:, layout.SH] = sh.reshape(len(vertex), -1)
  if opencv_world:
    g = world_frame.to_opencv_world(g)
  return g, degree
