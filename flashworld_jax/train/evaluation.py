"""Held-out evaluation: generated views of held-out scenes scored against the ground-truth views.

Each held-out scene is one deterministic sample of an evaluation split: `num_input_views` frames at
stride 1 conditioned on view 0 (image) and its caption (text), novel views from the rest of the
clip. Two ways to generate the views: the 3D mode (`sample_3d`: the 4-step sampler, then renders of
its Gaussians at every camera, with the sampler's white background as `generate` uses, and their
expected depth) and the MV mode (`sample_mv`: the guided multi-view sampler, the input views decoded
by the VAE; it has no novel views and no depth).

Scores (`scene_metrics`) are per group of views (`view_groups`): PSNR and SSIM and, where the
records hold z-depth (synthetic data), the abs-rel error of the rendered expected depth. Over the
whole set of scenes (`ViewDistributions`): the patch Fréchet distance of the generated views to the
true ones, an FID-like score of how real they look (`patch_frechet`).
The trainer calls `evaluate_3d`; `python -m flashworld_jax.evaluate` composes the pieces.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from flashworld_jax.data import clips, records, sampling
from flashworld_jax.geometry import rays
from flashworld_jax.models.umt5 import text_embeddings
from flashworld_jax.sampling import mv_sampler, sampler
from flashworld_jax.sampling.conditioning import LATENT_STRIDE
from flashworld_jax.train import metrics as metrics_lib
from flashworld_jax.train import patch_frechet

CONDITION_VIEW = 0
BASELINES = ("condition_image", "mean_colour")   # see `baseline_metrics`


def eval_spec(num_input_views: int, num_novel_views: int, height: int,
              width: int) -> sampling.SampleSpec:
  """Held-out samples: stride 1, always the image and the caption (no conditioning dropout)."""
  return sampling.SampleSpec(
      num_input_views=num_input_views, num_novel_views=num_novel_views, height=height, width=width,
      p_image_condition=1.0, p_drop_text=0.0, p_drop_image=0.0)


def load_scenes(data_dir: str, split: str, spec: sampling.SampleSpec, tokenize,
                num_scenes: int) -> list[dict]:
  """The first `num_scenes` samples of a built split (all of them if it has fewer).

  Each holds images, normalised cameras, the text and its tokens, the clip id and, from records
  that have it, `depth` [V, H, W] float32: z-depth in the normalised frame, 0 where no surface.
  A clip shorter than the spec's views raises `clips.DataError` naming it.
  """
  data = records.open_split(data_dir, split)
  return [_scene(data[i], spec, tokenize, np.random.default_rng(i))
          for i in range(min(num_scenes, len(data)))]


def _scene(record: dict, spec: sampling.SampleSpec, tokenize, rng: np.random.Generator) -> dict:
  clip_id = record["clip_id"].decode("utf-8")
  frames = sampling.choose_frames(len(record["cameras"]), spec, rng, clip_id)
  sample = sampling.sample_at_frames(record, frames, spec, rng)
  sample["condition_index"] = np.int32(CONDITION_VIEW)  # not the random view the sample drew
  if "depth" in record:
    depth = clips.crop_resize_depth(np.asarray(record["depth"])[frames], spec.height, spec.width)
    # The normalisation divided camera translations by s_norm; depths scale with them.
    sample["depth"] = depth / sample["s_norm"]
  return {**sample, **tokenize(sample["text"])}


def scene_key(seed: int, index: int) -> jax.Array:
  """Scene `index`'s sampling key: a scene draws the same noise whichever scenes come before it."""
  return jax.random.key(seed + index)


# ----------------------------------------------------------------------------- generation


def _text_context(model, token_ids, token_mask):
  return text_embeddings(model.text_encoder, token_ids[None], token_mask[None])


@functools.partial(jax.jit, static_argnames="graphdef")
def _conditioning(graphdef, state, image, cams, token_ids, token_mask, key):
  """The conditioning of uint8 `image` [H, W, 3] (view 0 of `cams` [V_in, 11]) and the tokens."""
  model = nnx.merge(graphdef, state)
  context = _text_context(model, token_ids, token_mask)
  h, w = image.shape[0] // LATENT_STRIDE, image.shape[1] // LATENT_STRIDE
  latent = sampler.reencode(model, (image.astype(jnp.float32) / 127.5 - 1.0)[None], key)[0]
  cond_latent = jnp.zeros((cams.shape[0], h, w, latent.shape[-1])).at[CONDITION_VIEW].set(latent)
  raymap = jnp.moveaxis(rays.raymap(cams, h, w), 1, -1)
  return sampler.SceneConditioning(context=context, raymap=raymap, cond_latent=cond_latent,
                                   cams=cams)


def _condition(model, scene: dict, key: jax.Array, num_input_views: int):
  # Only what conditions the sampler goes in: the program does not depend on the novel views.
  graphdef, state = nnx.split(model)
  return _conditioning(graphdef, state, jnp.asarray(scene["images"][CONDITION_VIEW]),
                       jnp.asarray(scene["cameras"][:num_input_views]),
                       jnp.asarray(scene["token_ids"]), jnp.asarray(scene["token_mask"]), key)


def sample_3d(model, scene: dict, key: jax.Array, *, cfg: ml_collections.ConfigDict,
              settings: sampler.RenderSettings, num_input_views: int):
  """The 3D mode's scene (model config `cfg`): (Gaussians [N, 38], settings grown if needed)."""
  cond_key, sample_key = jax.random.split(key)
  cond = _condition(model, scene, cond_key, num_input_views)
  gaussians, settings, _ = sampler.sample_scene(model, cond, sample_key, cfg=cfg, settings=settings)
  return gaussians, settings


_render_views = jax.jit(sampler.render_with_depth, static_argnames="settings")


def render_all(gaussians, cams, settings: sampler.RenderSettings):
  """White-background renders of every camera and their expected depth, the capacity grown on
  overflow: (rgb [V,H,W,3], depth [V,H,W], settings)."""
  cams = jnp.asarray(cams)
  while True:
    rgb, depth, n_isects, max_tile = _render_views(gaussians, cams, settings=settings)
    n_isects, max_tile = int(jnp.max(n_isects)), int(jnp.max(max_tile))
    if n_isects <= settings.capacity.max_isects and max_tile <= settings.capacity.tile_capacity:
      return rgb, depth, settings
    settings = dataclasses.replace(settings, capacity=sampler.grown_capacity(settings.capacity,
                                                                             n_isects, max_tile))


@functools.partial(jax.jit, static_argnames="graphdef")
def _unconditional_context(graphdef, state, token_ids, token_mask):
  return _text_context(nnx.merge(graphdef, state), token_ids, token_mask)


def unconditional_context(model, tokens: dict) -> jax.Array:
  """Text context [1, L, D] of the empty prompt's `tokens` (token_ids, token_mask): guidance's."""
  graphdef, state = nnx.split(model)
  return _unconditional_context(graphdef, state, jnp.asarray(tokens["token_ids"]),
                                jnp.asarray(tokens["token_mask"]))


@functools.partial(jax.jit, static_argnames="graphdef")
def _decode(graphdef, state, latents):
  vae = nnx.merge(graphdef, state).vae
  return vae.decode(vae.unnormalize_latent(latents))


def sample_mv(model, scene: dict, uncond_context: jax.Array, key: jax.Array, *,
              cfg: ml_collections.ConfigDict, num_input_views: int, num_steps: int,
              guidance_scale: float) -> jax.Array:
  """The MV mode's input views (model config `cfg`), decoded by the VAE: rgb [V_in, H, W, 3]."""
  cond_key, sample_key = jax.random.split(key)
  cond = _condition(model, scene, cond_key, num_input_views)
  latents = mv_sampler.sample_multiview(model, cond, uncond_context, sample_key, cfg=cfg,
                                        num_steps=num_steps, guidance_scale=guidance_scale)
  graphdef, state = nnx.split(model)
  return _decode(graphdef, state, latents)


@functools.partial(jax.jit, static_argnames="graphdef")
def _reconstruct(graphdef, state, rgb):
  vae = nnx.merge(graphdef, state).vae
  return vae.decode(vae.encode(rgb)[0])


def reconstruct(model, scene: dict, num_views: int) -> jax.Array:
  """The scene's first `num_views` true views encoded (posterior mean) and decoded by the VAE:
  rgb [V, H, W, 3], what a perfect latent of each view would decode to."""
  graphdef, state = nnx.split(model)
  return _reconstruct(graphdef, state, jnp.asarray(to_unit(scene["images"][:num_views])))


# ----------------------------------------------------------------------------- scores


def to_unit(images) -> np.ndarray:
  """uint8 images → float32 in [−1, 1], the models' range."""
  return np.asarray(images, np.float32) / 127.5 - 1.0


def to_uint8(images) -> np.ndarray:
  return np.asarray(np.round((np.clip(np.asarray(images), -1, 1) + 1) * 127.5), np.uint8)


def view_groups(num_views: int, num_input_views: int) -> dict[str, np.ndarray]:
  """Views scored together, empty groups left out: the conditioning view, all input views, the
  input views other than the conditioning one, the novel views, and every view but the conditioning
  one (`other`: the demo model's acceptance group)."""
  views = np.arange(num_views)
  inputs = views[:num_input_views]
  groups = {"condition_view": np.array([CONDITION_VIEW]), "input": inputs,
            "input_other": inputs[inputs != CONDITION_VIEW],
            "novel": views[num_input_views:], "other": views[views != CONDITION_VIEW]}
  return {name: views for name, views in groups.items() if len(views)}


def depth_abs_rel(depth, gt_depth, views) -> float:
  """abs-rel of depth maps [V, H, W] pooled over every pixel of `views` with a surface (gt > 0);
  NaN if none has one. The maps stay whole (one compiled program for every group)."""
  in_group = np.zeros(np.shape(gt_depth), bool)
  in_group[views] = True
  # As one image, the mean runs over the group's pixels together.
  flat = lambda d: np.reshape(np.asarray(d), (-1, np.shape(d)[-1]))  # noqa: E731
  return float(_abs_rel(flat(depth), flat(gt_depth), flat(in_group)))


_abs_rel = jax.jit(metrics_lib.abs_rel)


@jax.jit
def _image_scores(pred, target):
  return metrics_lib.psnr(pred, target), metrics_lib.ssim(pred, target)


def scene_metrics(rgb, images, num_input_views: int, depth=None, gt_depth=None) -> dict[str, float]:
  """Scores of generated views rgb [G, H, W, 3] in [−1, 1], the scene's first G views.

  `images` are the scene's uint8 views [V ≥ G, H, W, 3]. Per group of `view_groups`: the mean over
  its views of PSNR (`psnr_<group>`) and SSIM (`ssim_<group>`), and with both depths ([G, H, W] and
  [V, H, W]) `depth_abs_rel_<group>`.
  """
  rgb = np.asarray(rgb, np.float32)
  psnr, ssim = (np.asarray(x) for x in _image_scores(rgb, to_unit(images[:len(rgb)])))
  scores = {}
  for name, views in view_groups(len(rgb), num_input_views).items():
    scores[f"psnr_{name}"] = float(psnr[views].mean())
    scores[f"ssim_{name}"] = float(ssim[views].mean())
    if depth is not None and gt_depth is not None:
      scores[f"depth_abs_rel_{name}"] = depth_abs_rel(depth, gt_depth[:len(rgb)], views)
  return scores


def baseline_metrics(images, num_views: int, num_input_views: int) -> dict[str, float]:
  """PSNR of two trivial predictions of the scene's first `num_views` views, per group that lacks
  the conditioning view: the conditioning image shown at every view (`condition_image_psnr_<group>`)
  and the group's mean colour, the best constant image in MSE (`mean_colour_psnr_<group>`)."""
  target = to_unit(images[:num_views])
  scores = {}
  for name, views in view_groups(num_views, num_input_views).items():
    if CONDITION_VIEW in views:
      continue  # the conditioning image is the answer there
    group = target[views]
    constant = lambda image: np.broadcast_to(image, group.shape)  # noqa: E731
    condition = metrics_lib.psnr(constant(target[CONDITION_VIEW]), group)
    scores[f"condition_image_psnr_{name}"] = float(np.mean(condition))
    mean_colour = metrics_lib.psnr(constant(group.mean(axis=(0, 1, 2))), group)
    scores[f"mean_colour_psnr_{name}"] = float(np.mean(mean_colour))
  return scores


class ViewDistributions:
  """The generated and the true views of every group without the conditioning view, pooled over
  scenes as patch statistics: `scores()` gives their patch Fréchet distance (`patch_frechet`, the
  FID-like score) per group, `patch_fd_<group>`, and per pyramid level, `patch_fd_level<i>_<group>`."""

  def __init__(self, num_input_views: int):
    self.num_input_views = num_input_views
    self._sets: dict[str, tuple[patch_frechet.PatchStatistics, ...]] = {}

  def add(self, rgb, images) -> None:
    """A scene's generated views rgb [G, H, W, 3] in [−1, 1] and its uint8 views [V ≥ G, H, W, 3]."""
    rgb = np.asarray(rgb, np.float32)
    for name, views in view_groups(len(rgb), self.num_input_views).items():
      if CONDITION_VIEW in views:
        continue  # the conditioning image is given, not generated
      if name not in self._sets:
        bands = patch_frechet.bands_for(*rgb.shape[1:3])
        self._sets[name] = (patch_frechet.PatchStatistics(bands), patch_frechet.PatchStatistics(bands))
      generated, real = self._sets[name]
      generated.add(rgb[views])
      real.add(to_unit(images[views]))

  def scores(self) -> dict[str, float]:
    """NaN for a group with fewer than two views over all scenes: no covariance to fit."""
    scores = {}
    for name, (generated, real) in self._sets.items():
      if generated.count < 2:
        levels = [f"level{i}_" for i in range(generated.num_bands + 1)]
        scores.update({f"patch_fd_{level}{name}": math.nan for level in [""] + levels})
        continue
      scores.update({f"{key}_{name}": value
                     for key, value in patch_frechet.score(generated, real).items()})
    return scores


def mean_metrics(per_scene: list[dict[str, float]]) -> dict[str, float]:
  return {k: float(np.mean([s[k] for s in per_scene])) for k in per_scene[0]}


def strip(images, rgb, views=None) -> np.ndarray:
  """uint8 image: the ground-truth `views` (default: every generated one) in a row above the
  generated ones."""
  views = np.arange(len(rgb)) if views is None else np.asarray(views)
  row = lambda x: np.concatenate(list(x), axis=1)  # noqa: E731
  return np.concatenate([row(np.asarray(images)[views]), row(to_uint8(np.asarray(rgb)[views]))], 0)


# ----------------------------------------------------------------------------- trainer's entry


def evaluate_3d(model, scenes: list[dict], cfg: ml_collections.ConfigDict,
                settings: sampler.RenderSettings, seed: int = 0):
  """The 3D mode on `scenes` for a training config `cfg`: (mean metrics and the set's patch Fréchet
  distances, [ground truth over render uint8 strip per scene], settings grown if needed)."""
  per_scene, strips = [], []
  distributions = ViewDistributions(cfg.data.num_input_views)
  for i, scene in enumerate(scenes):
    gaussians, settings = sample_3d(model, scene, scene_key(seed, i), cfg=cfg.model,
                                    settings=settings, num_input_views=cfg.data.num_input_views)
    rgb, depth, settings = render_all(gaussians, scene["cameras"], settings)
    per_scene.append(scene_metrics(rgb, scene["images"], cfg.data.num_input_views, depth,
                                   scene.get("depth")))
    strips.append(strip(scene["images"], rgb))
    distributions.add(rgb, scene["images"])
  return {**mean_metrics(per_scene), **distributions.scores()}, strips, settings
