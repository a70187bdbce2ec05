"""Pixel-aligned 3D Gaussian head of D_G (REF `PixelAligned3DGS`; spec flashworld.md §5.2).

A 3×3 conv emits, per feature pixel and per point p, 38 raw channels [SH 27 | uv offset 2 | depth |
opacity | scale 3 | rotation 4] at output channel p·38 + j. A per-channel multiplier m (`lrs_mul`)
reparametrises the conv: effective weight W·m, bias b·m, so that under Adam m acts as a learning-rate
multiplier. Activations turn the raw values into Gaussians along the pixel rays.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from flashworld_jax.geometry.rays import camera_rays
from flashworld_jax.models import vae_layers as L

# Per-point raw channel layout.
UV_SLICE = slice(27, 29)
DEPTH_INDEX, OPACITY_INDEX = 29, 30
SCALE_SLICE, ROTATION_SLICE = slice(31, 34), slice(34, 38)
# Scales are sigmoid(raw)·16 pixel sizes: sigmoid(raw) = 1/16 gives one pixel footprint.
MAX_SCALE_IN_PIXELS = 16.0
GAUSSIAN_DIM = 38  # [x, y, z, opacity, s_x, s_y, s_z, q_w, q_x, q_y, q_z, SH × 27]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def trunc_exp(x: jax.Array, grad_clamp: float = 10.0) -> jax.Array:
  """exp(x) with gradient exp(clamp(x, −grad_clamp, grad_clamp)): large raw depths cannot explode."""
  return jnp.exp(x)


def _trunc_exp_fwd(x, grad_clamp):
  return jnp.exp(x), x


def _trunc_exp_bwd(grad_clamp, x, g):
  return (g * jnp.exp(jnp.clip(x, -grad_clamp, grad_clamp)),)


trunc_exp.defvjp(_trunc_exp_fwd, _trunc_exp_bwd)


def _logit(p: float) -> float:
  return math.log(p / (1.0 - p))


def channel_layout(sh_degree: int) -> tuple[int, int]:
  """(number of SH values, raw channels per point) for an SH degree."""
  num_sh = 3 * (sh_degree + 1) ** 2
  return num_sh, num_sh + 2 + 1 + 1 + 3 + 4


class PixelAlignedGaussianHead(nnx.Module):
  """features [V, h, w, E] + cameras [V, 11] → Gaussians [V, P, h, w, 38] (fp32)."""

  def __init__(self, embed_dim: int, *, gaussians_per_pixel: int, sh_degree: int,
               depth_bias: float, opacity_init: float, scale_init: float,
               depth_grad_clamp: float, rngs: nnx.Rngs):
    if sh_degree != 2:
      raise ValueError(f"gaussian_decoder.sh_degree={sh_degree}; the 38-channel layout needs 2")
    num_sh, per_point = channel_layout(sh_degree)
    self.points = gaussians_per_pixel
    self.depth_grad_clamp = depth_grad_clamp
    multipliers = jnp.asarray(
        ([1.0] * 3 + [0.5] * (num_sh - 3) + [0.01] * 2 + [1.0] * 9) * gaussians_per_pixel,
        jnp.float32)
    multipliers = multipliers / multipliers.max()
    target_bias = jnp.asarray(
        ([0.0] * num_sh + [0.0, 0.0, depth_bias, _logit(opacity_init)]
         + [_logit(scale_init)] * 3 + [1.0, 0.0, 0.0, 0.0]) * gaussians_per_pixel, jnp.float32)
    stored_bias = target_bias / multipliers
    self.gs_proj = L.conv2d(embed_dim, per_point * gaussians_per_pixel, 3, zero_init=True,
                            bias_init=lambda key, shape, dtype: stored_bias.astype(dtype),
                            rngs=rngs)
    self.lrs_mul = L.Buffer(multipliers)

  def project(self, x: jax.Array) -> jax.Array:
    """The reparametrised conv in fp32: raw channels [V, h, w, P·38]."""
    m = self.lrs_mul[...]
    kernel = self.gs_proj.kernel[...].astype(jnp.float32) * m
    bias = self.gs_proj.bias[...].astype(jnp.float32) * m
    y = jax.lax.conv_general_dilated(
        x.astype(jnp.float32), kernel, (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST)
    return y + bias

  def __call__(self, x: jax.Array, cams: jax.Array) -> jax.Array:
    v, h, w, _ = x.shape
    if cams.shape != (v, 11):
      raise ValueError(f"cams must be [{v}, 11] for {v} feature maps, got shape {cams.shape}")
    cams = cams.astype(jnp.float32)
    raw = self.project(x).reshape(v, h, w, self.points, -1).transpose(0, 3, 1, 2, 4)
    origins, directions = camera_rays(
        jnp.broadcast_to(cams[:, None], (v, self.points, 11)), h, w, uv_offset=raw[..., UV_SLICE])
    depth = trunc_exp(raw[..., DEPTH_INDEX:DEPTH_INDEX + 1], self.depth_grad_clamp)
    xyz = origins + depth * directions
    opacity = jax.nn.sigmoid(raw[..., OPACITY_INDEX:OPACITY_INDEX + 1])
    # REF's pixel size: the diagonal of the normalised focal lengths over the grid, times depth.
    focal = jnp.sqrt((cams[:, 7] / w) ** 2 + (cams[:, 8] / h) ** 2)[:, None, None, None, None]
    scales = MAX_SCALE_IN_PIXELS * jax.nn.sigmoid(raw[..., SCALE_SLICE]) * focal * depth
    rotation = raw[..., ROTATION_SLICE]
    rotation = rotation / jnp.maximum(jnp.linalg.norm(rotation, axis=-1, keepdims=True), 1e-12)
    sh = raw[..., :UV_SLICE.start]
    return jnp.concatenate([xyz, opacity, scales, rotation, sh], axis=-1)

  def fold_lr_multipliers(self) -> None:
    """For inference: stores W·m and b·m (fp32) and sets m = 1; outputs are unchanged."""
    m = self.lrs_mul[...]
    self.gs_proj.kernel[...] = self.gs_proj.kernel[...] * m
    self.gs_proj.bias[...] = self.gs_proj.bias[...] * m
    self.lrs_mul[...] = jnp.ones_like(m)
