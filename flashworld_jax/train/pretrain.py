"""Dual-mode pre-training (spec §13.2): one DiT pass gives the velocity (MV mode, L_MV) and the
feature map that, through the Gaussian decoder and the renderer, gives novel views (3D mode, L_3D).

Per batch: the frozen VAE encodes the input views to normalised posterior latents Z; σ comes from the
shifted density; z_σ = (1 − σ)Z + σε. With probability `self_conditioning_prob` a stop-gradient first
pass (zero feedback) supplies the feedback (F, x̂₀_3D = E(R(D_G(F, x̂₀_MV)))) to the pass that gets the
loss, exactly as the sampler's steps do (the same stage functions). L = L_MV + w·L_3D with L_3D the
MSE of the novel views rendered on random backgrounds.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from flashworld_jax import sharding
from flashworld_jax.geometry import rays
from flashworld_jax.models.umt5 import text_embeddings
from flashworld_jax.sampling import sampler
from flashworld_jax.sampling.conditioning import LATENT_STRIDE
from flashworld_jax.sampling.sampler import RenderSettings
from flashworld_jax.train import losses, rendering
from flashworld_jax.train import state as state_lib

TRAINABLE = ("dit", "gaussian_decoder")
FEEDBACK_MODES = ("same_sigma", "previous_sigma")


class Inputs(NamedTuple):
  """What the frozen encoders make of a batch (no gradient flows into them)."""
  images: jax.Array        # [B, V, H, W, 3] in [−1, 1]
  latents: jax.Array       # [B, V_in, h, w, z] normalised posterior samples of the input views
  context: jax.Array       # [B, L, D] text embeddings
  cond_latent: jax.Array   # [B, V_in, h, w, z]: Z at the conditioning view, zeros elsewhere
  raymap: jax.Array        # [B, V_in, h, w, 6]
  cams_in: jax.Array       # [B, V_in, 11]
  cams_novel: jax.Array    # [B, V_novel, 11]


def encode_inputs(model, batch: dict, num_input_views: int, key: jax.Array) -> Inputs:
  images = batch["images"].astype(jnp.float32) / 127.5 - 1.0
  b, _, height, width, _ = images.shape
  h, w = height // LATENT_STRIDE, width // LATENT_STRIDE
  inputs = images[:, :num_input_views].reshape(b * num_input_views, height, width, 3)
  latents = sampler.reencode(model, inputs, key).reshape(b, num_input_views, h, w, -1)
  context = text_embeddings(model.text_encoder, batch["token_ids"], batch["token_mask"])
  is_condition = jnp.arange(num_input_views)[None] == batch["condition_index"][:, None]
  cond_latent = jnp.where(is_condition[..., None, None, None], latents, 0.0)
  cams = batch["cameras"].astype(jnp.float32)
  cams_in = cams[:, :num_input_views]
  raymap = jnp.moveaxis(rays.raymap(cams_in, h, w), 2, -1)
  return jax.lax.stop_gradient(Inputs(images, latents, context, cond_latent, raymap, cams_in,
                                      cams[:, num_input_views:]))


def decode_scenes(model, feature: jax.Array, x0_mv: jax.Array, cams: jax.Array) -> jax.Array:
  """Gaussians [B, N, 38] of B scenes (the sampler's `decode`, views of all scenes in one pass)."""
  b, v = cams.shape[:2]
  flat = lambda x: x.reshape((b * v,) + x.shape[2:])  # noqa: E731
  return sampler.decode(model, flat(feature), flat(x0_mv), flat(cams)).reshape(b, -1, 38)


def feedback_pass(model, cfg_dit, inputs: Inputs, z: jax.Array, sigma: jax.Array,
                  settings: RenderSettings, key: jax.Array):
  """The sampler's step without gradients: (F, x̂₀_3D), render counts, from zero feedback at z."""
  velocity, feature = sampler.denoise_batch(model, cfg_dit, z, inputs.raymap, inputs.cond_latent,
                                            inputs.context, None, None, 1000.0 * sigma)
  x0_mv = z - sigma[:, None, None, None, None] * velocity
  gaussians = decode_scenes(model, feature, x0_mv, inputs.cams_in)
  white = jnp.ones(inputs.cams_in.shape[:2] + (3,), jnp.float32)
  rgb, needed = rendering.render_views(gaussians, inputs.cams_in, white, settings)
  b, v = rgb.shape[:2]
  x0_3d = sampler.reencode(model, rgb.reshape((b * v,) + rgb.shape[2:]), key).reshape(z.shape)
  return jax.lax.stop_gradient((feature, x0_3d)), needed


def pretrain_loss(params, frozen, graphdef, inputs: Inputs, view_mask: jax.Array, key: jax.Array, *,
                  cfg: ml_collections.ConfigDict, settings: RenderSettings):
  """(loss, metrics) of one (micro-)batch; `metrics["needed"]` holds the largest render counts.

  NNX checks that a module's variables belong to the trace it runs in, so every transformed region
  (the gradient, the feedback `cond`) merges its own module from the states it receives.
  """
  model = nnx.merge(graphdef, params, frozen)
  pcfg, cfg_dit = cfg.pretrain, cfg.model.dit
  keys = jax.random.split(key, 6)
  z0 = inputs.latents
  b = z0.shape[0]
  sigma = losses.sample_sigma(keys[0], (b,), cfg.model.scheduler.shift)
  noise = jax.random.normal(keys[1], z0.shape, jnp.float32)
  z = losses.add_noise(z0, noise, sigma)
  sigma_first = sigma
  if pcfg.feedback_mode == "previous_sigma":
    # The first pass at a noisier σ; its x̂₀_3D re-noised to σ becomes the loss pass's input, as in
    # the sampler.
    sigma_first = jnp.minimum(1.0, sigma + pcfg.previous_sigma_gap * (1.0 - sigma))
  z_first = losses.add_noise(z0, noise, sigma_first)

  def with_feedback(p, f):
    return feedback_pass(nnx.merge(graphdef, p, f), cfg_dit, inputs, z_first, sigma_first,
                         settings, keys[2])

  def no_feedback(p, f):
    del p, f
    zeros = (jnp.zeros(z0.shape[:-1] + (cfg_dit.feature_dim,), jnp.float32), jnp.zeros_like(z0))
    return zeros, jnp.zeros((2,), jnp.int32)

  use = jax.random.uniform(keys[3]) < pcfg.self_conditioning_prob
  (feature_fb, latent_fb), needed_fb = jax.lax.cond(use, with_feedback, no_feedback, params, frozen)
  if pcfg.feedback_mode == "previous_sigma":
    renoised = losses.add_noise(latent_fb, jax.random.normal(keys[4], z0.shape), sigma)
    z = jnp.where(use, renoised, z)
    # v = ε − x₀ with ε chosen so that z − σ·v = Z for the re-noised input.
    s = sigma[:, None, None, None, None]
    noise = jnp.where(use, (z - (1.0 - s) * z0) / jnp.maximum(s, 1e-3), noise)

  velocity, feature = sampler.denoise_batch(model, cfg_dit, z, inputs.raymap, inputs.cond_latent,
                                            inputs.context, feature_fb, latent_fb, 1000.0 * sigma)
  loss_mv = losses.flow_matching_loss(velocity, noise, z0)
  x0_mv = z - sigma[:, None, None, None, None] * velocity
  gaussians = decode_scenes(model, feature, x0_mv, inputs.cams_in)
  num_input_views = inputs.cams_in.shape[1]
  supervise_inputs = pcfg.input_view_loss_weight > 0
  # Views rendered: the novel ones, and the input ones too where they are supervised.
  first = 0 if supervise_inputs else num_input_views
  cams = jnp.concatenate([inputs.cams_in, inputs.cams_novel], axis=1)[:, first:]
  if pcfg.random_background:
    # The novel views' backgrounds do not depend on whether the input views are rendered too.
    backgrounds = jnp.concatenate(
        [jax.random.uniform(jax.random.fold_in(keys[5], 1), (b, num_input_views, 3)),
         jax.random.uniform(keys[5], inputs.cams_novel.shape[:2] + (3,))], axis=1)[:, first:]
  else:
    backgrounds = jnp.ones(cams.shape[:2] + (3,))
  rgb, needed = rendering.render_views(gaussians, cams, backgrounds, settings)
  # The ground truth sits on the scene's own background; the random background behind the renders
  # teaches the decoder to cover every pixel the views see.
  target, mask = inputs.images[:, first:], view_mask[:, first:]
  is_novel = jnp.arange(first, first + cams.shape[1]) >= num_input_views
  loss_3d = losses.masked_mse(rgb, target, mask * is_novel)
  loss = loss_mv + pcfg.loss_3d_weight * loss_3d
  metrics = {"loss_mv": loss_mv, "loss_3d": loss_3d,
             "psnr_3d_train": 10.0 * jnp.log10(4.0 / jnp.maximum(loss_3d, 1e-10)),
             "self_conditioned": use.astype(jnp.float32),
             "needed": jnp.maximum(needed, needed_fb)}
  if supervise_inputs:
    loss_input = losses.masked_mse(rgb, target, mask * ~is_novel)
    loss = loss + pcfg.input_view_loss_weight * loss_input
    metrics["loss_3d_input"] = loss_input
  return loss, {"loss": loss, **metrics}


def build(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(graphdef, TrainState, frozen) of the model to pre-train (`cfg.init_checkpoint` or random)."""
  tx = state_lib.make_optimizer(cfg.optimizer, cfg.num_steps)
  with jax.set_mesh(mesh), sharding.rules():
    model = state_lib.build_model(cfg, mesh)
    return state_lib.create(model, TRAINABLE, tx, cfg.seed, mesh)


def flashworld(graphdef, state: state_lib.TrainState, frozen):
  """The model with its EMA weights: what evaluation and `generate` use."""
  return nnx.merge(graphdef, state.ema, frozen)


def make_step(cfg: ml_collections.ConfigDict, graphdef, settings: RenderSettings):
  """The pure pre-training step: (state, frozen, batch) → (state, metrics), with gradient
  accumulation over `cfg.accumulation_steps` micro-batches and the update skipped (and reported)
  when the loss or a gradient is not finite or a render overflowed its capacity."""
  tx = state_lib.make_optimizer(cfg.optimizer, cfg.num_steps)
  if cfg.pretrain.feedback_mode not in FEEDBACK_MODES:
    raise ValueError(f"pretrain.feedback_mode={cfg.pretrain.feedback_mode!r}; expected one of "
                     f"{FEEDBACK_MODES}")
  loss_fn = jax.value_and_grad(
      lambda p, f, x, m, k: pretrain_loss(p, f, graphdef, x, m, k, cfg=cfg, settings=settings),
      has_aux=True)
  micro = cfg.accumulation_steps

  def micro_step(params, frozen, batch, key):
    encode_key, loss_key = jax.random.split(key)
    inputs = encode_inputs(nnx.merge(graphdef, params, frozen), batch, cfg.data.num_input_views,
                           encode_key)
    return loss_fn(params, frozen, inputs, batch["view_mask"], loss_key)

  def step(state: state_lib.TrainState, frozen, batch):
    key = state_lib.step_key(state)
    split = jax.tree.map(lambda x: x.reshape((micro, x.shape[0] // micro) + x.shape[1:]), batch)

    # NNX modules cannot be closed over across the scan's trace level: the parameters and the frozen
    # state ride in the carry (unchanged) and each micro-step merges a module from them.
    def accumulate(carry, xs):
      params, frozen_state, grads_sum, metrics_sum = carry
      micro_batch, micro_key = xs
      (_, metrics), grads = micro_step(params, frozen_state, micro_batch, micro_key)
      needed = jnp.maximum(metrics_sum.pop("needed"), metrics.pop("needed"))
      metrics_sum = {**jax.tree.map(jnp.add, metrics_sum, metrics), "needed": needed}
      return (params, frozen_state, jax.tree.map(jnp.add, grads_sum, grads), metrics_sum), None

    zero_grads = jax.tree.map(jnp.zeros_like, state.params)
    _, metrics_shape = jax.eval_shape(micro_step, state.params, frozen,
                                      jax.tree.map(lambda x: x[0], split), key)[0]
    zero_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)
    (_, _, grads, metrics), _ = jax.lax.scan(
        accumulate, (state.params, frozen, zero_grads, zero_metrics),
        (split, jax.random.split(key, micro)))
    grads = jax.tree.map(lambda g: g / micro, grads)
    metrics = {k: (v if k == "needed" else v / micro) for k, v in metrics.items()}
    overflow = rendering.exceeds(metrics["needed"], settings)
    finite = state_lib.all_finite(grads) & jnp.isfinite(metrics["loss"])
    new_state = state_lib.apply_gradients(state, grads, tx, cfg.ema_decay, finite & ~overflow)
    # An overflow re-runs the same batch with a larger capacity: the step does not advance.
    new_state = new_state._replace(step=state.step + jnp.where(overflow, 0, 1).astype(jnp.int32))
    metrics.update(grad_norm=optax.tree.norm(grads), nonfinite=~finite, overflow=overflow)
    return new_state, metrics

  return step
