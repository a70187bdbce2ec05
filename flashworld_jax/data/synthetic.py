"""Synthetic multi-view scenes: a scene graph, its Gaussians and a trajectory, rendered by our rasterizer.

A scene is a pure function of (split, index): its seed is `index·3 + split id`, so the train,
validation and test splits never share a scene. Each example holds per view RGB (uint8) and z-depth
(float16, 0 where nothing was hit), the 11-number cameras, a caption from the scene graph, the
scene's Gaussians and its graph as JSON.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from flashworld_jax.data import scene_cameras, scene_gaussians, scene_graph
from flashworld_jax.geometry import cameras as cameras_lib
from flashworld_jax.render import RasterCapacity, estimate_capacity, rasterization

SPLITS = ("train", "validation", "test")
GAUSSIAN_BUCKET = 16384          # Gaussians are padded to a multiple of this: few compiled shapes
_HIT_ALPHA = 0.5                 # depth is kept where the accumulated opacity exceeds this


def scene_seed(split: str, index: int) -> int:
  if split not in SPLITS:
    raise ValueError(f"split {split!r}; expected one of {SPLITS}")
  if index < 0:
    raise ValueError(f"scene index must be ≥ 0, got {index}")
  return index * len(SPLITS) + SPLITS.index(split)


def _pad(gaussians: np.ndarray) -> np.ndarray:
  """Pads with zero-opacity rows (culled by the projection) up to a multiple of GAUSSIAN_BUCKET."""
  size = -(-len(gaussians) // GAUSSIAN_BUCKET) * GAUSSIAN_BUCKET
  padded = np.zeros((size, gaussians.shape[1]), np.float32)
  padded[:, 3] = 1.0                               # a valid unit quaternion
  padded[:, 7:10] = 1e-3
  padded[:len(gaussians)] = gaussians
  return padded


def _arguments(gaussians: np.ndarray, cams: np.ndarray, height: int, width: int):
  g = jnp.asarray(gaussians)
  cams = jnp.asarray(cams, jnp.float32)
  return (g[:, 0:3], g[:, 3:7], g[:, 7:10], g[:, 10], g[:, 11:14],
          cameras_lib.world_to_camera_opencv(cams), cameras_lib.intrinsics_matrix(cams, height, width))


@functools.partial(jax.jit, static_argnames=("height", "width", "capacity"))
def _render(means, quats, scales, opacities, colours, viewmats, ks, background, *, height, width,
            capacity):
  backgrounds = jnp.broadcast_to(background, (viewmats.shape[0], 3))
  out, alpha, meta = rasterization(means, quats, scales, opacities, colours, viewmats, ks, width,
                                   height, backgrounds=backgrounds, render_mode="RGB+D",
                                   capacity=capacity, backend="xla")
  rgb = jnp.round(jnp.clip(out[..., :3], 0.0, 1.0) * 255.0).astype(jnp.uint8)
  hit = alpha[..., 0] > _HIT_ALPHA
  depth = jnp.where(hit, out[..., 3] / jnp.maximum(alpha[..., 0], 1e-6), 0.0).astype(jnp.float16)
  return rgb, depth, meta["overflow"], meta["n_isects"], meta["max_tile_count"]


class SceneRenderer:
  """Renders scenes at one resolution with a static, grown-on-overflow rasterizer capacity."""

  def __init__(self, height: int, width: int):
    self.height, self.width = height, width
    self.capacity: RasterCapacity | None = None

  def __call__(self, gaussians: np.ndarray, cams: np.ndarray,
               background) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB [F, H, W, 3] and float16 z-depth [F, H, W] of Gaussians [N, 14] at cams [F, 11]."""
    args = _arguments(_pad(gaussians), cams, self.height, self.width)
    if self.capacity is None:
      # Headroom for denser scenes than the first; an overflow grows it and re-renders.
      self.capacity = estimate_capacity(*args[:4], *args[5:], self.width, self.height, headroom=1.6)
    while True:
      rgb, depth, overflow, n_isects, max_tile = _render(
          *args, jnp.asarray(background, jnp.float32), height=self.height, width=self.width,
          capacity=self.capacity)
      if not bool(overflow):
        return np.asarray(rgb), np.asarray(depth)
      self.capacity = RasterCapacity.from_counts(
          max(int(n_isects), self.capacity.max_isects + 1),
          max(int(max_tile), self.capacity.tile_capacity + 1), headroom=1.25)


def make_scene_example(split: str, index: int, num_frames: int, renderer: SceneRenderer,
                       max_objects: int = scene_graph.MAX_OBJECTS) -> dict:
  """The example of scene `index` of `split`, in the on-disk record layout (`records.SYNTHETIC`)."""
  seed = scene_seed(split, index)
  scene = scene_graph.sample_scene(seed, max_objects)
  gaussians = scene_gaussians.scene_gaussians(scene)
  # The trajectory draws from its own stream so that scene content and cameras vary independently.
  rng = np.random.default_rng([seed, 1])
  kind, cams = scene_cameras.sample_trajectory(rng, scene, num_frames, renderer.height,
                                               renderer.width)
  images, depth = renderer(gaussians, cams, scene.background)
  return {
      "clip_id": f"synthetic/{split}/{index:06d}",
      "images": images,
      "cameras": cams.astype(np.float32),
      "caption": scene_graph.caption(scene),
      "depth": depth,
      "gaussians": gaussians,
      "scene": scene.to_json(),
      "trajectory": kind,
  }
