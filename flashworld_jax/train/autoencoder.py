"""VAE training, the recipe's first stage: a Wan2.2-architecture VAE learns to reconstruct frames.

The loss is L1 reconstruction of every frame of the batch (input and novel views) plus
`kl_weight`·KL(q(z|x) ‖ N(0, I)), both per-element means; the decoder trains on the unclipped output
so that saturated pixels keep a gradient. The state also keeps moving averages of the posterior
samples' per-channel first and second moments: the exported VAE carries them as its
`latents_mean` / `latents_std`, the normalisation that the diffusion stages see (as Wan2.2's
config does). Only the VAE and the frozen text encoder are exported: the next stage starts the
Gaussian decoder from this decoder (`models.gaussian_decoder.init_from_vae`).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from flashworld_jax import checkpoint, sharding
from flashworld_jax.sampling.sampler import RenderSettings
from flashworld_jax.train import evaluation
from flashworld_jax.train import metrics as metrics_lib
from flashworld_jax.train import state as state_lib

TRAINABLE = ("vae",)
COMPONENTS = ("vae", "text_encoder")


class AutoencoderState(NamedTuple):
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState
  ema: nnx.State
  rng: jax.Array
  latent_moments: jax.Array  # f32 [2, z]: moving E[z] and E[z²] per channel of posterior samples


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) ‖ N(0, 1)) per element."""
  return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def latent_statistics(moments: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean, std) per channel from the moving first and second moments."""
  mean = moments[0]
  return mean, jnp.sqrt(jnp.maximum(moments[1] - jnp.square(mean), 1e-12))


def reconstruction_loss(params, frozen, graphdef, images: jax.Array, weights: jax.Array,
                        key: jax.Array, *, kl_weight: float):
  """(loss, (metrics, per-channel moments of this batch)) for images [N, H, W, 3] in [−1, 1]
  weighted per image by `weights` [N] (padded views weigh 0)."""
  vae = nnx.merge(graphdef, params, frozen).vae
  mean, logvar = vae.encode(images)
  z = vae.sample_posterior(mean, logvar, key)
  recon = vae.decode(z, clip=False)
  total = jnp.maximum(jnp.sum(weights), 1.0)
  per_image = lambda x: jnp.mean(x, axis=(1, 2, 3))  # noqa: E731
  l1 = jnp.sum(per_image(jnp.abs(recon - images)) * weights) / total
  kl = jnp.sum(per_image(kl_divergence(mean, logvar)) * weights) / total
  mse = jnp.sum(per_image(jnp.square(jnp.clip(recon, -1.0, 1.0) - images)) * weights) / total
  w = weights[:, None, None, None]
  count = jnp.maximum(jnp.sum(weights) * z.shape[1] * z.shape[2], 1.0)
  moments = jnp.stack([jnp.sum(z * w, axis=(0, 1, 2)), jnp.sum(jnp.square(z) * w, axis=(0, 1, 2))])
  loss = l1 + kl_weight * kl
  metrics = {"loss": loss, "loss_l1": l1, "kl": kl,
             "psnr_train": 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))}
  return loss, (metrics, jax.lax.stop_gradient(moments / count))


def narrow_posterior(vae, logvar: float) -> None:
  """Sets the posterior's initial log-variance. A random VAE starts with logvar ≈ 0: unit noise on
  latents whose means spread ~0.2, which drowns what the encoder says, and Adam moves the logvar
  bias only ~lr per step; starting narrow lets reconstruction learn from the first step."""
  bias = vae.quant_conv.bias
  z_dim = bias.shape[0] // 2
  bias[...] = bias[...].at[z_dim:].set(logvar)


def build(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(graphdef, AutoencoderState, frozen): the VAE from `cfg.init_checkpoint`, or random with a
  narrow posterior."""
  tx = state_lib.make_optimizer(cfg.optimizer, cfg.num_steps)
  pretrained = bool(cfg.init_checkpoint) and "vae" in checkpoint.available_components(
      cfg.init_checkpoint)
  with jax.set_mesh(mesh), sharding.rules():
    model = state_lib.build_model(cfg, mesh)
    if not pretrained:
      narrow_posterior(model.vae, cfg.autoencoder.initial_logvar)
    graphdef, state, frozen = state_lib.create(model, TRAINABLE, tx, cfg.seed, mesh)
    z_dim = cfg.model.vae.z_dim
    moments = jax.device_put(jnp.stack([jnp.zeros(z_dim), jnp.ones(z_dim)]),
                             sharding.named_sharding(mesh, ()))
  return graphdef, AutoencoderState(**state._asdict(), latent_moments=moments), frozen


def flashworld(graphdef, state: AutoencoderState, frozen):
  """The model with the VAE's EMA weights and its latent statistics."""
  model = nnx.merge(graphdef, state.ema, frozen)
  mean, std = latent_statistics(state.latent_moments)
  model.vae.latents_mean[...] = mean
  model.vae.latents_std[...] = std
  return model


def make_step(cfg: ml_collections.ConfigDict, graphdef, settings: RenderSettings):
  """The pure VAE step (no renders: `overflow` is always false)."""
  del settings
  tx = state_lib.make_optimizer(cfg.optimizer, cfg.num_steps)
  loss_fn = jax.value_and_grad(reconstruction_loss, has_aux=True)
  decay = cfg.autoencoder.moments_decay

  def step(state: AutoencoderState, frozen, batch):
    images = batch["images"].astype(jnp.float32) / 127.5 - 1.0
    flat = images.reshape((-1,) + images.shape[2:])
    weights = batch["view_mask"].astype(jnp.float32).reshape(-1)
    (_, (metrics, moments)), grads = loss_fn(state.params, frozen, graphdef, flat, weights,
                                             state_lib.step_key(state),
                                             kl_weight=cfg.autoencoder.kl_weight)
    finite = state_lib.all_finite(grads) & jnp.isfinite(metrics["loss"])
    new_state = state_lib.apply_gradients(state, grads, tx, cfg.ema_decay, finite)
    # The first step takes the batch's moments; afterwards a moving average.
    rate = jnp.where(state.step == 0, 1.0, 1.0 - decay)
    new_moments = jnp.where(finite, state.latent_moments + rate * (moments - state.latent_moments),
                            state.latent_moments)
    new_state = new_state._replace(step=state.step + 1, latent_moments=new_moments)
    metrics.update(grad_norm=optax.tree.norm(grads), nonfinite=~finite,
                   overflow=jnp.zeros((), bool), needed=jnp.zeros((2,), jnp.int32))
    return new_state, metrics

  return step


@functools.partial(jax.jit, static_argnames="graphdef")
def _reconstruct(vae_state, images, *, graphdef):
  """Images decoded from their posterior means, and those means normalised."""
  vae = nnx.merge(graphdef, vae_state)
  mean, _ = vae.encode(images)
  return vae.decode(mean), vae.normalize_latent(mean)


def evaluate(model, scenes: list[dict], cfg: ml_collections.ConfigDict, settings: RenderSettings):
  """Reconstruction of every held-out view from its posterior mean: (metrics, strips, settings)."""
  del cfg
  graphdef, vae_state = nnx.split(model.vae)
  psnr, ssim, latent_std, strips = [], [], [], []
  for scene in scenes:
    images = jnp.asarray(scene["images"], jnp.float32) / 127.5 - 1.0
    recon, latent = _reconstruct(vae_state, images, graphdef=graphdef)
    psnr.append(np.asarray(metrics_lib.psnr(recon, images)).mean())
    ssim.append(np.asarray(metrics_lib.ssim(recon, images)).mean())
    latent_std.append(float(jnp.std(latent)))
    strips.append(evaluation.strip(scene["images"], recon))
  metrics = {"psnr_reconstruction": float(np.mean(psnr)), "ssim_reconstruction": float(np.mean(ssim)),
             "normalised_latent_std": float(np.mean(latent_std))}
  return metrics, strips, settings

