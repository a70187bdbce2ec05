"""From a validated request to the sampler's inputs: cameras, raymap, text and image latents.

REF order (formats.md §1): decode → centre-crop/resize with the intrinsics change → 11-vectors →
resample to n → normalise into the first camera's frame. The text gets the "[Static] " prefix here.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from flashworld_jax.geometry import cameras as cameras_lib
from flashworld_jax.geometry import rays
from flashworld_jax.io import prepare
from flashworld_jax.io.request import SceneRequest
from flashworld_jax.models.flashworld import FlashWorld
from flashworld_jax.models.umt5 import text_embeddings
from flashworld_jax.sampling.sampler import SceneConditioning
from flashworld_jax.sampling.timing import Timings

LATENT_STRIDE = 16  # VAE spatial compression


class SceneFrame(NamedTuple):
  """What is needed to undo the normalisation on export (flashworld.md §11)."""
  cams: np.ndarray       # [n, 11] normalised cameras of the generation views
  ref_c2w: np.ndarray    # [4, 4] first camera's camera-to-world
  s_norm: float          # translation scale used by the normalisation


def _text_context(state, ids, mask, *, graphdef):
  model = nnx.merge(graphdef, state)
  return text_embeddings(model.text_encoder, ids, mask)


def _image_latent(state, image, key, *, graphdef):
  vae = nnx.merge(graphdef, state).vae
  mean, logvar = vae.encode(image[None])
  return vae.normalize_latent(vae.sample_posterior(mean, logvar, key))[0]


def condition_on_request(model: FlashWorld, tokenizer, request: SceneRequest,
                         cfg: ml_collections.ConfigDict, key: jax.Array, timings: Timings
                         ) -> tuple[SceneConditioning, SceneFrame]:
  """Prepares cameras, raymap, text context and condition latent for one request (timed)."""
  image, cams = prepare.prepare_cameras(request)
  cams_n, ref_c2w, s_norm = cameras_lib.normalize_cameras(jnp.asarray(cams, jnp.float32))
  h, w = request.height // LATENT_STRIDE, request.width // LATENT_STRIDE
  raymap = jnp.moveaxis(rays.raymap(cams_n, h, w), 1, -1)

  graphdef, state = nnx.split(model)
  prompt = cfg.text.prefix + request.text_prompt
  ids, mask = tokenizer.encode_batch([prompt], cfg.text.max_length)
  text_fn = jax.jit(lambda s, i, m: _text_context(s, i, m, graphdef=graphdef))
  context = timings.run("text_encoding", "text_encoder", text_fn, state,
                        jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32))

  cond_latent = jnp.zeros((request.num_views, h, w, cfg.dit.latent_channels), jnp.float32)
  if image is not None:
    image_fn = jax.jit(lambda s, x, k: _image_latent(s, x, k, graphdef=graphdef))
    latent = timings.run("image_encoding", "image_encoder", image_fn, state,
                         jnp.asarray(image, jnp.float32), key)
    cond_latent = cond_latent.at[request.image_index].set(latent)
  cond = SceneConditioning(context=context, raymap=raymap, cond_latent=cond_latent, cams=cams_n)
  frame = SceneFrame(np.asarray(cams_n), np.asarray(ref_c2w, np.float64), float(s_norm))
  return cond, frame
