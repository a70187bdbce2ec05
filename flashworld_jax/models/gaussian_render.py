"""Renders D_G's Gaussians at FlashWorld cameras (REF `models/render.py`; spec flashworld.md §10)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flashworld_jax.geometry.cameras import intrinsics_matrix, world_to_camera_opencv
from flashworld_jax.models.gaussian_head import GAUSSIAN_DIM
from flashworld_jax.render import RasterCapacity, rasterization


def render_gaussians(gaussians: jax.Array, cams: jax.Array, height: int, width: int, *,
                     background: float | jax.Array = 1.0, near_plane: float = 0.01,
                     far_plane: float = 1000.0, sh_degree: int = 2,
                     capacity: RasterCapacity | None = None, backend: str = "auto"):
  """gaussians [N, 38] (layout of `GaussianDecoder`), cams [V, 11] → (rgb, depth, alpha, meta).

  rgb [V, H, W, 3] = 2·colour − 1 clamped to [−1, 1]; depth [V, H, W, 1] is the accumulated camera
  depth Σ wᵢ zᵢ (not alpha-normalised); alpha [V, H, W, 1]. `background` is a colour in [0, 1]:
  a scalar, [3] or per view [V, 3] (white at inference, random per view in training). OpenGL
  camera-to-world poses are flipped to OpenCV and inverted; K = normalised intrinsics × (W, H).
  Under jit pass a static `capacity` (see `flashworld_jax.render.estimate_capacity`).
  """
  if gaussians.ndim != 2 or gaussians.shape[-1] != GAUSSIAN_DIM:
    raise ValueError(f"gaussians must be [N, {GAUSSIAN_DIM}], got shape {gaussians.shape}")
  if cams.ndim != 2 or cams.shape[-1] != 11:
    raise ValueError(f"cams must be [V, 11], got shape {cams.shape}")
  num_sh = (sh_degree + 1) ** 2
  if 11 + 3 * num_sh > GAUSSIAN_DIM:
    raise ValueError(f"sh_degree={sh_degree} needs {3 * num_sh} SH values; the layout holds 27")
  gaussians = gaussians.astype(jnp.float32)
  cams = cams.astype(jnp.float32)
  views = cams.shape[0]
  backgrounds = jnp.broadcast_to(jnp.asarray(background, jnp.float32), (views, 3))
  sh = gaussians[:, 11:11 + 3 * num_sh].reshape(-1, num_sh, 3)  # coefficient-major, RGB-minor
  colors, alphas, meta = rasterization(
      gaussians[:, 0:3], gaussians[:, 7:11], gaussians[:, 4:7], gaussians[:, 3], sh,
      world_to_camera_opencv(cams), intrinsics_matrix(cams, height, width), width, height,
      near_plane=near_plane, far_plane=far_plane, sh_degree=sh_degree, backgrounds=backgrounds,
      render_mode="RGB+D", rasterize_mode="classic", capacity=capacity, backend=backend)
  rgb = jnp.clip(colors[..., :3] * 2.0 - 1.0, -1.0, 1.0)
  return rgb, colors[..., 3:], alphas, meta
