"""The 3D-oriented 4-step sampler with feedback (spec flashworld.md §9).

Each step: DiT → x̂₀_MV = z − σ·v and feature F → Gaussian decoder → render every input view (white
background) → VAE re-encode (posterior sample) → re-noise to the next σ with fresh noise; F and the
re-encoded latent are fed back. The Gaussians of the last step are the scene.

The steps are built from stage functions (`denoise`, `decode`, `render`, `reencode`, `renoise`) used
two ways: `sample_scene` jits the whole sampler as one function (lax.scan over the re-noising
steps), and `StagedSampler` compiles each stage separately to time it. Both draw the same random
numbers from the same key, so they produce the same scene.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from flashworld_jax.models.dit import assemble_dit_input, split_dit_output
from flashworld_jax.models.flashworld import FlashWorld
from flashworld_jax.models.gaussian_render import render_gaussians
from flashworld_jax.render import RasterCapacity
from flashworld_jax.sampling.scheduler import FlowMatchScheduler
from flashworld_jax.sampling.timing import Timings


_MIN_ALPHA = 1e-6  # expected depth divides by the accumulated opacity, which may be 0


class SceneConditioning(NamedTuple):
  """Everything the sampler conditions on, for one scene of V views (normalised frame)."""
  context: jax.Array       # [1, L_txt, text_dim] text embeddings, zero past the prompt
  raymap: jax.Array        # [V, h, w, 6] at the latent grid
  cond_latent: jax.Array   # [V, h, w, z] normalised image latent at image_index, zeros elsewhere
  cams: jax.Array          # [V, 11] normalised cameras


class StepOutput(NamedTuple):
  """What one sampling step produced; `sample_scene(..., trace=True)` returns one per step."""
  velocity: jax.Array      # [V, h, w, z]
  feature: jax.Array       # [V, h, w, F]
  x0_mv: jax.Array         # [V, h, w, z]
  gaussians: jax.Array     # [N, 38]


@dataclasses.dataclass(frozen=True)
class RenderSettings:
  """Static rendering settings of the sampler (spec §10): white background, near/far, capacity."""
  height: int
  width: int
  capacity: RasterCapacity
  near_plane: float = 0.01
  far_plane: float = 1000.0
  backend: str = "auto"


def initial_capacity(cfg: ml_collections.ConfigDict, num_gaussians: int) -> RasterCapacity:
  """Static per-view capacity from the config; grown and re-run on overflow."""
  max_isects = max(1, int(num_gaussians * cfg.render.isects_per_gaussian))
  tile_capacity = -(-int(cfg.render.tile_capacity) // 128) * 128
  return RasterCapacity(max_isects=max_isects, tile_capacity=tile_capacity)


def grown_capacity(capacity: RasterCapacity, n_isects: int, max_tile_count: int) -> RasterCapacity:
  """A capacity with room for the observed counts plus 25 % (the caller then re-runs)."""
  grown = RasterCapacity(
      max_isects=max(capacity.max_isects, int(n_isects * 1.25) + 1),
      tile_capacity=max(capacity.tile_capacity, -(-int(max_tile_count * 1.25) // 128) * 128))
  logging.warning("render capacity overflow (needed %d intersections, %d in one tile; had %s): "
                  "re-running with %s", n_isects, max_tile_count, capacity, grown)
  return grown


# ----------------------------------------------------------------------------- stages


def denoise_batch(model: FlashWorld, cfg_dit: ml_collections.ConfigDict, z: jax.Array,
                  raymap: jax.Array, cond_latent: jax.Array | None, context: jax.Array,
                  feedback_feature: jax.Array | None, feedback_latent: jax.Array | None,
                  timestep: jax.Array) -> tuple[jax.Array, jax.Array]:
  """DiT pass over B scenes: z [B,V,h,w,z], raymap [B,V,h,w,6], cond_latent and feedback like z (or
  None: zeros), context [B,L,D], timestep [B] → (velocity [B,V,h,w,z], feature [B,V,h,w,F])."""
  x = assemble_dit_input(z, raymap, cond_latent, feedback_feature, feedback_latent, cfg_dit)
  out = model.dit(x, timestep.astype(jnp.float32), context)
  return split_dit_output(out, cfg_dit)


def denoise(model: FlashWorld, cfg_dit: ml_collections.ConfigDict, z: jax.Array,
            cond: SceneConditioning, feedback_feature: jax.Array | None,
            feedback_latent: jax.Array | None, timestep: jax.Array) -> tuple[jax.Array, jax.Array]:
  """DiT pass: (velocity [V,h,w,z], feature [V,h,w,F]) for latents z [V,h,w,z] at `timestep`."""
  batch = lambda x: None if x is None else x[None]
  velocity, feature = denoise_batch(model, cfg_dit, z[None], cond.raymap[None],
                                    batch(cond.cond_latent), cond.context, batch(feedback_feature),
                                    batch(feedback_latent), jnp.reshape(timestep, (1,)))
  return velocity[0], None if feature is None else feature[0]


def decode(model: FlashWorld, feature: jax.Array, x0_mv: jax.Array, cams: jax.Array) -> jax.Array:
  """Gaussian decoder: Gaussians [N, 38] in the normalised frame."""
  return model.gaussian_decoder(feature, x0_mv, cams, model.vae.unnormalize_latent)


def render_with_depth(gaussians: jax.Array, cams: jax.Array, settings: RenderSettings
                      ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Renders every view, one at a time (bounded memory), with a white background.

  Returns (rgb [V,H,W,3] in [−1, 1], expected depth [V,H,W], n_isects [V], max_tile_count [V]).
  The expected depth is the opacity-weighted mean camera z, Σ wᵢ zᵢ / Σ wᵢ, about 0 where nothing
  was hit (as the synthetic data's depth). The counts exceed the capacity exactly when the images
  are invalid.
  """
  def one_view(cam):
    rgb, depth, alpha, meta = render_gaussians(
        gaussians, cam[None], settings.height, settings.width, background=1.0,
        near_plane=settings.near_plane, far_plane=settings.far_plane, capacity=settings.capacity,
        backend=settings.backend)
    expected_depth = depth[0, ..., 0] / jnp.maximum(alpha[0, ..., 0], _MIN_ALPHA)
    return rgb[0], expected_depth, meta["n_isects"], meta["max_tile_count"]

  return jax.lax.map(one_view, cams)


def render(gaussians: jax.Array, cams: jax.Array, settings: RenderSettings
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`render_with_depth` without the depth: (rgb [V,H,W,3], n_isects [V], max_tile_count [V])."""
  rgb, _, n_isects, max_tile_count = render_with_depth(gaussians, cams, settings)
  return rgb, n_isects, max_tile_count


def reencode(model: FlashWorld, rgb: jax.Array, key: jax.Array) -> jax.Array:
  """VAE re-encoding of the renders with a posterior sample: normalised latents [V,h,w,z]."""
  mean, logvar = model.vae.encode(rgb)
  return model.vae.normalize_latent(model.vae.sample_posterior(mean, logvar, key))


def renoise(x0: jax.Array, sigma_next: jax.Array, key: jax.Array) -> jax.Array:
  """z_{σ'} = (1 − σ')·x̂₀ + σ'·ε with fresh ε."""
  noise = jax.random.normal(key, x0.shape, jnp.float32)
  return (1.0 - sigma_next) * x0 + sigma_next * noise


def sampler_keys(key: jax.Array, num_steps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(initial-noise key, re-encode keys [S−1], re-noise keys [S−1]): one fixed split per seed."""
  keys = jax.random.split(key, 2 * num_steps - 1)
  return keys[0], keys[1:num_steps], keys[num_steps:]


# ----------------------------------------------------------------------------- fused sampler


def sample_scene_fn(model: FlashWorld, cond: SceneConditioning, key: jax.Array, *,
                    cfg: ml_collections.ConfigDict, settings: RenderSettings, trace: bool = False):
  """The whole sampler as one traceable function (jit it, or use `sample_scene`).

  Returns (gaussians [N,38], needed (n_isects, max_tile_count) maxima over all renders, and, with
  `trace`, the StepOutput of every step stacked on a leading axis).
  """
  scheduler = FlowMatchScheduler.from_config(cfg.scheduler)
  sigmas = jnp.asarray(scheduler.step_sigmas, jnp.float32)
  timesteps = jnp.asarray(scheduler.step_timesteps, jnp.float32)
  num_steps = len(scheduler.step_indices)
  noise_key, encode_keys, renoise_keys = sampler_keys(key, num_steps)
  views, h, w = cond.raymap.shape[:3]
  z = jax.random.normal(noise_key, (views, h, w, cfg.dit.latent_channels), jnp.float32)
  # NNX modules cannot be closed over across the scan's trace level: their state rides in the
  # carry (unchanged) and each step merges a module from it.
  graphdef, state = nnx.split(model)

  def step(state, z, feedback_feature, feedback_latent, i):
    model = nnx.merge(graphdef, state)
    velocity, feature = denoise(model, cfg.dit, z, cond, feedback_feature, feedback_latent,
                                timesteps[i])
    x0_mv = z - sigmas[i] * velocity
    return StepOutput(velocity, feature, x0_mv, decode(model, feature, x0_mv, cond.cams))

  def renoising_step(carry, xs):
    state, z, feedback_feature, feedback_latent, needed = carry
    i, encode_key, renoise_key = xs
    out = step(state, z, feedback_feature, feedback_latent, i)
    rgb, n_isects, max_tile_count = render(out.gaussians, cond.cams, settings)
    x0_3d = reencode(nnx.merge(graphdef, state), rgb, encode_key)
    z = renoise(x0_3d, sigmas[i + 1], renoise_key)
    needed = jnp.maximum(needed, jnp.stack([jnp.max(n_isects), jnp.max(max_tile_count)]))
    return (state, z, out.feature, x0_3d, needed), (out if trace else None)

  zero_feature = jnp.zeros((views, h, w, cfg.dit.feature_dim), jnp.float32)
  zero_latent = jnp.zeros_like(z)
  carry = (state, z, zero_feature, zero_latent, jnp.zeros((2,), jnp.int32))
  carry, outs = jax.lax.scan(renoising_step, carry,
                             (jnp.arange(num_steps - 1), encode_keys, renoise_keys))
  state, z, feedback_feature, feedback_latent, needed = carry
  last = step(state, z, feedback_feature, feedback_latent, num_steps - 1)
  if trace:
    outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), outs, last)
  return last.gaussians, needed, outs


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "settings", "trace"))
def _sample_scene_jit(graphdef, state, cond, key, *, cfg, settings, trace):
  return sample_scene_fn(nnx.merge(graphdef, state), cond, key, cfg=cfg, settings=settings,
                         trace=trace)


def sample_scene(model: FlashWorld, cond: SceneConditioning, key: jax.Array, *,
                 cfg: ml_collections.ConfigDict, settings: RenderSettings, trace: bool = False):
  """Runs the jitted sampler; on a render-capacity overflow grows the capacity and re-runs (the same
  key gives the same scene). Returns (gaussians, settings actually used, trace or None)."""
  graphdef, state = nnx.split(model)
  while True:
    gaussians, needed, outs = _sample_scene_jit(
        graphdef, state, cond, key, cfg=ml_collections.FrozenConfigDict(cfg), settings=settings,
        trace=trace)
    n_isects, max_tile_count = (int(v) for v in needed)
    if n_isects <= settings.capacity.max_isects and max_tile_count <= settings.capacity.tile_capacity:
      return gaussians, settings, outs
    settings = dataclasses.replace(
        settings, capacity=grown_capacity(settings.capacity, n_isects, max_tile_count))


# ----------------------------------------------------------------------------- staged sampler


class StagedSampler:
  """The same sampler, one compiled function per stage, timing compile and run separately."""

  def __init__(self, model: FlashWorld, cfg: ml_collections.ConfigDict, settings: RenderSettings,
               timings: Timings):
    graphdef, self.state = nnx.split(model)
    merge = functools.partial(nnx.merge, graphdef)
    self.cfg, self.settings, self.timings = cfg, settings, timings
    self.scheduler = FlowMatchScheduler.from_config(cfg.scheduler)
    self._denoise = jax.jit(lambda state, *args: denoise(merge(state), cfg.dit, *args))
    self._decode = jax.jit(lambda state, *args: decode(merge(state), *args))
    self._reencode = jax.jit(lambda state, *args: reencode(merge(state), *args))
    self._renoise = jax.jit(renoise)
    self._renders = {}

  def __call__(self, cond: SceneConditioning, key: jax.Array, trace: bool = False):
    cfg, state, run = self.cfg, self.state, self.timings.run
    sigmas, timesteps = self.scheduler.step_sigmas, self.scheduler.step_timesteps
    num_steps = len(sigmas)
    noise_key, encode_keys, renoise_keys = sampler_keys(key, num_steps)
    views, h, w = cond.raymap.shape[:3]
    z = jax.random.normal(noise_key, (views, h, w, cfg.dit.latent_channels), jnp.float32)
    feedback_feature = jnp.zeros((views, h, w, cfg.dit.feature_dim), jnp.float32)
    feedback_latent = jnp.zeros_like(z)
    outs = []
    for i in range(num_steps):
      velocity, feature = run(f"step{i}/denoise", "denoise", self._denoise, state, z, cond,
                              feedback_feature, feedback_latent, jnp.float32(timesteps[i]))
      x0_mv = z - jnp.float32(sigmas[i]) * velocity
      gaussians = run(f"step{i}/decode", "decode", self._decode, state, feature, x0_mv, cond.cams)
      outs.append(StepOutput(velocity, feature, x0_mv, gaussians))
      if i == num_steps - 1:
        break
      rgb = self.render(f"step{i}/render", gaussians, cond.cams)
      x0_3d = run(f"step{i}/reencode", "reencode", self._reencode, state, rgb, encode_keys[i])
      z = run(f"step{i}/renoise", "renoise", self._renoise, x0_3d, jnp.float32(sigmas[i + 1]),
              renoise_keys[i])
      feedback_feature, feedback_latent = feature, x0_3d
    trace_out = jax.tree.map(lambda *xs: jnp.stack(xs), *outs) if trace else None
    return outs[-1].gaussians, trace_out

  def render(self, name: str, gaussians: jax.Array, cams: jax.Array,
             settings: RenderSettings | None = None) -> jax.Array:
    """Renders views with `settings` (default: the sampler's), growing the capacity on overflow.

    A capacity grown for the sampler's own settings is kept for its later steps.
    """
    own = settings is None
    settings = self.settings if own else settings
    while True:
      if settings not in self._renders:
        self._renders[settings] = jax.jit(functools.partial(render, settings=settings))
      rgb, n_isects, max_tile_count = self.timings.run(name, "render", self._renders[settings],
                                                       gaussians, cams)
      n_isects, max_tile_count = int(jnp.max(n_isects)), int(jnp.max(max_tile_count))
      if n_isects <= settings.capacity.max_isects and \
          max_tile_count <= settings.capacity.tile_capacity:
        if own:
          self.settings = settings
        return rgb
      settings = dataclasses.replace(
          settings, capacity=grown_capacity(settings.capacity, n_isects, max_tile_count))
