"""Synthetic scenes: determinism, disjoint splits, no interpenetration, captions that match the graph,
cameras that look at the scene, and renders whose pixels and depths agree with the scene."""
import json

import numpy as np
import pytest

from flashworld_jax.data import scene_cameras, scene_gaussians, scene_graph, synthetic
from flashworld_jax.geometry import cameras as cameras_lib


def test_scene_is_a_function_of_its_seed():
  assert scene_graph.sample_scene(17).to_json() == scene_graph.sample_scene(17).to_json()
  assert scene_graph.sample_scene(17).to_json() != scene_graph.sample_scene(18).to_json()
  np.testing.assert_array_equal(scene_gaussians.scene_gaussians(scene_graph.sample_scene(5)),
                                scene_gaussians.scene_gaussians(scene_graph.sample_scene(5)))


def test_splits_are_disjoint_by_construction():
  seeds = {split: {synthetic.scene_seed(split, i) for i in range(1000)} for split in synthetic.SPLITS}
  assert not seeds["train"] & seeds["validation"]
  assert not seeds["train"] & seeds["test"]
  assert not seeds["validation"] & seeds["test"]
  with pytest.raises(ValueError, match="split 'val'"):
    synthetic.scene_seed("val", 0)


@pytest.mark.parametrize("seed", range(40))
def test_objects_do_not_interpenetrate(seed):
  scene = scene_graph.sample_scene(seed)
  assert 1 <= len(scene.objects) <= scene_graph.MAX_OBJECTS
  for i, a in enumerate(scene.objects):
    for b in scene.objects[i + 1:]:
      gap = np.hypot(a.position[0] - b.position[0], a.position[1] - b.position[1])
      assert gap > a.footprint_radius + b.footprint_radius


def test_every_shape_and_texture_occurs():
  scenes = [scene_graph.sample_scene(s) for s in range(60)]
  shapes = {o.shape for sc in scenes for o in sc.objects}
  textures = {sc.floor.kind for sc in scenes} | {t.kind for sc in scenes for _, _, t in sc.walls}
  assert shapes == set(scene_graph.SHAPES)
  assert textures == set(scene_graph.TEXTURES)


def test_caption_names_every_object_left_to_right():
  for seed in range(30):
    scene = scene_graph.sample_scene(seed)
    text = scene_graph.caption(scene)
    assert f"{scene.floor_colour_name}" in text and "floor" in text
    positions = []
    for obj in scene.objects:
      phrase = " ".join(w for w in (obj.size_class, obj.colour_name,
                                    scene_graph.TEXTURE_WORDS[obj.texture.kind], obj.shape) if w)
      assert phrase in text, (phrase, text)
      positions.append((text.index(phrase), obj.position))
    if len(scene.objects) >= 3:
      xs = [p[1][0] for p in sorted(positions)]
      assert xs == sorted(xs), text


def test_two_object_relation():
  for seed in range(200):
    scene = scene_graph.sample_scene(seed)
    if len(scene.objects) != 2:
      continue
    text = scene_graph.caption(scene)
    a, b = scene.objects
    if "left of" in text:
      left = text.index(a.shape) < text.index(b.shape)
      assert (a.position[0] < b.position[0]) == left or a.shape == b.shape
    else:
      assert "in front of" in text


@pytest.mark.parametrize("kind", scene_cameras.TRAJECTORY_KINDS)
def test_trajectories_look_at_the_scene_from_outside_it(kind):
  scene = scene_graph.sample_scene(3)
  _, cams = scene_cameras.sample_trajectory(np.random.default_rng(0), scene, 16, 64, 96, kind)
  c2w = np.asarray(cameras_lib.cameras_to_c2w(cams))
  view_dirs = -c2w[:, :3, 2]
  to_centre = scene.centre - c2w[:, :3, 3]
  cos = np.sum(view_dirs * to_centre, -1) / np.linalg.norm(to_centre, axis=-1)
  assert np.all(cos > 0.9), cos          # the scene centre is within ~25° of the optical axis
  for obj in scene.objects:
    d = np.hypot(c2w[:, 0, 3] - obj.position[0], c2w[:, 2, 3] - obj.position[1])
    assert np.all(d > obj.footprint_radius)
  assert np.all(c2w[:, 1, 3] > 0.1)       # above the floor
  assert np.all(np.abs(cams[:, 9:11] - 0.5) <= 0.02 + 1e-9)


@pytest.fixture(scope="module")
def example():
  return synthetic.make_scene_example("validation", 4, 6, synthetic.SceneRenderer(48, 64))


def test_example_fields(example):
  assert example["images"].shape == (6, 48, 64, 3) and example["images"].dtype == np.uint8
  assert example["depth"].shape == (6, 48, 64) and example["depth"].dtype == np.float16
  assert example["cameras"].shape == (6, 11)
  assert example["gaussians"].shape[1] == scene_gaussians.GAUSSIAN_FIELDS
  scene = json.loads(example["scene"])
  assert scene["seed"] == synthetic.scene_seed("validation", 4)
  assert example["trajectory"] in scene_cameras.TRAJECTORY_KINDS
  assert example["caption"] == scene_graph.caption(scene_graph.sample_scene(scene["seed"]))


def test_depth_lies_on_the_scene_surfaces(example):
  """Back-projected along its pixel's ray, a stored depth lands on a splat of the scene: the distance to
  the nearest Gaussian centre is within the sampling spacing for nearly every hit pixel."""
  cams = example["cameras"].astype(np.float64)
  c2w = np.asarray(cameras_lib.cameras_to_c2w(cams))
  depth = example["depth"].astype(np.float64)
  h, w = depth.shape[1:]
  v, u = np.mgrid[0:h, 0:w] + 0.5
  points = []
  for k in range(len(cams)):
    fx, fy, cx, cy = cams[k, 7] * w, cams[k, 8] * h, cams[k, 9] * w, cams[k, 10] * h
    rays = np.stack([(u - cx) / fx, -(v - cy) / fy, -np.ones_like(u)], -1)   # camera z = −1
    hit = depth[k] > 0
    points.append(c2w[k, :3, 3] + depth[k][hit][:, None] * rays[hit] @ c2w[k, :3, :3].T)
  points = np.concatenate(points)
  assert len(points) > 0.5 * depth.size
  points = points[np.random.default_rng(0).choice(len(points), 400, replace=False)]
  centres = example["gaussians"][:, :3].astype(np.float64)
  nearest = np.array([np.min(np.sum((centres - p) ** 2, -1)) for p in points]) ** 0.5
  assert np.quantile(nearest, 0.5) < scene_gaussians.FLOOR_SPACING
  assert np.quantile(nearest, 0.9) < scene_gaussians.FAR_FLOOR_SPACING


def test_images_show_objects_in_their_colours():
  """The most object-coloured pixels of a one-object scene's first view sit around the projection of
  the object's centre."""
  for seed in range(60):
    scene = scene_graph.sample_scene(seed, max_objects=1)
    if scene.objects[0].colour_name in ("red", "blue", "green") and scene.objects[0].texture.kind == "plain":
      break
  renderer = synthetic.SceneRenderer(48, 64)
  gaussians = scene_gaussians.scene_gaussians(scene)
  _, cams = scene_cameras.sample_trajectory(np.random.default_rng(1), scene, 2, 48, 64, "arc")
  images, _ = renderer(gaussians, cams, scene.background)
  obj = scene.objects[0]
  target = np.asarray(scene_graph.OBJECT_COLOURS[obj.colour_name])
  image = images[0].astype(np.float64) / 255
  chroma = image - image.mean(-1, keepdims=True)
  score = chroma @ (target - target.mean())
  rows, cols = np.nonzero(score > 0.6 * score.max())
  centre = np.array([obj.position[0], scene_graph.object_height(obj) / 2, obj.position[1]])
  viewmat = np.asarray(cameras_lib.world_to_camera_opencv(cams[0]))
  p = viewmat[:3, :3] @ centre + viewmat[:3, 3]
  u, v = cams[0, 7] * 64 * p[0] / p[2] + cams[0, 9] * 64, cams[0, 8] * 48 * p[1] / p[2] + cams[0, 10] * 48
  assert abs(cols.mean() + 0.5 - u) < 8 and abs(rows.mean() + 0.5 - v) < 8
