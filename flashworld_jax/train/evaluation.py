"""Held-out evaluation of the 3D mode: the 4-step sampler on held-out scenes, renders against the
ground-truth views (PSNR, SSIM at the input views and at the novel views), a few frames kept.

Each held-out scene is one deterministic sample of the evaluation split: the first `num_input_views`
frames at stride 1 conditioned on view 0 (image) and its caption (text), novel views from the rest
of the clip. Renders use the sampler's white background, as `generate` does.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from flashworld_jax.data import records, sampling
from flashworld_jax.geometry import rays
from flashworld_jax.models.umt5 import text_embeddings
from flashworld_jax.sampling import sampler
from flashworld_jax.sampling.conditioning import LATENT_STRIDE
from flashworld_jax.train import metrics as metrics_lib

CONDITION_VIEW = 0


def eval_spec(cfg: ml_collections.ConfigDict) -> sampling.SampleSpec:
  return sampling.SampleSpec(
      num_input_views=cfg.data.num_input_views, num_novel_views=cfg.data.num_novel_views,
      height=cfg.data.height, width=cfg.data.width, p_image_condition=1.0, p_drop_text=0.0,
      p_drop_image=0.0)


def load_scenes(cfg: ml_collections.ConfigDict, tokenize, num_scenes: int) -> list[dict]:
  """The first `num_scenes` held-out samples (image at view 0, caption, inputs then novel views)."""
  data = records.open_split(cfg.data.eval_dir, cfg.data.eval_split)
  spec = eval_spec(cfg)
  scenes = []
  for i in range(min(num_scenes, len(data))):
    sample = sampling.multiview_sample(data[i], dataclasses.replace(spec, min_frame_stride=1,
                                                                    max_frame_stride=1),
                                       np.random.default_rng(i))
    sample["condition_index"] = np.int32(CONDITION_VIEW)
    scenes.append({**sample, **tokenize(sample["text"])})
  return scenes


@functools.partial(jax.jit, static_argnames=("graphdef", "num_input_views"))
def _conditioning(graphdef, state, scene, key, *, num_input_views):
  model = nnx.merge(graphdef, state)
  images = scene["images"].astype(jnp.float32) / 127.5 - 1.0
  context = text_embeddings(model.text_encoder, scene["token_ids"][None], scene["token_mask"][None])
  cams = scene["cameras"][:num_input_views]
  h, w = images.shape[1] // LATENT_STRIDE, images.shape[2] // LATENT_STRIDE
  latent = sampler.reencode(model, images[CONDITION_VIEW][None], key)[0]
  cond_latent = jnp.zeros((num_input_views, h, w, latent.shape[-1])).at[CONDITION_VIEW].set(latent)
  raymap = jnp.moveaxis(rays.raymap(cams, h, w), 1, -1)
  return sampler.SceneConditioning(context=context, raymap=raymap, cond_latent=cond_latent,
                                   cams=cams)


def render_all(gaussians, cams, settings: sampler.RenderSettings):
  """White-background renders of every camera, the capacity grown on overflow; (rgb, settings)."""
  while True:
    rgb, n_isects, max_tile = jax.jit(functools.partial(sampler.render, settings=settings))(
        gaussians, cams)
    n_isects, max_tile = int(jnp.max(n_isects)), int(jnp.max(max_tile))
    if n_isects <= settings.capacity.max_isects and max_tile <= settings.capacity.tile_capacity:
      return rgb, settings
    settings = dataclasses.replace(settings, capacity=sampler.grown_capacity(settings.capacity,
                                                                             n_isects, max_tile))


def evaluate_3d(model, scenes: list[dict], cfg: ml_collections.ConfigDict,
                settings: sampler.RenderSettings, seed: int = 0):
  """(mean metrics, [(ground truth, render) uint8 strips per scene], settings grown if needed)."""
  graphdef, state = nnx.split(model)
  v_in = cfg.data.num_input_views
  per_scene, strips = [], []
  for i, scene in enumerate(scenes):
    arrays = {k: jnp.asarray(v) for k, v in scene.items() if k not in ("text", "clip_id")}
    cond_key, sample_key = jax.random.split(jax.random.key(seed + i))
    cond = _conditioning(graphdef, state, arrays, cond_key, num_input_views=v_in)
    gaussians, settings, _ = sampler.sample_scene(model, cond, sample_key, cfg=cfg.model,
                                                  settings=settings)
    rgb, settings = render_all(gaussians, arrays["cameras"], settings)
    target = arrays["images"].astype(jnp.float32) / 127.5 - 1.0
    psnr = np.asarray(metrics_lib.psnr(rgb, target))
    ssim = np.asarray(metrics_lib.ssim(rgb, target))
    per_scene.append({"psnr_input": psnr[:v_in].mean(), "psnr_novel": psnr[v_in:].mean(),
                      "ssim_input": ssim[:v_in].mean(), "ssim_novel": ssim[v_in:].mean(),
                      "psnr_condition_view": psnr[CONDITION_VIEW]})
    to_uint8 = lambda x: np.asarray(jnp.round((jnp.clip(x, -1, 1) + 1) * 127.5), np.uint8)  # noqa: E731
    strips.append(np.concatenate([np.concatenate(list(to_uint8(target)), 1),
                                  np.concatenate(list(to_uint8(rgb)), 1)], 0))
  mean = {k: float(np.mean([s[k] for s in per_scene])) for k in per_scene[0]}
  return mean, strips, settings
