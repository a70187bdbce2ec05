"""3D Gaussian decoder D_G (REF `WANDecoderPixelAligned3DGSReconstructionModel`; spec §5).

A copy of the per-view Wan2.2 VAE decoder without conv_out and final unpatchify (so it stops at
H/2 × W/2), with a zero-initialised `extra_conv_in` that injects the DiT's feature map, a fresh output
RMS norm, and the pixel-aligned Gaussian head.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from flashworld_jax import sharding
from flashworld_jax.models import per_view
from flashworld_jax.models import vae_layers as L
from flashworld_jax.models.gaussian_head import GAUSSIAN_DIM, PixelAlignedGaussianHead
from flashworld_jax.models.vae import VIEW_AXES, WanVAE, WanVAEDecoder


class GaussianDecoder(nnx.Module):
  """(feature F, normalised x̂₀_MV, cameras) per view → Gaussians f32[V·P·(2h')·(2w'), 38].

  Takes the full FlashWorld config: widths from `cfg.vae`, the feature width from
  `cfg.dit.feature_dim`, head settings and compute dtype from `cfg.gaussian_decoder`.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    vae, head = cfg.vae, cfg.gaussian_decoder
    self.dtype = jnp.dtype(head.dtype)
    self.z_dim = vae.z_dim
    self.feature_dim = cfg.dit.feature_dim
    # One view at a time, each rematerialised in the backward pass: the full-resolution trunk's
    # activations of one view are live, not of all (configs/flashworld.py has the measurements).
    self.views_one_at_a_time = head.get("views_one_at_a_time", False)
    self.post_quant_conv = L.conv2d(vae.z_dim, vae.z_dim, 1, dtype=self.dtype, rngs=rngs)
    self.decoder = WanVAEDecoder(vae, out_channels=None, dtype=self.dtype, rngs=rngs)
    top_width = vae.decoder_base_dim * vae.dim_mult[-1]
    self.extra_conv_in = L.conv2d(cfg.dit.feature_dim, top_width, 3, zero_init=True,
                                  dtype=self.dtype, rngs=rngs)
    self.gs_head = PixelAlignedGaussianHead(
        vae.decoder_base_dim * vae.dim_mult[0], gaussians_per_pixel=head.gaussians_per_pixel,
        sh_degree=head.sh_degree, depth_bias=head.depth_bias, opacity_init=head.opacity_init,
        scale_init=head.scale_init, depth_grad_clamp=head.depth_grad_clamp, rngs=rngs)

  def trunk(self, feature: jax.Array, latent: jax.Array) -> jax.Array:
    """Raw latent [V, h, w, z] and feature [V, h, w, F] → head input [V, 8h, 8w, C]."""
    extra = self.extra_conv_in(sharding.constrain(feature.astype(self.dtype), VIEW_AXES))
    x = self.post_quant_conv(sharding.constrain(latent.astype(self.dtype), VIEW_AXES))
    return self.decoder(x, extra_input=extra)

  def __call__(self, feature: jax.Array, latent_mv: jax.Array, cams: jax.Array,
               unnormalize: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """feature [V, h, w, F]; latent_mv [V, h, w, z] is the NORMALISED x̂₀_MV (no gradient flows
    into it; `unnormalize` maps it to raw VAE latents, e.g. `WanVAE.unnormalize_latent`);
    cams [V, 11] in the normalised frame. Gaussian index = ((v·P + p)·H2 + row)·W2 + col."""
    if feature.ndim != 4 or feature.shape[-1] != self.feature_dim:
      raise ValueError(f"feature must be [V, h, w, {self.feature_dim}], got shape {feature.shape}")
    if latent_mv.shape != feature.shape[:3] + (self.z_dim,):
      raise ValueError(f"latent_mv must be {feature.shape[:3] + (self.z_dim,)} to match feature, "
                       f"got shape {latent_mv.shape}")
    latent = unnormalize(jax.lax.stop_gradient(latent_mv.astype(jnp.float32)))
    views = (feature, latent, cams)
    gaussians = (per_view.map_views(self, GaussianDecoder._decode, views)
                 if self.views_one_at_a_time else self._decode(*views))
    return gaussians.reshape(-1, GAUSSIAN_DIM)

  def _decode(self, feature: jax.Array, latent: jax.Array, cams: jax.Array) -> jax.Array:
    return self.gs_head(self.trunk(feature, latent), cams)

  def fold_lr_multipliers(self) -> None:
    """Folds the head's learning-rate multipliers into its weights (inference, fp32)."""
    self.gs_head.fold_lr_multipliers()


def init_from_vae(gaussian_decoder: GaussianDecoder, vae: WanVAE) -> None:
  """Starts D_G as the VAE's decoder (spec §5.1): its post_quant_conv and every decoder layer but
  conv_out (which D_G lacks) and norm_out (D_G's own is fresh), in place."""
  # Copies, not shared buffers: D_G trains (its state is donated) while the VAE stays frozen.
  copy = lambda state: jax.tree.map(jnp.copy, state)  # noqa: E731
  nnx.update(gaussian_decoder.post_quant_conv, copy(nnx.state(vae.post_quant_conv)))
  trunk = nnx.Not(nnx.Any(nnx.PathContains("conv_out"), nnx.PathContains("norm_out")))
  nnx.update(gaussian_decoder.decoder, copy(nnx.state(vae.decoder, trunk)))
