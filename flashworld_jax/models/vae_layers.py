"""Building blocks of the Wan2.2 VAE run per view (T = 1): channels-last 2D layers.

Every causal 3D conv of the video VAE becomes a 2D conv (its last temporal tap), temporal resampling
is never applied to a single frame, and the parameter-free 3D shortcuts reduce to the closed forms in
`avg_down_shortcut` / `dup_up_shortcut` (spec flashworld.md §4.3). Module and attribute names mirror
diffusers' `AutoencoderKLWan` so the weight converter is a plain rename table.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

KERNEL_AXES = ("conv_height", "conv_width", "conv_in", "conv_out")

# PyTorch's default conv init (kaiming-uniform with a = sqrt(5)) is uniform(±1/sqrt(fan_in)).
_TORCH_DEFAULT_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Buffer(nnx.Variable):
  """A non-trainable array saved with the weights (latent statistics, learning-rate multipliers)."""


def conv2d(in_channels: int, out_channels: int, kernel_size: int, *, rngs: nnx.Rngs,
           stride: int = 1, padding=None, dtype=jnp.float32, zero_init: bool = False,
           bias_init=nnx.initializers.zeros) -> nnx.Conv:
  """A 2D conv with sharding names; `padding` defaults to 'same' zero padding for odd kernels."""
  if padding is None:
    padding = ((kernel_size // 2, kernel_size // 2),) * 2
  kernel_init = nnx.initializers.zeros if zero_init else _TORCH_DEFAULT_INIT
  out_axis = _out_channel_axis(out_channels)
  return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=stride,
                  padding=padding, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=nnx.with_partitioning(kernel_init, KERNEL_AXES[:-1] + (out_axis,)),
                  bias_init=nnx.with_partitioning(bias_init, (out_axis,)), rngs=rngs)


def _out_channel_axis(out_channels: int) -> str | None:
  """'conv_out' when the channels split evenly over the current mesh's FSDP axis, else replicated:
  head convs (12, 48 or 76 channels) do not divide by a pod's 32 or 64 FSDP shards."""
  mesh = jax.sharding.get_abstract_mesh()
  ways = 1 if mesh is None or mesh.empty else dict(mesh.shape).get("fsdp", 1)
  return KERNEL_AXES[-1] if out_channels % ways == 0 else None


class RMSNorm(nnx.Module):
  """Wan's RMS norm over channels: x / max(‖x‖₂, eps) · √C · γ, no bias; statistics in fp32."""

  def __init__(self, channels: int, *, eps: float = 1e-12):
    self.eps = eps
    self.channels = channels
    self.scale = nnx.Param(jnp.ones((channels,), jnp.float32), out_sharding=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
    y = xf / jnp.maximum(norm, self.eps) * (math.sqrt(self.channels) * self.scale[...])
    return y.astype(x.dtype)


class ResidualBlock(nnx.Module):
  """shortcut(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x)))))).

  The shortcut is a 1×1 conv when the widths differ, else the identity.
  """

  def __init__(self, in_channels: int, out_channels: int, *, eps: float, dtype, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(in_channels, eps=eps)
    self.conv1 = conv2d(in_channels, out_channels, 3, dtype=dtype, rngs=rngs)
    self.norm2 = RMSNorm(out_channels, eps=eps)
    self.conv2 = conv2d(out_channels, out_channels, 3, dtype=dtype, rngs=rngs)
    self.conv_shortcut = (conv2d(in_channels, out_channels, 1, dtype=dtype, rngs=rngs)
                          if in_channels != out_channels else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return h + shortcut


class AttentionBlock(nnx.Module):
  """Single-head self-attention over all H·W positions of a view, scale 1/√C, plus the input."""

  def __init__(self, channels: int, *, eps: float, dtype, rngs: nnx.Rngs):
    self.norm = RMSNorm(channels, eps=eps)
    self.to_qkv = conv2d(channels, 3 * channels, 1, dtype=dtype, rngs=rngs)
    self.proj = conv2d(channels, channels, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    qkv = self.to_qkv(self.norm(x)).reshape(b, h * w, 1, 3 * c)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    out = jax.nn.dot_product_attention(q, k, v, implementation="xla")
    return self.proj(out.reshape(b, h, w, c)) + x


class MidBlock(nnx.Module):
  """Res → Attn → Res at the lowest resolution."""

  def __init__(self, channels: int, *, eps: float, dtype, rngs: nnx.Rngs):
    self.resnets = nnx.List([ResidualBlock(channels, channels, eps=eps, dtype=dtype, rngs=rngs)
                             for _ in range(2)])
    self.attentions = nnx.List([AttentionBlock(channels, eps=eps, dtype=dtype, rngs=rngs)])

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.resnets[0](x)
    return self.resnets[1](self.attentions[0](x))


class Downsample(nnx.Module):
  """Zero-pad one column right and one row at the bottom, then 3×3 stride 2 (C → C)."""

  def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
    self.conv = conv2d(channels, channels, 3, stride=2, padding=((0, 1), (0, 1)), dtype=dtype,
                       rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(x)


class Upsample(nnx.Module):
  """Nearest-neighbour 2× per view, then 3×3 (C → C); temporal upsampling never applies at T = 1."""

  def __init__(self, channels: int, *, dtype, rngs: nnx.Rngs):
    self.conv = conv2d(channels, channels, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


def avg_down_shortcut(x: jax.Array, out_channels: int, factor_t: int, factor_s: int) -> jax.Array:
  """diffusers `AvgDown3D` on one frame, channels-last.

  The temporal factor prepends a causal zero frame; channels are grouped as
  c·(f_t·f_s²) + t·f_s² + row·f_s + col and averaged in groups of C_in·f_t·f_s² / C_out. For C → 2C
  with f_t = f_s = 2 this is out[2c] = 0, out[2c+1] = avgpool2×2(x)[c].
  """
  b, h, w, c = x.shape
  if (c * factor_t * factor_s ** 2) % out_channels:
    raise ValueError(f"avg_down_shortcut: {c} channels × factor {factor_t * factor_s ** 2} do not "
                     f"divide into {out_channels} output channels")
  frames = jnp.stack([jnp.zeros_like(x)] * (factor_t - 1) + [x], axis=-1)  # [b, h, w, c, t]
  frames = frames.reshape(b, h // factor_s, factor_s, w // factor_s, factor_s, c, factor_t)
  frames = frames.transpose(0, 1, 3, 5, 6, 2, 4)  # [b, h', w', c, t, row, col]
  group = c * factor_t * factor_s ** 2 // out_channels
  return frames.reshape(b, h // factor_s, w // factor_s, out_channels, group).mean(axis=-1)


def dup_up_shortcut(x: jax.Array, out_channels: int, factor_t: int, factor_s: int) -> jax.Array:
  """diffusers `DupUp3D(first_chunk=True)` on one frame, channels-last.

  Input channels are repeated, read as (out, t, row, col) and the last temporal slot is kept:
  nearest 2× when C_out = C_in with f_t = 2; out[o, 2y+a, 2x+b] = in[2o+a, y, x] for C → C/2
  with f_t = 1.
  """
  b, h, w, c = x.shape
  factor = factor_t * factor_s ** 2
  if (out_channels * factor) % c:
    raise ValueError(f"dup_up_shortcut: {out_channels} output channels × factor {factor} are not a "
                     f"multiple of the {c} input channels")
  x = jnp.repeat(x, out_channels * factor // c, axis=-1)
  x = x.reshape(b, h, w, out_channels, factor_t, factor_s, factor_s)[..., -1, :, :]
  x = x.transpose(0, 1, 4, 2, 5, 3)  # [b, h, row, w, col, out]
  return x.reshape(b, h * factor_s, w * factor_s, out_channels)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """[B, H, W, C] → [B, H/p, W/p, C·p²], channel = c·p² + dx·p + dy (dx column, dy row offset)."""
  b, h, w, c = images.shape
  if h % patch_size or w % patch_size:
    raise ValueError(f"patchify: image size {h}×{w} is not divisible by patch size {patch_size}")
  x = images.reshape(b, h // patch_size, patch_size, w // patch_size, patch_size, c)
  x = x.transpose(0, 1, 3, 5, 4, 2)  # [b, h', w', c, dx, dy]
  return x.reshape(b, h // patch_size, w // patch_size, c * patch_size ** 2)


def unpatchify(x: jax.Array, patch_size: int) -> jax.Array:
  """Inverse of `patchify`."""
  b, h, w, cp = x.shape
  c = cp // patch_size ** 2
  x = x.reshape(b, h, w, c, patch_size, patch_size)
  x = x.transpose(0, 1, 5, 2, 4, 3)  # [b, h, dy, w, dx, c]
  return x.reshape(b, h * patch_size, w * patch_size, c)
