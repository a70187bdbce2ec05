"""Wan2.2 VAE (diffusers `AutoencoderKLWan`) as a per-view 2D network, channels-last.

Each view is encoded as its own one-frame clip, which is exactly the causal video VAE's first chunk
(spec flashworld.md §4). Images [B, H, W, 3] in [−1, 1] ↔ latents [B, H/16, W/16, 48].
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from flashworld_jax import sharding
from flashworld_jax.models import per_view
from flashworld_jax.models import vae_layers as L

VIEW_AXES = ("act_views", "act_height", "act_width", "act_channels")


def _check_config(cfg: ml_collections.ConfigDict) -> None:
  if not cfg.is_residual:
    raise ValueError("vae.is_residual=False (Wan2.1 VAE) is not supported; expected the Wan2.2 "
                     "residual VAE (is_residual=True)")
  if len(cfg.temporal_downsample) != len(cfg.dim_mult) - 1:
    raise ValueError(f"vae.temporal_downsample={tuple(cfg.temporal_downsample)} needs "
                     f"{len(cfg.dim_mult) - 1} entries for dim_mult={tuple(cfg.dim_mult)}")


class DownBlock(nnx.Module):
  """Residual blocks, an optional Down(C), plus the parameter-free shortcut of the block input."""

  def __init__(self, in_channels: int, out_channels: int, num_res_blocks: int, *,
               temporal_downsample: bool, downsample: bool, eps: float, dtype, rngs: nnx.Rngs):
    widths = [in_channels] + [out_channels] * num_res_blocks
    self.resnets = nnx.List([L.ResidualBlock(a, b, eps=eps, dtype=dtype, rngs=rngs)
                             for a, b in zip(widths[:-1], widths[1:])])
    self.downsampler = L.Downsample(out_channels, dtype=dtype, rngs=rngs) if downsample else None
    self.out_channels = out_channels
    self.factor_t = 2 if temporal_downsample else 1
    self.factor_s = 2 if downsample else 1

  def __call__(self, x: jax.Array) -> jax.Array:
    shortcut = L.avg_down_shortcut(x, self.out_channels, self.factor_t, self.factor_s)
    for resnet in self.resnets:
      x = resnet(x)
    if self.downsampler is not None:
      x = self.downsampler(x)
    return sharding.constrain(x + shortcut, VIEW_AXES)


class UpBlock(nnx.Module):
  """Residual blocks, an optional Up(C), plus the duplicate-up shortcut of the block input."""

  def __init__(self, in_channels: int, out_channels: int, num_resnets: int, *,
               temporal_upsample: bool, upsample: bool, eps: float, dtype, rngs: nnx.Rngs):
    widths = [in_channels] + [out_channels] * num_resnets
    self.resnets = nnx.List([L.ResidualBlock(a, b, eps=eps, dtype=dtype, rngs=rngs)
                             for a, b in zip(widths[:-1], widths[1:])])
    self.upsampler = L.Upsample(out_channels, dtype=dtype, rngs=rngs) if upsample else None
    self.out_channels = out_channels
    self.factor_t = 2 if temporal_upsample else 1

  def __call__(self, x: jax.Array) -> jax.Array:
    block_input = x
    for resnet in self.resnets:
      x = resnet(x)
    if self.upsampler is not None:
      x = self.upsampler(x) + L.dup_up_shortcut(block_input, self.out_channels, self.factor_t, 2)
    return sharding.constrain(x, VIEW_AXES)


class WanVAEEncoder(nnx.Module):
  """conv_in → down blocks → mid block → RMS → SiLU → conv_out (2·z_dim channels)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    _check_config(cfg)
    dtype = jnp.dtype(cfg.dtype)
    dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
    last = len(cfg.dim_mult) - 1
    self.conv_in = L.conv2d(3 * cfg.patch_size ** 2, dims[0], 3, dtype=dtype, rngs=rngs)
    self.down_blocks = nnx.List([
        DownBlock(dims[i], dims[i + 1], cfg.num_res_blocks,
                  temporal_downsample=i != last and cfg.temporal_downsample[i],
                  downsample=i != last, eps=cfg.eps, dtype=dtype, rngs=rngs)
        for i in range(len(cfg.dim_mult))])
    self.mid_block = L.MidBlock(dims[-1], eps=cfg.eps, dtype=dtype, rngs=rngs)
    self.norm_out = L.RMSNorm(dims[-1], eps=cfg.eps)
    self.conv_out = L.conv2d(dims[-1], 2 * cfg.z_dim, 3, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = sharding.constrain(self.conv_in(x), VIEW_AXES)
    for block in self.down_blocks:
      x = block(x)
    x = self.mid_block(x)
    return self.conv_out(jax.nn.silu(self.norm_out(x)))


class WanVAEDecoder(nnx.Module):
  """conv_in → mid block → up blocks → RMS → SiLU [→ conv_out].

  With `out_channels=None` it stops after the SiLU: the trunk of the Gaussian decoder (spec §5.1),
  whose `norm_out` is a fresh RMS norm.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, out_channels: int | None, dtype,
               rngs: nnx.Rngs):
    _check_config(cfg)
    dtype = jnp.dtype(dtype)
    mult = tuple(cfg.dim_mult)
    dims = [cfg.decoder_base_dim * m for m in (mult[-1],) + mult[::-1]]
    temporal_upsample = tuple(cfg.temporal_downsample)[::-1]
    last = len(mult) - 1
    self.conv_in = L.conv2d(cfg.z_dim, dims[0], 3, dtype=dtype, rngs=rngs)
    self.mid_block = L.MidBlock(dims[0], eps=cfg.eps, dtype=dtype, rngs=rngs)
    self.up_blocks = nnx.List([
        UpBlock(dims[i], dims[i + 1], cfg.num_res_blocks + 1,
                temporal_upsample=i != last and temporal_upsample[i], upsample=i != last,
                eps=cfg.eps, dtype=dtype, rngs=rngs)
        for i in range(len(mult))])
    self.norm_out = L.RMSNorm(dims[-1], eps=cfg.eps)
    self.conv_out = (None if out_channels is None
                     else L.conv2d(dims[-1], out_channels, 3, dtype=dtype, rngs=rngs))

  def __call__(self, x: jax.Array, extra_input: jax.Array | None = None) -> jax.Array:
    """`extra_input` (already at the conv_in width) is added after conv_in: D_G's feature path."""
    x = self.conv_in(x)
    if extra_input is not None:
      x = x + extra_input
    x = self.mid_block(sharding.constrain(x, VIEW_AXES))
    for block in self.up_blocks:
      x = block(x)
    x = jax.nn.silu(self.norm_out(x))
    return x if self.conv_out is None else self.conv_out(x)


def _stats(values: Sequence[float], z_dim: int, name: str) -> jax.Array:
  if len(values) != z_dim:
    raise ValueError(f"vae.{name} has {len(values)} values; expected z_dim = {z_dim}")
  return jnp.asarray(values, jnp.float32)


class WanVAE(nnx.Module):
  """Per-view Wan2.2 VAE: encoder + quant_conv, and optionally post_quant_conv + decoder.

  The latent statistics are `Buffer`s (not trained): the converter fills them from `vae/config.json`.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs, with_decoder: bool = True):
    self.patch_size = cfg.patch_size
    self.logvar_clamp = tuple(cfg.logvar_clamp)
    self.dtype = jnp.dtype(cfg.dtype)
    self.downsample = cfg.patch_size * 2 ** (len(cfg.dim_mult) - 1)
    # `per_view.map_views` over the views (configs/flashworld.py says where it is on and why).
    self.encode_views_one_at_a_time = cfg.get("encode_views_one_at_a_time", False)
    self.encoder = WanVAEEncoder(cfg, rngs=rngs)
    self.quant_conv = L.conv2d(2 * cfg.z_dim, 2 * cfg.z_dim, 1, dtype=self.dtype, rngs=rngs)
    self.post_quant_conv = (L.conv2d(cfg.z_dim, cfg.z_dim, 1, dtype=self.dtype, rngs=rngs)
                            if with_decoder else None)
    self.decoder = (WanVAEDecoder(cfg, out_channels=3 * cfg.patch_size ** 2, dtype=self.dtype,
                                  rngs=rngs) if with_decoder else None)
    self.latents_mean = L.Buffer(_stats(cfg.latents_mean, cfg.z_dim, "latents_mean"))
    self.latents_std = L.Buffer(_stats(cfg.latents_std, cfg.z_dim, "latents_std"))

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [B, H, W, 3] in [−1, 1] → (mean, logvar) f32 [B, H/16, W/16, z]; logvar clamped."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"encode: images must be [B, H, W, 3], got shape {images.shape}")
    if images.shape[1] % self.downsample or images.shape[2] % self.downsample:
      raise ValueError(f"encode: image size {images.shape[1]}×{images.shape[2]} must be a "
                       f"multiple of {self.downsample}")
    images = sharding.constrain(images, VIEW_AXES)
    moments = (per_view.map_views(self, WanVAE._moments, (images,))
               if self.encode_views_one_at_a_time else self._moments(images))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *self.logvar_clamp)

  def _moments(self, images: jax.Array) -> jax.Array:
    x = L.patchify(images.astype(self.dtype), self.patch_size)
    return self.quant_conv(self.encoder(x)).astype(jnp.float32)

  @staticmethod
  def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """mean + exp(logvar / 2)·ε, the sample the reference uses for every encoding."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)

  def normalize_latent(self, z: jax.Array) -> jax.Array:
    return (z - self.latents_mean[...]) / self.latents_std[...]

  def unnormalize_latent(self, z: jax.Array) -> jax.Array:
    return z * self.latents_std[...] + self.latents_mean[...]

  def decode(self, z: jax.Array, clip: bool = True) -> jax.Array:
    """Raw (un-normalised) latents [B, h, w, z] → images [B, 16h, 16w, 3] clamped to [−1, 1]
    (`clip=False`: unclamped, so that VAE training keeps the gradient of saturated pixels)."""
    if self.decoder is None:
      raise ValueError("decode: this WanVAE was built with with_decoder=False")
    if z.ndim != 4:
      raise ValueError(f"decode: latents must be [B, h, w, z], got shape {z.shape}")
    x = self.post_quant_conv(sharding.constrain(z.astype(self.dtype), VIEW_AXES))
    out = L.unpatchify(self.decoder(x), self.patch_size).astype(jnp.float32)
    return jnp.clip(out, -1.0, 1.0) if clip else out
