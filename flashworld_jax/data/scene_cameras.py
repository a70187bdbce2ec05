"""Camera trajectories around a synthetic scene: the predefined kinds plus random smooth paths.

Every camera looks at the scene (its centre, or for "pan" a point sweeping across it), stays outside
the objects' footprint and inside the walls, and the clip shares one jittered pinhole. Cameras are
11-vectors (spec §7.1) in float64: OpenGL camera axes, intrinsics normalised by width and height.
Azimuth 0 puts the camera on the +z side looking towards −z: the "front" the captions describe.
"""
from __future__ import annotations

import numpy as np

from flashworld_jax.data import camera_conventions, scene_graph
from flashworld_jax.data.scene_graph import Scene

TRAJECTORY_KINDS = ("orbit", "arc", "dolly", "pan", "random")
_WALL_MARGIN = 0.4


def look_at_c2w(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Camera-to-world [F, 4, 4] with OpenGL axes (looking along −z, y up) from eyes and targets [F, 3]."""
  back = eye - target
  back /= np.linalg.norm(back, axis=-1, keepdims=True)
  right = np.cross([0.0, 1.0, 0.0], back)
  right /= np.linalg.norm(right, axis=-1, keepdims=True)
  up = np.cross(back, right)
  c2w = np.tile(np.eye(4), (len(eye), 1, 1))
  c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, back, eye
  return c2w


def _catmull_rom(knots: np.ndarray, count: int) -> np.ndarray:
  """A C¹ curve through `knots` [K, D] (K ≥ 2) sampled at `count` evenly spaced parameters."""
  padded = np.concatenate([2 * knots[:1] - knots[1:2], knots, 2 * knots[-1:] - knots[-2:-1]])
  s = np.linspace(0.0, len(knots) - 1, count)
  i = np.minimum(s.astype(int), len(knots) - 2)
  t = (s - i)[:, None]
  p0, p1, p2, p3 = padded[i], padded[i + 1], padded[i + 2], padded[i + 3]
  return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3)


def _on_sphere(centre: np.ndarray, azimuth, elevation, distance) -> np.ndarray:
  """Eyes [F, 3] at horizontal `distance` from `centre`, raised by the elevation angle."""
  azimuth, elevation, distance = np.broadcast_arrays(azimuth, elevation, distance)
  return centre + np.stack([distance * np.sin(azimuth), distance * np.tan(elevation),
                            distance * np.cos(azimuth)], axis=-1)


def _inside_walls(scene: Scene, eye: np.ndarray) -> np.ndarray:
  limit = scene_graph.WALL_DISTANCE - _WALL_MARGIN
  eye = eye.copy()
  sides = {side for side, _, _ in scene.walls}
  if "back" in sides:
    eye[:, 2] = np.maximum(eye[:, 2], -limit)
  if "left" in sides:
    eye[:, 0] = np.maximum(eye[:, 0], -limit)
  if "right" in sides:
    eye[:, 0] = np.minimum(eye[:, 0], limit)
  return eye


def scene_extent(scene: Scene) -> float:
  """Largest horizontal distance from the scene centre to any object's footprint edge."""
  centre = scene.centre
  return max(np.hypot(o.position[0] - centre[0], o.position[1] - centre[2]) + o.footprint_radius
             for o in scene.objects)


def sample_trajectory(rng: np.random.Generator, scene: Scene, num_frames: int, height: int,
                      width: int, kind: str | None = None) -> tuple[str, np.ndarray]:
  """(kind, cameras float64 [num_frames, 11]) of a trajectory around `scene`; `kind` None draws one."""
  if kind is None:
    kind = str(rng.choice(TRAJECTORY_KINDS))
  if kind not in TRAJECTORY_KINDS:
    raise ValueError(f"trajectory kind {kind!r}; expected one of {TRAJECTORY_KINDS}")
  centre, extent = scene.centre, scene_extent(scene)
  # Horizontal distance: outside every footprint by a margin, close enough to fill the frame.
  distance = extent + rng.uniform(0.9, 2.2)
  azimuth0 = rng.uniform(-np.pi / 6, np.pi / 6)
  elevation = rng.uniform(np.radians(14), np.radians(35))
  steps = np.linspace(0.0, 1.0, num_frames)
  target = np.broadcast_to(centre, (num_frames, 3))
  if kind == "orbit":
    azimuth = azimuth0 + 2 * np.pi * np.arange(num_frames) / num_frames
    eye = _on_sphere(centre, azimuth, elevation, distance)
  elif kind == "arc":
    sweep = rng.uniform(np.radians(60), np.radians(140)) * rng.choice([-1.0, 1.0])
    eye = _on_sphere(centre, azimuth0 + sweep * (steps - 0.5), elevation, distance)
  elif kind == "dolly":
    eye = _on_sphere(centre, azimuth0, elevation, distance + rng.uniform(0.8, 1.6) * (1 - steps))
  elif kind == "pan":
    eye = np.broadcast_to(_on_sphere(centre, azimuth0, elevation, distance + 0.6), (num_frames, 3))
    across = np.array([np.cos(azimuth0), 0.0, -np.sin(azimuth0)])
    half_width = extent * rng.uniform(0.5, 0.9)
    target = centre + np.outer((2 * steps - 1) * half_width, across)
  else:  # random: a smooth path through four random (azimuth, elevation, distance) knots
    knots = np.cumsum(np.stack([rng.uniform(-0.7, 0.7, 4), rng.uniform(-0.12, 0.12, 4),
                                rng.uniform(-0.4, 0.4, 4)], -1), axis=0)
    knots += [azimuth0, elevation, distance]
    knots[:, 1] = np.clip(knots[:, 1], np.radians(10), np.radians(45))
    knots[:, 2] = np.maximum(knots[:, 2], extent + 0.8)
    path = _catmull_rom(knots, num_frames)
    eye = _on_sphere(centre, path[:, 0], path[:, 1], path[:, 2])
    target = centre + _catmull_rom(rng.uniform(-0.2, 0.2, (3, 3)) * [1, 0.5, 1], num_frames)
  eye = _inside_walls(scene, np.asarray(eye, np.float64))
  fov = np.radians(rng.uniform(42.0, 58.0))
  focal_y = 0.5 / np.tan(fov / 2)
  intrinsics = np.array([focal_y * height / width * rng.uniform(0.98, 1.02), focal_y,
                         0.5 + rng.uniform(-0.02, 0.02), 0.5 + rng.uniform(-0.02, 0.02)])
  c2w = look_at_c2w(eye, np.asarray(target, np.float64))
  return kind, camera_conventions.opengl_c2w_to_cameras(
      c2w, np.broadcast_to(intrinsics, (num_frames, 4)), f"synthetic scene {scene.seed}",
      [f"view {i}" for i in range(num_frames)])
