"""Math and checks shared by the Pallas compositor kernels (pallas_tpu.py, pallas_gpu.py).

The per-pair functions are written on broadcastable arrays so both kernels use them unchanged: the TPU
kernel calls them on [256 px, 128 Gaussians] blocks (pixel columns against Gaussian rows), the GPU kernel
on [256] pixel vectors against scalar Gaussian parameters. Semantics are gsplat 1.5.3 classic
(rasterizer.md §2.6, §3.1); the constants come from reference.py so every backend shares one copy.

Backend contract (shared by every compositor backend, `reference.py` included):
  forward(params f32[n_tiles, 8, Kcap] (rows mean_x, mean_y, conic_a, conic_b, conic_c, opacity, 0, 0;
          padding slots have opacity 0; Kcap a multiple of 128 here), feats f32[n_tiles, D, Kcap],
          counts i32[n_tiles] (valid, front-to-back slots first), *, tiles_per_row, tiles_per_image,
          interpret) -> (acc f32[n_tiles, D, 256], t_final f32[n_tiles, 256], last i32[n_tiles, 256]:
          the slot of each pixel's last blended pair, −1 if none). Tile t covers pixels from
          x0 = ((t % tiles_per_image) % tiles_per_row)·16, y0 = ((t % tiles_per_image) // tiles_per_row)·16.
  backward(params, feats, counts, acc, t_final, last, g_acc f32[n_tiles, D, 256], g_t f32[n_tiles, 256],
           *, ...) -> (g_params f32[n_tiles, 8, Kcap] (rows 0-5: d/d mean_x, mean_y, a, b, c, opacity;
           rows 6-7 zero), g_feats f32[n_tiles, D, Kcap]), per slot, evaluated in forward order from the
           saved acc, t_final and last (rasterizer.md §3.1-3.2).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.gaussian_raster.reference import (ALPHA_MAX, ALPHA_THRESHOLD, GRAD_ROWS, PARAM_ROWS, T_MIN,
                                               TILE_PIXELS, TILE_SIZE)

CHUNK = 128         # Gaussians per grid step: one lane width (TPU) / one warpgroup's loop (GPU)

__all__ = ["ALPHA_MAX", "ALPHA_THRESHOLD", "CHUNK", "GRAD_ROWS", "PARAM_ROWS", "T_MIN", "TILE_PIXELS",
           "TILE_SIZE", "Pair", "check_backward_inputs", "check_slabs", "color_dot", "pair_alpha",
           "pair_grads", "pair_v_alpha", "pixel_centres"]


def check_slabs(params: jax.Array, feats: jax.Array, counts: jax.Array, backend: str) -> None:
  """Raises NotImplementedError for slabs the Pallas kernels do not handle, ValueError for bad ones."""
  if params.ndim != 3 or params.shape[1] != PARAM_ROWS:
    raise ValueError(f"{backend}: params has shape {params.shape}, expected [n_tiles, 8, Kcap]")
  n_tiles, _, kcap = params.shape
  if feats.ndim != 3 or feats.shape[0] != n_tiles or feats.shape[2] != kcap or feats.shape[1] < 1:
    raise ValueError(f"{backend}: feats has shape {feats.shape}, expected [{n_tiles}, D, {kcap}]")
  if counts.shape != (n_tiles,):
    raise ValueError(f"{backend}: counts has shape {counts.shape}, expected ({n_tiles},)")
  if kcap == 0 or kcap % CHUNK:
    raise NotImplementedError(f"{backend}: Kcap={kcap} is not a positive multiple of {CHUNK}")
  for name, x, dtype in (("params", params, jnp.float32), ("feats", feats, jnp.float32),
                         ("counts", counts, jnp.int32)):
    if x.dtype != dtype:
      raise NotImplementedError(f"{backend}: {name} has dtype {x.dtype}, only {jnp.dtype(dtype)} is "
                                "supported")


def check_backward_inputs(feats: jax.Array, acc: jax.Array, t_final: jax.Array, last: jax.Array,
                          g_acc: jax.Array, g_t: jax.Array, backend: str) -> None:
  """Raises ValueError when the saved forward outputs or cotangents do not match the slabs."""
  n_tiles, n_feats, _ = feats.shape
  expected = {"acc": (n_tiles, n_feats, TILE_PIXELS), "g_acc": (n_tiles, n_feats, TILE_PIXELS),
              "t_final": (n_tiles, TILE_PIXELS), "last": (n_tiles, TILE_PIXELS),
              "g_t": (n_tiles, TILE_PIXELS)}
  for name, x in (("acc", acc), ("t_final", t_final), ("last", last), ("g_acc", g_acc), ("g_t", g_t)):
    if x.shape != expected[name]:
      raise ValueError(f"{backend}: {name} has shape {x.shape}, expected {expected[name]}")


def pixel_centres(tile: jax.Array, pixel: jax.Array, tiles_per_row: int,
                  tiles_per_image: int) -> tuple[jax.Array, jax.Array]:
  """Sample positions (x0 + lx + 0.5, y0 + ly + 0.5) of tile-local pixel indices `pixel` (int32, any
  shape) in the scalar tile `tile`. Bit operations instead of // and %: 16 is a power of two and vector
  integer division is not a safe bet in every Mosaic lowering."""
  local = tile % tiles_per_image
  x0 = (local % tiles_per_row) * TILE_SIZE
  y0 = (local // tiles_per_row) * TILE_SIZE
  lx = jnp.bitwise_and(pixel, TILE_SIZE - 1)
  ly = jnp.right_shift(pixel, 4)
  return (x0 + lx).astype(jnp.float32) + 0.5, (y0 + ly).astype(jnp.float32) + 0.5


class Pair(NamedTuple):
  """One (pixel, Gaussian) pair: offsets mean − pixel, e^-σ, capped α and gsplat's keep test."""
  dx: jax.Array
  dy: jax.Array
  gauss: jax.Array
  alpha: jax.Array
  keep: jax.Array


def pair_alpha(mean_x, mean_y, conic_a, conic_b, conic_c, opacity, pixel_x, pixel_y) -> Pair:
  """α of each pair, in gsplat's arithmetic order; `keep` is false for the pairs gsplat skips."""
  dx = mean_x - pixel_x
  dy = mean_y - pixel_y
  sigma = 0.5 * (conic_a * dx * dx + conic_c * dy * dy) + conic_b * dx * dy
  gauss = jnp.exp(-sigma)
  alpha = jnp.minimum(ALPHA_MAX, opacity * gauss)
  keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
  return Pair(dx, dy, gauss, alpha, keep)


def pair_grads(pair: Pair, v_alpha, conic_a, conic_b, conic_c, opacity):
  """(v_mean_x, v_mean_y, v_conic_a, v_conic_b, v_conic_c, v_opacity) of each pair from v_α (§3.1).

  `v_alpha` must already be zero for pairs that were not blended. The 0.999 cap is flat, so a capped
  pair passes nothing to σ or the opacity.
  """
  o_gauss = opacity * pair.gauss
  unclamped = o_gauss <= ALPHA_MAX
  v_opacity = jnp.where(unclamped, pair.gauss * v_alpha, 0.0)
  v_sigma = jnp.where(unclamped, -o_gauss * v_alpha, 0.0)
  dx, dy = pair.dx, pair.dy
  return (v_sigma * (conic_a * dx + conic_b * dy), v_sigma * (conic_b * dx + conic_c * dy),
          0.5 * v_sigma * dx * dx, v_sigma * dx * dy, 0.5 * v_sigma * dy * dy, v_opacity)


def color_dot(feature_parts, g_acc_parts):
  """c_i · g of each pair, Σ_d feat_d · g_acc_d over the feature channels, on the VPU: the channel
  count is tiny (≤ 8), too small a contraction for the MXU / tensor cores to pay off."""
  return sum(f * g for f, g in zip(feature_parts, g_acc_parts, strict=True))


def pair_v_alpha(t_before, color_dot_g, behind_dot_g, background_term, one_minus_alpha):
  """∂loss/∂α of a blended pair: T_i (c_i·g) − (S_i·g)/(1−α_i) − g_T·T_final/(1−α_i) (§3.1), where
  `behind_dot_g` = S_i·g = acc·g − Σ_{j≤i} w_j (c_j·g) and `background_term` = g_T·T_final."""
  return t_before * color_dot_g - (behind_dot_g + background_term) / one_minus_alpha
