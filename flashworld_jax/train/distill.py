"""Cross-mode distillation (spec §13.3, DMD2): the 3D-mode 4-step generator learns to match the frozen
MV-mode teacher's distribution, kept consistent with its own MV head (CMC), against a fake score with
a GAN head, with single-image and text-only (OOD) samples mixed in (§13.4).

One jitted step holds both updates; `state.step % (fake_updates + 1)` picks which (the alternation
phase lives in the step count, so a resumed run continues the pattern). Each update draws its own
generator sample by backward simulation: a random k ∈ [0, 4), sampler steps before k without
gradient (the sampler's stage functions), step k with gradient, giving the Gaussians and the latents
x = E(R(G, C)) of the input and the novel views.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from flashworld_jax import sharding
from flashworld_jax.data.sampling import KIND_MULTIVIEW
from flashworld_jax.geometry import rays
from flashworld_jax.models.dit import assemble_dit_input, split_dit_output
from flashworld_jax.models.flashworld import FlashWorld
from flashworld_jax.models.gan_head import GANHead
from flashworld_jax.models.umt5 import text_embeddings
from flashworld_jax.sampling import sampler
from flashworld_jax.sampling.scheduler import FlowMatchScheduler
from flashworld_jax.train import losses, rendering
from flashworld_jax.train import state as state_lib
from flashworld_jax.train.pretrain import Inputs, decode_scenes, encode_inputs


class Networks(nnx.Module):
  """The generator (a FlashWorld: DiT + D_G, with the frozen VAE and text encoder held once), the
  frozen teacher DiT, and the fake-score DiT with its GAN head."""

  def __init__(self, flashworld: FlashWorld, teacher, fake, gan_head: GANHead):
    self.flashworld = flashworld
    self.teacher = teacher
    self.fake = fake
    self.gan_head = gan_head


GENERATOR = nnx.All(nnx.Param, nnx.PathContains("flashworld"),
                    nnx.Any(nnx.PathContains("dit"), nnx.PathContains("gaussian_decoder")))
FAKE = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("fake"), nnx.PathContains("gan_head")))


class DistillState(NamedTuple):
  step: jax.Array            # int32 [], updates so far (generator and fake); the phase is derived
  generator: nnx.State
  generator_opt: optax.OptState
  generator_ema: nnx.State
  fake: nnx.State
  fake_opt: optax.OptState
  rng: jax.Array


def optimizers(cfg: ml_collections.ConfigDict):
  """(generator's: `cfg.optimizer`, fake score's and GAN head's: `cfg.distill.fake_optimizer`)."""
  return (state_lib.make_optimizer(cfg.optimizer, cfg.num_steps),
          state_lib.make_optimizer(cfg.distill.fake_optimizer, cfg.num_steps))


def build(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """(graphdef, DistillState, frozen): generator, teacher and fake score from the pre-trained model
  (`cfg.init_checkpoint`), a fresh GAN head."""
  generator_tx, fake_tx = optimizers(cfg)
  with jax.set_mesh(mesh), sharding.rules():
    flashworld = state_lib.build_model(cfg, mesh)
    teacher, fake = _copy(flashworld.dit), _copy(flashworld.dit)
    dit = cfg.model.dit
    head = GANHead(dit.num_heads * dit.head_dim, len(cfg.distill.gan_layers),
                   cfg.distill.gan_channels, rngs=nnx.Rngs(cfg.seed + 7))
    graphdef, generator, fake_params, frozen = nnx.split(Networks(flashworld, teacher, fake, head),
                                                         GENERATOR, FAKE, ...)
  generator_opt = state_lib.init_optimizer(generator_tx, generator, mesh)
  fake_opt = state_lib.init_optimizer(fake_tx, fake_params, mesh)
  replicated = sharding.named_sharding(mesh, ())
  state = DistillState(
      step=jax.device_put(jnp.zeros((), jnp.int32), replicated), generator=generator,
      generator_opt=generator_opt, generator_ema=jax.tree.map(jnp.copy, generator),
      fake=fake_params, fake_opt=fake_opt,
      rng=jax.device_put(jax.random.key_data(jax.random.key(cfg.seed)), replicated))
  return graphdef, state, frozen


def _copy(module: nnx.Module) -> nnx.Module:
  """A copy with its own buffers (`nnx.clone` shares the arrays, and the generator's DiT is donated
  by the step while the teacher's must stay untouched)."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


def flashworld(graphdef, state: DistillState, frozen) -> FlashWorld:
  """The generator with its EMA weights: what evaluation and `generate` use."""
  return nnx.merge(graphdef, state.generator_ema, state.fake, frozen).flashworld


def batch_constants(cfg: ml_collections.ConfigDict, tokenize) -> dict:
  """The unconditional prompt's tokens, added to every sample (guidance needs them in the step)."""
  empty = tokenize("")
  return {"uncond_token_ids": empty["token_ids"], "uncond_token_mask": empty["token_mask"]}


# ----------------------------------------------------------------------------- pieces


def dmd_loss(x: jax.Array, x_real: jax.Array, x_fake: jax.Array) -> tuple[jax.Array, jax.Array]:
  """DMD2's loss ½‖x − sg(x − g)‖² (mean) with g = (x̂_fake − x̂_real) / mean|x − x̂_real| per sample;
  its gradient with respect to x is g / x.size. Returns (loss, g)."""
  x_real, x_fake = jax.lax.stop_gradient(x_real), jax.lax.stop_gradient(x_fake)
  axes = tuple(range(1, x.ndim))
  scale = jnp.mean(jnp.abs(jax.lax.stop_gradient(x) - x_real), axis=axes, keepdims=True)
  g = (x_fake - x_real) / jnp.maximum(scale, 1e-8)
  target = jax.lax.stop_gradient(x - g)
  return 0.5 * jnp.mean(jnp.square(x - target)), g


class ViewSet(NamedTuple):
  """A set of views the scores judge: latents' raymap, condition latent, cameras."""
  raymap: jax.Array
  cond_latent: jax.Array


def _view_sets(inputs: Inputs) -> tuple[ViewSet, ViewSet]:
  b, v, h, w, _ = inputs.raymap.shape
  novel_raymap = jnp.moveaxis(rays.raymap(inputs.cams_novel, h, w), 2, -1)
  # Novel views carry no image: the image's view is among the inputs.
  return (ViewSet(inputs.raymap, inputs.cond_latent),
          ViewSet(novel_raymap, jnp.zeros(novel_raymap.shape[:-1] + inputs.cond_latent.shape[-1:])))


def _x0(dit, cfg_dit, z, views: ViewSet, context, sigma, hidden_layers=()):
  """x̂₀ of a score network (no feedback channels) at z_σ, and its hidden states if asked."""
  x = assemble_dit_input(z, views.raymap, views.cond_latent, None, None, cfg_dit)
  out = dit(x, (1000.0 * sigma).astype(jnp.float32), context, hidden_layers=hidden_layers)
  out, hidden = out if hidden_layers else (out, None)
  velocity = split_dit_output(out, cfg_dit)[0]
  return z - sigma[:, None, None, None, None] * velocity, hidden


def guided_x0(teacher, cfg_dit, z, views: ViewSet, context, uncond_context, sigma,
              guidance_scale: float) -> jax.Array:
  """The teacher's guided x̂₀, u + g·(c − u), the unconditional pass without image or text; with
  g = 1 only the conditional pass runs (as in the MV sampler's `guided_velocity`)."""
  x_cond, _ = _x0(teacher, cfg_dit, z, views, context, sigma)
  if guidance_scale == 1.0:
    return x_cond
  no_image = views._replace(cond_latent=jnp.zeros_like(views.cond_latent))
  x_uncond, _ = _x0(teacher, cfg_dit, z, no_image, uncond_context, sigma)
  return x_uncond + guidance_scale * (x_cond - x_uncond)


def _sigmas(cfg):
  return jnp.asarray(FlowMatchScheduler.from_config(cfg.model.scheduler).step_sigmas, jnp.float32)


def simulate(model: FlashWorld, cfg, inputs: Inputs, k: jax.Array, settings, key: jax.Array):
  """The sampler's steps 0..k−1 without gradient: (z_k, feedback feature, feedback latent, needed)."""
  sigmas = _sigmas(cfg)
  b = inputs.latents.shape[0]
  noise_key, loop_key = jax.random.split(key)
  z = jax.random.normal(noise_key, inputs.latents.shape, jnp.float32)
  feature = jnp.zeros(z.shape[:-1] + (cfg.model.dit.feature_dim,), jnp.float32)
  carry = (z, feature, jnp.zeros_like(z), jnp.zeros((2,), jnp.int32))

  def body(i, carry):
    z, feedback_feature, feedback_latent, needed = carry
    sigma = jnp.full((b,), sigmas[i])
    velocity, feature = sampler.denoise_batch(model, cfg.model.dit, z, inputs.raymap,
                                              inputs.cond_latent, inputs.context, feedback_feature,
                                              feedback_latent, 1000.0 * sigma)
    gaussians = decode_scenes(model, feature, z - sigmas[i] * velocity, inputs.cams_in)
    white = jnp.ones(inputs.cams_in.shape[:2] + (3,), jnp.float32)
    rgb, seen = rendering.render_views(gaussians, inputs.cams_in, white, settings)
    encode_key, renoise_key = jax.random.split(jax.random.fold_in(loop_key, i))
    x0_3d = _encode(model, rgb, encode_key)
    z = sampler.renoise(x0_3d, sigmas[i + 1], renoise_key)
    return z, feature, x0_3d, jnp.maximum(needed, seen)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, k, body, carry))


def _encode(model, rgb: jax.Array, key: jax.Array) -> jax.Array:
  b, v = rgb.shape[:2]
  latents = sampler.reencode(model, rgb.reshape((b * v,) + rgb.shape[2:]), key)
  return latents.reshape((b, v) + latents.shape[1:])


def generator_sample(model: FlashWorld, cfg, inputs: Inputs, k, simulated, settings, key):
  """Step k of the sampler with gradient: latents of the renders at the input and the novel views,
  x̂₀_MV of the same pass (the MV head's prediction, for CMC) and the render counts."""
  z, feedback_feature, feedback_latent, needed = simulated
  sigma = jnp.full((z.shape[0],), _sigmas(cfg)[k])
  velocity, feature = sampler.denoise_batch(model, cfg.model.dit, z, inputs.raymap, inputs.cond_latent,
                                            inputs.context, feedback_feature, feedback_latent,
                                            1000.0 * sigma)
  x0_mv = z - sigma[:, None, None, None, None] * velocity
  gaussians = decode_scenes(model, feature, x0_mv, inputs.cams_in)
  cams = jnp.concatenate([inputs.cams_in, inputs.cams_novel], axis=1)
  white = jnp.ones(cams.shape[:2] + (3,), jnp.float32)
  rgb, seen = rendering.render_views(gaussians, cams, white, settings)
  latents = _encode(model, rgb, key)
  v_in = inputs.cams_in.shape[1]
  return latents[:, :v_in], latents[:, v_in:], x0_mv, jnp.maximum(needed, seen)


def _noised(x, key, cfg, low=0.0, high=1.0):
  sigma_key, noise_key = jax.random.split(key)
  sigma = losses.sample_sigma(sigma_key, (x.shape[0],), cfg.model.scheduler.shift, low, high)
  return losses.add_noise(x, jax.random.normal(noise_key, x.shape), sigma), sigma


def _grid(x: jax.Array) -> tuple[int, int, int]:
  return x.shape[1], x.shape[2] // 2, x.shape[3] // 2


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  mask = mask.astype(jnp.float32)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ----------------------------------------------------------------------------- losses


def generator_loss(generator, fixed, graphdef, inputs: Inputs, batch: dict, k, simulated, key, *,
                   cfg, settings, cmc_to_mv_head):
  """DMD (input and novel views) + GAN (multi-view samples only) + CMC, and the metrics.

  `fixed` holds the fake score and the frozen parts; only `generator` is differentiated.
  """
  fake, frozen = fixed
  nets = nnx.merge(graphdef, generator, fake, frozen)
  d = cfg.distill
  keys = jax.random.split(key, 5)
  x_in, x_novel, x0_mv, needed = generator_sample(nets.flashworld, cfg, inputs, k, simulated,
                                                  settings, keys[0])
  uncond = text_embeddings(nets.flashworld.text_encoder, batch["uncond_token_ids"],
                           batch["uncond_token_mask"])
  multiview = batch["kind"] == KIND_MULTIVIEW
  metrics, total = {}, 0.0
  for name, x, views, key_dmd in (("input", x_in, _view_sets(inputs)[0], keys[1]),
                                  ("novel", x_novel, _view_sets(inputs)[1], keys[2])):
    x_noisy, sigma = _noised(jax.lax.stop_gradient(x), key_dmd, cfg, d.dmd_u_range[0],
                             d.dmd_u_range[1])
    x_real = guided_x0(nets.teacher, cfg.model.dit, x_noisy, views, inputs.context, uncond, sigma,
                       d.guidance_scale)
    x_fake, _ = _x0(nets.fake, cfg.model.dit, x_noisy, views, inputs.context, sigma)
    metrics[f"loss_dmd_{name}"], _ = dmd_loss(x, x_real, x_fake)
    total += metrics[f"loss_dmd_{name}"]
  # GAN: the generator's latents noised and judged through the fake backbone (gradient to x only).
  x_noisy, sigma = _noised(x_in, keys[3], cfg)
  _, hidden = _x0(nets.fake, cfg.model.dit, x_noisy, _view_sets(inputs)[0], inputs.context, sigma,
                  hidden_layers=tuple(d.gan_layers))
  logits = nets.gan_head(hidden, _grid(x_in))
  metrics["loss_gan_generator"] = _masked_mean(jax.nn.softplus(-logits), multiview)
  total += d.gan_generator_weight * metrics["loss_gan_generator"]
  mv_prediction = jnp.where(cmc_to_mv_head, x0_mv, jax.lax.stop_gradient(x0_mv))
  metrics["loss_cmc"] = jnp.mean(jnp.square(x_in - mv_prediction))
  total += d.cmc_weight * metrics["loss_cmc"]
  metrics["sample_mean"] = jnp.mean(jax.lax.stop_gradient(x_in))
  return total, (metrics, needed)


def fake_loss(fake, fixed, graphdef, inputs: Inputs, batch: dict, x_in, key, *, cfg):
  """Flow matching on the generator's (stop-gradient) latents over the full σ range, plus the
  discriminator's non-saturating loss with approximated R1 on the multi-view samples."""
  generator, frozen = fixed
  nets = nnx.merge(graphdef, generator, fake, frozen)
  d = cfg.distill
  keys = jax.random.split(key, 4)
  views = _view_sets(inputs)[0]
  x_in = jax.lax.stop_gradient(x_in)
  sigma_key, noise_key = jax.random.split(keys[0])
  sigma = losses.sample_sigma(sigma_key, (x_in.shape[0],), cfg.model.scheduler.shift)
  noise = jax.random.normal(noise_key, x_in.shape)
  x_noisy = losses.add_noise(x_in, noise, sigma)
  layers = tuple(d.gan_layers)
  inputs_fake = assemble_dit_input(x_noisy, views.raymap, views.cond_latent, None, None,
                                           cfg.model.dit)
  out, hidden_fake = nets.fake(inputs_fake, 1000.0 * sigma, inputs.context, hidden_layers=layers)
  velocity = split_dit_output(out, cfg.model.dit)[0]
  metrics = {"loss_flow_matching": losses.flow_matching_loss(velocity, noise, x_in)}
  multiview = batch["kind"] == KIND_MULTIVIEW
  real_noisy, real_sigma = _noised(inputs.latents, keys[1], cfg)
  _, hidden_real = _x0(nets.fake, cfg.model.dit, real_noisy, views, inputs.context, real_sigma,
                       hidden_layers=layers)
  perturbed = real_noisy + d.r1_sigma * jax.random.normal(keys[2], real_noisy.shape)
  _, hidden_perturbed = _x0(nets.fake, cfg.model.dit, perturbed, views, inputs.context, real_sigma,
                            hidden_layers=layers)
  grid = _grid(x_in)
  logits_fake = nets.gan_head(hidden_fake, grid)
  logits_real = nets.gan_head(hidden_real, grid)
  logits_perturbed = nets.gan_head(hidden_perturbed, grid)
  metrics["loss_discriminator"] = _masked_mean(
      jax.nn.softplus(logits_fake) + jax.nn.softplus(-logits_real), multiview)
  metrics["loss_r1"] = _masked_mean(jnp.square(logits_real - logits_perturbed), multiview)
  total = (metrics["loss_flow_matching"]
           + d.discriminator_weight * (metrics["loss_discriminator"] + d.r1_weight * metrics["loss_r1"]))
  return total, metrics


# ----------------------------------------------------------------------------- the step


_GENERATOR_METRICS = ("loss_dmd_input", "loss_dmd_novel", "loss_gan_generator", "loss_cmc")
_FAKE_METRICS = ("loss_flow_matching", "loss_discriminator", "loss_r1")


PHASES = ("generator", "fake")


def make_step(cfg: ml_collections.ConfigDict, graphdef, settings, phase: str | None = None):
  """(state, frozen, batch) → (state, metrics): a fake-score update, or every
  `fake_updates_per_generator + 1`-th step a generator update. `phase` builds a step of one kind
  only (the AOT memory plan of each update; training alternates)."""
  if phase is not None and phase not in PHASES:
    raise ValueError(f"distill.make_step: phase={phase!r}; expected None or one of {PHASES}")
  d = cfg.distill
  generator_tx, fake_tx = optimizers(cfg)
  period = d.fake_updates_per_generator + 1
  num_steps = len(FlowMatchScheduler.from_config(cfg.model.scheduler).step_sigmas)

  def prepare(state, frozen, batch, key):
    keys = jax.random.split(key, 4)
    nets = nnx.merge(graphdef, state.generator, state.fake, frozen)
    inputs = encode_inputs(nets.flashworld, batch, cfg.data.num_input_views, keys[0])
    k = jax.random.randint(keys[1], (), 0, num_steps)
    simulated = simulate(nets.flashworld, cfg, inputs, k, settings, keys[2])
    return inputs, k, simulated, keys[3]

  def generator_update(state, frozen, batch, prepared):
    inputs, k, simulated, key = prepared
    generator_updates = state.step // period
    cmc_to_mv_head = generator_updates % d.cmc_mv_every == 0
    grad_fn = jax.value_and_grad(generator_loss, has_aux=True)
    (loss, (metrics, needed)), grads = grad_fn(
        state.generator, (state.fake, frozen), graphdef, inputs, batch, k, simulated, key, cfg=cfg,
        settings=settings, cmc_to_mv_head=cmc_to_mv_head)
    ok, metrics = _guard(loss, grads, needed, metrics, settings)
    generator, generator_opt, ema = state_lib.guarded_update(
        state.generator, state.generator_opt, state.generator_ema, grads, generator_tx,
        cfg.ema_decay, ok)
    new_state = state._replace(generator=generator, generator_opt=generator_opt, generator_ema=ema)
    return new_state, _complete(metrics, loss, k, True)

  def fake_update(state, frozen, batch, prepared):
    inputs, k, simulated, key = prepared
    sample_key, loss_key = jax.random.split(key)
    nets = nnx.merge(graphdef, state.generator, state.fake, frozen)
    x_in, _, _, needed = jax.lax.stop_gradient(
        generator_sample(nets.flashworld, cfg, inputs, k, simulated, settings, sample_key))
    grad_fn = jax.value_and_grad(fake_loss, has_aux=True)
    (loss, metrics), grads = grad_fn(state.fake, (state.generator, frozen), graphdef, inputs, batch,
                                     x_in, loss_key, cfg=cfg)
    metrics["sample_mean"] = jnp.mean(x_in)
    ok, metrics = _guard(loss, grads, needed, metrics, settings)
    fake, fake_opt, _ = state_lib.guarded_update(state.fake, state.fake_opt, None, grads, fake_tx,
                                                 0.0, ok)
    return state._replace(fake=fake, fake_opt=fake_opt), _complete(metrics, loss, k, False)

  def step(state: DistillState, frozen, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    is_generator = state.step % period == period - 1
    # Both updates start from the same simulated steps: computed once, outside the `cond`.
    operands = (state, frozen, batch, prepare(state, frozen, batch, key))
    if phase is None:
      new_state, metrics = jax.lax.cond(is_generator, generator_update, fake_update, *operands)
    else:
      new_state, metrics = (generator_update if phase == "generator" else fake_update)(*operands)
    overflow = metrics["overflow"]
    return new_state._replace(step=state.step + jnp.where(overflow, 0, 1).astype(jnp.int32)), metrics

  return step


def _guard(loss, grads, needed, metrics, settings):
  """(update allowed, metrics): finite loss and gradients, and renders within their capacity."""
  finite = state_lib.all_finite(grads) & jnp.isfinite(loss)
  overflow = rendering.exceeds(needed, settings)
  metrics = dict(metrics, needed=needed, nonfinite=~finite, overflow=overflow,
                 grad_norm=optax.tree.norm(grads))
  return finite & ~overflow, metrics


def _complete(metrics, loss, k, generator_update):
  """Both branches of the step return the same metrics: the other update's losses are zero."""
  full = {name: jnp.zeros((), jnp.float32) for name in _GENERATOR_METRICS + _FAKE_METRICS}
  full.update(metrics)
  full.update(loss=loss, k=k.astype(jnp.float32), generator_update=jnp.asarray(generator_update))
  return full
