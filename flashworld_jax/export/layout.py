"""The [N, 38] Gaussian tensor layout and the activation ↔ storage encodings shared by the exporters.

Row layout (formats.md §2): [x, y, z, opacity, s_x, s_y, s_z, q_w, q_x, q_y, q_z, SH×27] with opacity
and scales activated and degree-2 SH coefficient-major (coefficient k, channel c at 11 + 3k + c).
"""
from __future__ import annotations

import numpy as np

NUM_CHANNELS = 38
SH_DEGREE = 2
NUM_SH_COEFFS = (SH_DEGREE + 1) ** 2
POSITION = slice(0, 3)
OPACITY = 3
SCALE = slice(4, 7)
ROTATION = slice(7, 11)
SH = slice(11, 38)

OPACITY_EPS = 1e-6   # logit(0) and logit(1) are infinite (quirk f)
SCALE_EPS = 1e-8     # REF's epsilon inside log(s + ε)


def as_gaussians(gaussians, name: str = "gaussians") -> np.ndarray:
  """Host float array [N, 38] (float32 unless already float64), checked for shape and finiteness."""
  g = np.asarray(gaussians)
  if g.ndim != 2 or g.shape[1] != NUM_CHANNELS:
    raise ValueError(f"{name}: got shape {g.shape}, expected [N, {NUM_CHANNELS}]")
  if g.dtype != np.float64:
    g = g.astype(np.float32, copy=False)
  bad = ~np.isfinite(g).all(axis=1)
  if bad.any():
    raise ValueError(f"{name}: {int(bad.sum())} of {len(g)} rows hold NaN or inf, expected finite values")
  return g


def drop_transparent(gaussians: np.ndarray, opacity_threshold: float | None) -> np.ndarray:
  """Rows with activated opacity ≥ `opacity_threshold` (all rows when it is None)."""
  if opacity_threshold is None:
    return gaussians
  if not 0.0 <= opacity_threshold < 1.0:
    raise ValueError(f"opacity_threshold: got {opacity_threshold!r}, expected None or a value in [0, 1)")
  return gaussians[gaussians[:, OPACITY] >= opacity_threshold]


def opacity_to_logit(opacity: np.ndarray) -> np.ndarray:
  o = np.clip(opacity.astype(np.float64), OPACITY_EPS, 1.0 - OPACITY_EPS)
  return np.log(o / (1.0 - o))


def scale_to_log(scale: np.ndarray) -> np.ndarray:
  return np.log(scale.astype(np.float64) + SCALE_EPS)


def normalised_quaternions(q: np.ndarray) -> np.ndarray:
  """Unit quaternions; an all-zero quaternion (no defined rotation) becomes the identity."""
  q = q.astype(np.float64)
  norm = np.linalg.norm(q, axis=-1, keepdims=True)
  identity = np.zeros_like(q)
  identity[..., 0] = 1.0
  return np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), identity)


def sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free for large |x|
