"""Camera trajectories: REF resampling (spec §7.5) and predefined paths for text-only requests."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from flashworld_jax.geometry._arrays import as_float_array
from flashworld_jax.geometry.cameras import CAMERA_DIM
from flashworld_jax.geometry.quaternions import quat_slerp

TRAJECTORY_NAMES = ("orbit", "dolly", "pan", "arc")
# Sweep angle in degrees when none is given (orbit: a full turn; arc: a quarter; pan: a look-around).
_DEFAULT_SWEEP_DEGREES = {"orbit": 360.0, "arc": 90.0, "pan": 60.0, "dolly": 0.0}


@functools.partial(jax.jit, static_argnums=1)
def _resample_knots(cams: jax.Array, n: int) -> jax.Array:
  num_knots = cams.shape[0]
  t = jnp.linspace(0.0, 1.0, n, dtype=cams.dtype)
  position = t * (num_knots - 1)
  left = jnp.clip(jnp.floor(position).astype(jnp.int32), 0, num_knots - 2)
  fraction = position - left.astype(cams.dtype)
  a, b = cams[left], cams[left + 1]
  quat = quat_slerp(a[:, :4], b[:, :4], fraction)
  rest = a[:, 4:] + fraction[:, None] * (b[:, 4:] - a[:, 4:])
  return jnp.concatenate([quat, rest], axis=-1)


def resample_cameras(cams: jax.typing.ArrayLike, n: int) -> jax.Array:
  """Samples a trajectory [N, 11] at n evenly spaced parameters t_k = k/(n−1) (REF
  `sample_from_dense_cameras`).

  Between knots i and i+1 (s = t_k·(N−1), i = clamp(⌊s⌋, 0, N−2), f = s − i) the rotation is the
  normalised slerp of the two quaternions and the position and the four intrinsics are lerped, so
  every knot is hit when n = N. A single camera is replicated n times (REF fails on it).
  """
  cams = as_float_array(cams, "cams", (CAMERA_DIM,))
  if cams.ndim != 2 or cams.shape[0] < 1:
    raise ValueError(f"cams must have shape [N, 11] with N ≥ 1, got {tuple(cams.shape)}")
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
    raise ValueError(f"n must be a positive int, got {n!r}")
  if cams.shape[0] == 1:
    return jnp.broadcast_to(cams, (n, CAMERA_DIM))
  return _resample_knots(cams, int(n))


def _through_index(num_cams: int, n: int, keep_index: int) -> int:
  """The view that camera `keep_index` of num_cams becomes among n: round(keep_index·(n−1)/(N−1)),
  halves rounded up, kept off the ends for an inner camera while n ≥ 3 so that both ends stay."""
  if num_cams == 1:
    return 0
  index = (2 * keep_index * (n - 1) + num_cams - 1) // (2 * (num_cams - 1))
  if 0 < keep_index < num_cams - 1 and n >= 3:
    index = min(max(index, 1), n - 2)
  return index


def resample_through(cams: jax.typing.ArrayLike, n: int, keep_index: int) -> tuple[jax.Array, int]:
  """Resamples a trajectory [N, 11] to n views of which one is camera `keep_index`, unchanged.

  The kept camera becomes view j = round(keep_index·(n−1)/(N−1)); the cameras up to it are
  resampled to j+1 views and those from it to n−j views (`resample_cameras`, so both ends stay
  views). An inner camera is kept off the ends (1 ≤ j ≤ n−2) while n ≥ 3; with fewer views it
  displaces the nearer end. Returns the n views and j.
  """
  cams = as_float_array(cams, "cams", (CAMERA_DIM,))
  if cams.ndim != 2 or cams.shape[0] < 1:
    raise ValueError(f"cams must have shape [N, 11] with N ≥ 1, got {tuple(cams.shape)}")
  num_cams = cams.shape[0]
  if not isinstance(keep_index, (int, np.integer)) or not 0 <= keep_index < num_cams:
    raise ValueError(f"keep_index must be an int in [0, {num_cams}), got {keep_index!r}")
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
    raise ValueError(f"n must be a positive int, got {n!r}")
  index = _through_index(num_cams, int(n), int(keep_index))
  before = resample_cameras(cams[:keep_index + 1], index + 1)
  after = resample_cameras(cams[keep_index:], int(n) - index)
  # The kept camera itself, not its resampled copies (slerp and lerp round it in the last bits).
  kept = cams[keep_index:keep_index + 1]
  return jnp.concatenate([before[:-1], kept, after[1:]]), index


def fov_intrinsics(height: int, width: int, fov_degrees: float) -> np.ndarray:
  """Normalised [f_x/W, f_y/H, c_x/W, c_y/H] of a centred pinhole with vertical field of view."""
  if not 0.0 < fov_degrees < 180.0:
    raise ValueError(f"fov_degrees must be in (0, 180), got {fov_degrees!r}")
  focal = 0.5 * height / math.tan(math.radians(fov_degrees) / 2.0)
  return np.array([focal / width, focal / height, 0.5, 0.5])


def make_trajectory(
    name: str,
    num_views: int,
    height: int,
    width: int,
    fov_degrees: float = 60.0,
    scale: float = 2.0,
    sweep_degrees: float | None = None,
) -> jax.Array:
  """A predefined trajectory [num_views, 11] (float32) that starts at the identity pose looking −z.

  - "orbit": circles a point `scale` units ahead, looking at it, over `sweep_degrees` (default 360,
    endpoint excluded so no view repeats).
  - "arc": the same orbit over a partial sweep (default 90°, endpoint included).
  - "pan": stays at the origin and turns left by `sweep_degrees` (default 60).
  - "dolly": moves straight forward by `scale` units (`sweep_degrees` does not apply).

  Intrinsics are a centred pinhole with vertical field of view `fov_degrees` on a height × width image.
  """
  if name not in TRAJECTORY_NAMES:
    raise ValueError(f"name must be one of {TRAJECTORY_NAMES}, got {name!r}")
  if not isinstance(num_views, (int, np.integer)) or isinstance(num_views, bool) or num_views < 1:
    raise ValueError(f"num_views must be a positive int, got {num_views!r}")
  if height < 1 or width < 1:
    raise ValueError(f"height and width must be positive, got height={height}, width={width}")
  if not scale > 0:
    raise ValueError(f"scale must be positive, got {scale!r}")
  sweep = math.radians(_DEFAULT_SWEEP_DEGREES[name] if sweep_degrees is None else sweep_degrees)
  steps = np.linspace(0.0, 1.0, num_views, endpoint=name != "orbit")
  # Every path turns about the world's +y axis only: yaw φ turns the −z view towards −x.
  yaw = steps * sweep if name != "dolly" else np.zeros_like(steps)
  zeros = np.zeros_like(steps)
  if name in ("orbit", "arc"):
    # On a circle of radius `scale` around (0, 0, −scale), yawed by φ to keep facing its centre.
    position = np.stack([scale * np.sin(yaw), zeros, scale * (np.cos(yaw) - 1.0)], axis=-1)
  elif name == "pan":
    position = np.zeros((num_views, 3))
  else:  # dolly
    position = np.stack([zeros, zeros, -scale * steps], axis=-1)
  quat = np.stack([np.cos(yaw / 2), zeros, np.sin(yaw / 2), zeros], axis=-1)
  quat *= np.where(quat[:, :1] < 0, -1.0, 1.0)  # w ≥ 0, as everywhere else
  intrinsics = np.broadcast_to(fov_intrinsics(height, width, fov_degrees), (num_views, 4))
  return jnp.asarray(np.concatenate([quat, position, intrinsics], axis=-1), jnp.float32)
