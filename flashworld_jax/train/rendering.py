"""Rendering Gaussians at training views: per scene and view, rematerialised in the backward pass.

One view at a time keeps the rasterizer's buffers to one image, and `jax.checkpoint` recomputes
each view's render in the backward pass instead of storing its tile lists (spec §13.2). On a mesh
each device loops over its own scenes (`sharding.map_local_batch`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flashworld_jax import sharding
from flashworld_jax.models.gaussian_render import render_gaussians
from flashworld_jax.sampling.sampler import RenderSettings


def render_views(gaussians: jax.Array, cams: jax.Array, backgrounds: jax.Array,
                 settings: RenderSettings) -> tuple[jax.Array, jax.Array]:
  """gaussians [B, N, 38], cams [B, V, 11], backgrounds [B, V, 3] in [0, 1] →
  (rgb [B, V, H, W, 3] in [−1, 1], needed [2]: the largest intersection and tile counts seen, which
  exceed `settings.capacity` exactly when some image is invalid)."""

  @jax.checkpoint
  def one_view(scene_gaussians, cam, background):
    rgb, _, _, meta = render_gaussians(
        scene_gaussians, cam[None], settings.height, settings.width, background=background,
        near_plane=settings.near_plane, far_plane=settings.far_plane, capacity=settings.capacity,
        backend=settings.backend)
    return rgb[0], jnp.stack([meta["n_isects"], meta["max_tile_count"]])

  def one_scene(args):
    scene_gaussians, scene_cams, scene_backgrounds = args
    return jax.lax.map(lambda a: one_view(scene_gaussians, *a), (scene_cams, scene_backgrounds))

  def local_scenes(_, scenes):
    return jax.lax.map(one_scene, scenes)

  rgb, needed = sharding.map_local_batch(local_scenes, (gaussians, cams, backgrounds))
  return rgb, jnp.max(needed.reshape(-1, 2), axis=0)


def exceeds(needed: jax.Array, settings: RenderSettings) -> jax.Array:
  """True where the counts of `render_views` overflow the capacity."""
  return (needed[0] > settings.capacity.max_isects) | (needed[1] > settings.capacity.tile_capacity)
