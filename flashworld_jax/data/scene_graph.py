"""Procedural scene graphs for the synthetic multi-view set: what is where, and how it is described.

A scene is a textured ground plane, up to two back walls and 1–6 objects resting on the floor, placed
without interpenetration. Everything is drawn from one `numpy.random.Generator`, so a scene is a pure
function of its seed. World frame: y up, the floor is y = 0, the "front" from which captions describe
left and right is the +z side looking towards −z.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np

SHAPES = ("box", "sphere", "cylinder", "cone", "torus")
TEXTURES = ("plain", "checker", "stripes", "noise", "gradient")
SIZE_CLASSES = {"small": 0.32, "medium": 0.48, "large": 0.68}   # characteristic half-size, units
MAX_OBJECTS = 6
# Objects live in a disc of this radius; cameras stay outside it and walls beyond the camera paths.
LAYOUT_RADIUS = 1.7
WALL_DISTANCE = 6.5
WALL_HEIGHT = 3.5
FLOOR_RADIUS = 8.0

# Named colours (sRGB in [0, 1]); object colours are drawn from these so the caption can name them.
OBJECT_COLOURS = {
    "red": (0.85, 0.12, 0.10), "orange": (0.95, 0.50, 0.08), "yellow": (0.95, 0.85, 0.15),
    "green": (0.15, 0.65, 0.20), "blue": (0.12, 0.30, 0.85), "purple": (0.50, 0.18, 0.65),
    "pink": (0.95, 0.50, 0.70), "cyan": (0.10, 0.75, 0.80), "white": (0.93, 0.93, 0.93),
    "black": (0.08, 0.08, 0.08), "brown": (0.45, 0.27, 0.12),
}
SURFACE_COLOURS = {
    "grey": (0.55, 0.55, 0.55), "beige": (0.82, 0.74, 0.60), "brown": (0.42, 0.30, 0.20),
    "white": (0.90, 0.90, 0.88), "dark green": (0.18, 0.35, 0.20), "blue": (0.35, 0.45, 0.70),
    "terracotta": (0.72, 0.38, 0.25), "slate": (0.30, 0.33, 0.38),
}
TEXTURE_WORDS = {"plain": "", "checker": "checkered", "stripes": "striped", "noise": "mottled",
                 "gradient": "shaded"}


@dataclasses.dataclass(frozen=True)
class Texture:
  """A procedural texture on a surface's (u, v) coordinates in world units."""
  kind: str                      # one of TEXTURES
  colour: tuple[float, float, float]
  second_colour: tuple[float, float, float]
  period: float                  # checker cell / stripe / noise cell size, or gradient length
  angle: float                   # stripe and gradient direction, radians
  seed: int                      # value-noise lattice


@dataclasses.dataclass(frozen=True)
class SceneObject:
  shape: str                     # one of SHAPES
  size_class: str                # one of SIZE_CLASSES
  colour_name: str
  texture: Texture
  position: tuple[float, float]  # (x, z) of the footprint centre on the floor
  dims: tuple[float, float, float]  # box: half extents (x, y, z); others: (radius, height, minor)
  yaw: float                     # rotation about +y, radians

  @property
  def footprint_radius(self) -> float:
    if self.shape == "box":
      return float(np.hypot(self.dims[0], self.dims[2]))
    if self.shape == "torus":
      return self.dims[0] + self.dims[2]
    return self.dims[0]


@dataclasses.dataclass(frozen=True)
class Scene:
  seed: int
  floor_colour_name: str
  floor: Texture
  walls: tuple[tuple[str, str, Texture], ...]   # (side "back" | "left" | "right", colour name, texture)
  objects: tuple[SceneObject, ...]
  background: tuple[float, float, float]        # sky colour behind everything

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True)

  @property
  def centre(self) -> np.ndarray:
    """The point cameras look at: the objects' mean footprint at a third of their mean height."""
    xz = np.mean([o.position for o in self.objects], axis=0)
    height = np.mean([object_height(o) for o in self.objects])
    return np.array([xz[0], height / 3.0, xz[1]])


def object_height(obj: SceneObject) -> float:
  if obj.shape == "box":
    return 2.0 * obj.dims[1]
  if obj.shape == "sphere":
    return 2.0 * obj.dims[0]
  if obj.shape == "torus":
    return 2.0 * obj.dims[2]
  return obj.dims[1]


def _texture(rng: np.random.Generator, colour, kinds, period_range) -> Texture:
  kind = str(rng.choice(kinds))
  colour = np.clip(np.asarray(colour) + rng.normal(0.0, 0.03, 3), 0.0, 1.0)
  # The second colour is a clearly lighter or darker shade, so patterns stay visible and the colour
  # name still describes the surface; light colours only darken, dark ones only lighten.
  factor = rng.choice([0.45, 1.6])
  if colour.max() > 0.7 or colour.max() < 0.25:
    factor = 0.5 if colour.max() > 0.7 else 2.5
  second = np.clip(colour * factor + (0.15 if factor > 1 else 0.0), 0.0, 1.0)
  return Texture(kind=kind, colour=tuple(float(c) for c in colour),
                 second_colour=tuple(float(c) for c in second),
                 period=float(rng.uniform(*period_range)), angle=float(rng.uniform(0.0, np.pi)),
                 seed=int(rng.integers(2**31)))


def _object_dims(rng: np.random.Generator, shape: str, half_size: float) -> tuple[float, float, float]:
  jitter = lambda: half_size * rng.uniform(0.85, 1.15)  # noqa: E731
  if shape == "box":
    return (jitter(), jitter(), jitter())
  if shape == "sphere":
    radius = jitter()
    return (radius, 2.0 * radius, 0.0)
  if shape == "torus":
    major = jitter()
    return (major, 0.0, major * rng.uniform(0.3, 0.45))
  return (jitter(), 2.0 * jitter() * rng.uniform(0.9, 1.4), 0.0)   # cylinder, cone


def _place(rng: np.random.Generator, radius: float, placed: list[SceneObject],
           attempts: int = 200) -> tuple[float, float] | None:
  """A footprint centre in the layout disc at least `radius` + margin from every placed object."""
  for _ in range(attempts):
    r = LAYOUT_RADIUS * np.sqrt(rng.uniform())
    phi = rng.uniform(0.0, 2.0 * np.pi)
    xz = (r * np.cos(phi), r * np.sin(phi))
    if all(np.hypot(xz[0] - o.position[0], xz[1] - o.position[1]) > radius + o.footprint_radius + 0.08
           for o in placed):
      return (float(xz[0]), float(xz[1]))
  return None


def sample_scene(seed: int, max_objects: int = MAX_OBJECTS) -> Scene:
  """The scene of `seed`: 1–max_objects objects, floor, walls and sky, all random but reproducible."""
  if not 1 <= max_objects <= MAX_OBJECTS:
    raise ValueError(f"max_objects must be in [1, {MAX_OBJECTS}], got {max_objects}")
  rng = np.random.default_rng(seed)
  floor_name = str(rng.choice(list(SURFACE_COLOURS)))
  floor = _texture(rng, SURFACE_COLOURS[floor_name], TEXTURES, (0.35, 0.9))
  walls = []
  for side in ("back", "left", "right"):
    if rng.uniform() < (0.5 if side == "back" else 0.2):
      name = str(rng.choice([n for n in SURFACE_COLOURS if n != floor_name]))
      walls.append((side, name, _texture(rng, SURFACE_COLOURS[name], TEXTURES, (0.4, 1.2))))
  objects: list[SceneObject] = []
  for _ in range(int(rng.integers(1, max_objects + 1))):
    shape = str(rng.choice(SHAPES))
    size_class = str(rng.choice(list(SIZE_CLASSES)))
    dims = _object_dims(rng, shape, SIZE_CLASSES[size_class])
    colour_name = str(rng.choice([n for n in OBJECT_COLOURS if n not in
                                  {o.colour_name for o in objects}]))
    texture = _texture(rng, OBJECT_COLOURS[colour_name], ("plain", "plain", "stripes", "checker"),
                       (0.12, 0.3))
    candidate = SceneObject(shape, size_class, colour_name, texture, (0.0, 0.0), dims,
                            float(rng.uniform(0.0, 2.0 * np.pi)))
    position = _place(rng, candidate.footprint_radius, objects)
    if position is None:       # the disc is full: fewer objects than drawn, never an overlap
      break
    objects.append(dataclasses.replace(candidate, position=position))
  background = tuple(float(c) for c in rng.uniform(0.6, 0.95, 3))
  return Scene(seed=seed, floor_colour_name=floor_name, floor=floor, walls=tuple(walls),
               objects=tuple(objects), background=background)


def _object_phrase(obj: SceneObject) -> str:
  words = [obj.size_class, obj.colour_name, TEXTURE_WORDS[obj.texture.kind], obj.shape]
  return "a " + " ".join(w for w in words if w)


def _surface_phrase(colour_name: str, texture: Texture, noun: str) -> str:
  words = [colour_name, TEXTURE_WORDS[texture.kind], noun]
  article = "an" if words[0][0] in "aeiou" else "a"
  return f"{article} " + " ".join(w for w in words if w)


def caption(scene: Scene) -> str:
  """A sentence from the scene graph, seen from the front (+z): objects left to right, or "in front of"
  / "behind" for a pair further apart in depth than across, then the floor and the walls.

  E.g. "a large red box left of a small blue sphere on a grey checkered floor".
  """
  objects = sorted(scene.objects, key=lambda o: o.position[0])
  phrases = [_object_phrase(o) for o in objects]
  if len(objects) == 1:
    text = phrases[0]
  elif len(objects) == 2:
    (ax, az), (bx, bz) = objects[0].position, objects[1].position
    if abs(az - bz) > abs(ax - bx):
      front, back = (0, 1) if az > bz else (1, 0)
      text = f"{phrases[front]} in front of {phrases[back]}"
    else:
      text = f"{phrases[0]} left of {phrases[1]}"
  else:
    text = ", ".join(phrases[:-1]) + f" and {phrases[-1]}, from left to right,"
  text += " on " + _surface_phrase(scene.floor_colour_name, scene.floor, "floor")
  if scene.walls:
    sides = " and ".join(_surface_phrase(name, tex, f"{side} wall")
                         for side, name, tex in scene.walls)
    text += f" with {sides}"
  return text
