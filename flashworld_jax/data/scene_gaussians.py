"""Scene graph → 3D Gaussians: every visible surface is covered by flat, textured, shaded splats.

Each surface is sampled on a grid (or a Fibonacci / ring pattern) at a spacing fine enough for the
target renders; a splat is a disc of standard deviation 0.6·spacing in its tangent plane and 0.08·spacing
across it, with the texture's colour at its (u, v) and a baked Lambertian term so that shapes read in
3D without view-dependent colour. Output rows: [x, y, z, q_w, q_x, q_y, q_z, s_x, s_y, s_z, opacity,
r, g, b] (`GAUSSIAN_FIELDS`), float32.
"""
from __future__ import annotations

import jax
import numpy as np

from flashworld_jax.data import scene_graph
from flashworld_jax.data.scene_graph import Scene, SceneObject, Texture
from flashworld_jax.geometry.quaternions import rotmat_to_quat

GAUSSIAN_FIELDS = 14
FLOOR_SPACING = 0.06          # inside the camera ring
FAR_FLOOR_SPACING = 0.15      # beyond it, where the floor is seen at grazing angles
WALL_SPACING = 0.09
OBJECT_SPACING = 0.035
_SPLAT_SIGMA, _SPLAT_THICKNESS = 0.6, 0.08
_LIGHT = np.array([-0.45, 0.8, 0.4]) / np.linalg.norm([-0.45, 0.8, 0.4])
_AMBIENT = 0.55
_NOISE_LATTICE = 64
_QUAT_BUCKET = 4096


class _Surface:
  """Sample points of one surface: positions, unit normals and tangents [M, 3], (u, v) [M, 2]."""

  def __init__(self, points, normals, tangents, uv, spacing):
    self.points = np.asarray(points, np.float64)
    self.normals = _unit(np.asarray(normals, np.float64))
    tangents = np.asarray(tangents, np.float64)
    # Gram-Schmidt so the splat frame is orthonormal even where the parametrisation degenerates.
    tangents = tangents - np.sum(tangents * self.normals, -1, keepdims=True) * self.normals
    fallback = np.cross(self.normals, [0.0, 0.0, 1.0])
    degenerate = np.linalg.norm(tangents, axis=-1) < 1e-6
    tangents[degenerate] = fallback[degenerate]
    self.tangents = _unit(tangents)
    self.uv = np.asarray(uv, np.float64)
    self.spacing = np.broadcast_to(np.asarray(spacing, np.float64), (len(self.points),))


def _unit(v: np.ndarray) -> np.ndarray:
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _grid(extent_u: float, extent_v: float, spacing: float) -> tuple[np.ndarray, np.ndarray]:
  """Cell centres of a grid covering [0, extent_u] × [0, extent_v]."""
  nu, nv = max(1, int(np.ceil(extent_u / spacing))), max(1, int(np.ceil(extent_v / spacing)))
  u, v = np.meshgrid((np.arange(nu) + 0.5) * extent_u / nu, (np.arange(nv) + 0.5) * extent_v / nv,
                     indexing="ij")
  return u.ravel(), v.ravel()


def _texture_colour(texture: Texture, uv: np.ndarray) -> np.ndarray:
  """Colours [M, 3] of a procedural texture at (u, v) in world units."""
  cos, sin = np.cos(texture.angle), np.sin(texture.angle)
  along = (uv[:, 0] * cos + uv[:, 1] * sin) / texture.period
  if texture.kind == "plain":
    mix = np.zeros(len(uv))
  elif texture.kind == "checker":
    mix = (np.floor(uv[:, 0] / texture.period) + np.floor(uv[:, 1] / texture.period)) % 2
  elif texture.kind == "stripes":
    mix = np.floor(along) % 2
  elif texture.kind == "gradient":
    mix = np.abs((along / 4.0) % 1.0 * 2.0 - 1.0)       # a slow triangle wave, period 4·period
  elif texture.kind == "noise":
    mix = _value_noise(texture.seed, uv / texture.period)
  else:
    raise ValueError(f"unknown texture kind {texture.kind!r}; expected one of {scene_graph.TEXTURES}")
  colour, second = np.asarray(texture.colour), np.asarray(texture.second_colour)
  return colour + mix[:, None] * (second - colour)


def _value_noise(seed: int, xy: np.ndarray) -> np.ndarray:
  """Two octaves of smooth value noise in [0, 1] on a periodic lattice."""
  lattice = np.random.default_rng(seed).uniform(size=(_NOISE_LATTICE, _NOISE_LATTICE))
  total = np.zeros(len(xy))
  for octave, weight in ((1.0, 0.65), (2.0, 0.35)):
    p = xy * octave
    cell = np.floor(p).astype(np.int64)
    f = p - cell
    f = f * f * (3.0 - 2.0 * f)
    i0, j0 = cell[:, 0] % _NOISE_LATTICE, cell[:, 1] % _NOISE_LATTICE
    i1, j1 = (i0 + 1) % _NOISE_LATTICE, (j0 + 1) % _NOISE_LATTICE
    top = lattice[i0, j0] * (1 - f[:, 0]) + lattice[i1, j0] * f[:, 0]
    bottom = lattice[i0, j1] * (1 - f[:, 0]) + lattice[i1, j1] * f[:, 0]
    total += weight * (top * (1 - f[:, 1]) + bottom * f[:, 1])
  return total


def _floor(scene: Scene) -> _Surface:
  parts = []
  for spacing, r_min, r_max in ((FLOOR_SPACING, 0.0, scene_graph.LAYOUT_RADIUS + 3.2),
                                (FAR_FLOOR_SPACING, scene_graph.LAYOUT_RADIUS + 3.2,
                                 scene_graph.FLOOR_RADIUS)):
    u, v = _grid(2 * r_max, 2 * r_max, spacing)
    x, z = u - r_max, v - r_max
    keep = (np.hypot(x, z) >= r_min) & (np.hypot(x, z) < r_max)
    parts.append((np.stack([x[keep], np.zeros(keep.sum()), z[keep]], -1),
                  np.full(keep.sum(), spacing)))
  points = np.concatenate([p for p, _ in parts])
  return _Surface(points, np.tile([0.0, 1.0, 0.0], (len(points), 1)),
                  np.tile([1.0, 0.0, 0.0], (len(points), 1)), points[:, [0, 2]],
                  np.concatenate([s for _, s in parts]))


def _wall(side: str) -> _Surface:
  d = scene_graph.WALL_DISTANCE
  u, v = _grid(2 * d, scene_graph.WALL_HEIGHT, WALL_SPACING)
  across = u - d
  if side == "back":
    points, normal, tangent = np.stack([across, v, np.full_like(u, -d)], -1), [0, 0, 1], [1, 0, 0]
  else:
    sign = -1.0 if side == "left" else 1.0
    points = np.stack([np.full_like(u, sign * d), v, across], -1)
    normal, tangent = [-sign, 0, 0], [0, 0, 1]
  m = len(points)
  return _Surface(points, np.tile(normal, (m, 1)), np.tile(tangent, (m, 1)),
                  np.stack([across, v], -1), WALL_SPACING)


def _box(dims) -> _Surface:
  a = np.asarray(dims, np.float64)
  s = OBJECT_SPACING
  parts = []
  # (normal axis, sign, the two in-face axes); the bottom face rests on the floor and is skipped.
  for axis, sign in ((0, 1), (0, -1), (1, 1), (2, 1), (2, -1)):
    i, j = [k for k in range(3) if k != axis]
    u, v = _grid(2 * a[i], 2 * a[j], s)
    points = np.zeros((len(u), 3))
    points[:, i], points[:, j], points[:, axis] = u - a[i], v - a[j], sign * a[axis]
    points[:, 1] += a[1]
    normal = np.zeros(3)
    normal[axis] = sign
    tangent = np.zeros(3)
    tangent[i] = 1.0
    parts.append(_Surface(points, np.tile(normal, (len(u), 1)), np.tile(tangent, (len(u), 1)),
                          np.stack([u, v], -1), s))
  return _concat(parts)


def _sphere(radius: float) -> _Surface:
  count = int(np.ceil(4 * np.pi * radius ** 2 / OBJECT_SPACING ** 2))
  k = np.arange(count) + 0.5
  y = 1.0 - 2.0 * k / count
  ring = np.sqrt(1.0 - y * y)
  phi = np.pi * (1.0 + 5 ** 0.5) * k
  normals = np.stack([ring * np.cos(phi), y, ring * np.sin(phi)], -1)
  points = normals * radius + [0.0, radius, 0.0]
  tangents = np.stack([-np.sin(phi), np.zeros(count), np.cos(phi)], -1)
  uv = np.stack([radius * np.arctan2(normals[:, 2], normals[:, 0]), points[:, 1]], -1)
  return _Surface(points, normals, tangents, uv, OBJECT_SPACING)


def _disc(radius: float, height: float) -> _Surface:
  count = max(1, int(np.ceil(np.pi * radius ** 2 / OBJECT_SPACING ** 2)))
  k = np.arange(count) + 0.5
  r, phi = radius * np.sqrt(k / count), np.pi * (3.0 - 5 ** 0.5) * k
  points = np.stack([r * np.cos(phi), np.full(count, height), r * np.sin(phi)], -1)
  return _Surface(points, np.tile([0.0, 1.0, 0.0], (count, 1)), np.tile([1.0, 0.0, 0.0], (count, 1)),
                  points[:, [0, 2]], OBJECT_SPACING)


def _lathe(radius_at, height_at, slope: float, length: float) -> _Surface:
  """A surface of revolution about +y, rows along its profile of `length` (t in [0, 1]).

  radius_at(t), height_at(t) give the profile; `slope` is dr/dy's sign-carrying factor used for the
  normal (0 for a cylinder).
  """
  rows = max(2, int(np.ceil(length / OBJECT_SPACING)))
  points, normals, tangents, uv = [], [], [], []
  for t in (np.arange(rows) + 0.5) / rows:
    r, y = radius_at(t), height_at(t)
    count = max(3, int(np.ceil(2 * np.pi * r / OBJECT_SPACING)))
    phi = 2 * np.pi * (np.arange(count) + 0.5 * (rows % 2)) / count
    c, s = np.cos(phi), np.sin(phi)
    points.append(np.stack([r * c, np.full(count, y), r * s], -1))
    normals.append(np.stack([c, np.full(count, slope), s], -1))
    tangents.append(np.stack([-s, np.zeros(count), c], -1))
    uv.append(np.stack([r * phi, np.full(count, t * length)], -1))
  return _Surface(np.concatenate(points), np.concatenate(normals), np.concatenate(tangents),
                  np.concatenate(uv), OBJECT_SPACING)


def _torus(major: float, minor: float) -> _Surface:
  nu = int(np.ceil(2 * np.pi * (major + minor) / OBJECT_SPACING))
  nv = int(np.ceil(2 * np.pi * minor / OBJECT_SPACING))
  u, v = np.meshgrid(2 * np.pi * (np.arange(nu) + 0.5) / nu, 2 * np.pi * (np.arange(nv) + 0.5) / nv,
                     indexing="ij")
  u, v = u.ravel(), v.ravel()
  normals = np.stack([np.cos(v) * np.cos(u), np.sin(v), np.cos(v) * np.sin(u)], -1)
  centre_line = np.stack([major * np.cos(u), np.full_like(u, minor), major * np.sin(u)], -1)
  tangents = np.stack([-np.sin(u), np.zeros_like(u), np.cos(u)], -1)
  return _Surface(centre_line + minor * normals, normals, tangents,
                  np.stack([major * u, minor * v], -1), OBJECT_SPACING)


def _object_surface(obj: SceneObject) -> _Surface:
  radius, height, minor = obj.dims
  if obj.shape == "box":
    local = _box(obj.dims)
  elif obj.shape == "sphere":
    local = _sphere(radius)
  elif obj.shape == "cylinder":
    local = _concat([_lathe(lambda t: radius, lambda t: t * height, 0.0, height),
                     _disc(radius, height)])
  elif obj.shape == "cone":
    slant = float(np.hypot(radius, height))
    local = _lathe(lambda t: radius * (1 - t), lambda t: t * height, radius / height, slant)
  elif obj.shape == "torus":
    local = _torus(radius, minor)
  else:
    raise ValueError(f"unknown shape {obj.shape!r}; expected one of {scene_graph.SHAPES}")
  c, s = np.cos(obj.yaw), np.sin(obj.yaw)
  yaw = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
  offset = np.array([obj.position[0], 0.0, obj.position[1]])
  return _Surface(local.points @ yaw.T + offset, local.normals @ yaw.T, local.tangents @ yaw.T,
                  local.uv, local.spacing)


def _concat(parts: list[_Surface]) -> _Surface:
  return _Surface(*(np.concatenate([getattr(p, f) for p in parts])
                    for f in ("points", "normals", "tangents", "uv", "spacing")))


def _shade(colour: np.ndarray, normals: np.ndarray) -> np.ndarray:
  return colour * (_AMBIENT + (1 - _AMBIENT) * np.maximum(normals @ _LIGHT, 0.0))[:, None]


def _contact_shadow(scene: Scene, points: np.ndarray) -> np.ndarray:
  """A soft darkening of the floor under each object, so objects visibly stand on it."""
  factor = np.ones(len(points))
  for obj in scene.objects:
    d = np.hypot(points[:, 0] - obj.position[0], points[:, 2] - obj.position[1])
    factor *= 1.0 - 0.4 * np.exp(-(d / (1.1 * obj.footprint_radius)) ** 2)
  return factor


_frames_to_quats = jax.jit(rotmat_to_quat)


def _quaternions(frames: np.ndarray) -> np.ndarray:
  """Quaternions [M, 4] of rotation matrices [M, 3, 3], through one compiled shape per bucket of rows
  (eager jnp ops would compile again for every scene's row count)."""
  size = -(-len(frames) // _QUAT_BUCKET) * _QUAT_BUCKET
  padded = np.tile(np.eye(3, dtype=np.float32), (size, 1, 1))
  padded[:len(frames)] = frames
  return np.asarray(_frames_to_quats(padded), np.float64)[:len(frames)]


def _rows(surface: _Surface, colour: np.ndarray) -> np.ndarray:
  bitangents = np.cross(surface.normals, surface.tangents)
  quats = _quaternions(np.stack([surface.tangents, bitangents, surface.normals], axis=-1))
  scales = surface.spacing[:, None] * [_SPLAT_SIGMA, _SPLAT_SIGMA, _SPLAT_THICKNESS]
  opacity = np.full((len(colour), 1), 0.98)
  return np.concatenate([surface.points, quats, scales, opacity, np.clip(colour, 0, 1)], -1)


def scene_gaussians(scene: Scene) -> np.ndarray:
  """All Gaussians of a scene, float32 [N, 14] (`GAUSSIAN_FIELDS` columns, see the module doc)."""
  floor = _floor(scene)
  floor_colour = _shade(_texture_colour(scene.floor, floor.uv), floor.normals)
  blocks = [_rows(floor, floor_colour * _contact_shadow(scene, floor.points)[:, None])]
  for side, _, texture in scene.walls:
    wall = _wall(side)
    blocks.append(_rows(wall, _shade(_texture_colour(texture, wall.uv), wall.normals)))
  for obj in scene.objects:
    surface = _object_surface(obj)
    blocks.append(_rows(surface, _shade(_texture_colour(obj.texture, surface.uv), surface.normals)))
  return np.concatenate(blocks).astype(np.float32)
