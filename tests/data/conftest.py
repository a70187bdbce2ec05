"""A small multi-view scene as a Clip with in-memory frames, for the layout round-trip tests."""
import numpy as np
import pytest

from flashworld_jax.data.clips import Clip

HEIGHT, WIDTH = 24, 32


def rotation_to_quaternion(rotation: np.ndarray) -> np.ndarray:
  """Unit (w, x, y, z), w ≥ 0, of a rotation matrix (Shepperd's method, not the package's)."""
  m = rotation
  trace = np.trace(m)
  candidates = np.array([trace, m[0, 0], m[1, 1], m[2, 2]])
  k = int(np.argmax(candidates))
  if k == 0:
    s = 2 * np.sqrt(1 + trace)
    q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
  else:
    i, j, l = k - 1, k % 3, (k + 1) % 3
    s = 2 * np.sqrt(1 + m[i, i] - m[j, j] - m[l, l])
    q = np.zeros(4)
    q[0] = (m[l, j] - m[j, l]) / s
    q[1 + i], q[1 + j], q[1 + l] = s / 4, (m[j, i] + m[i, j]) / s, (m[l, i] + m[i, l]) / s
  q = np.asarray(q, np.float64)
  return q if q[0] >= 0 else -q


def look_at_c2w(position, target, roll) -> np.ndarray:
  """OpenGL camera-to-world (x right, y up, looking −z) at `position` facing `target`, rolled by
  `roll` radians about the view direction."""
  forward = (target - position) / np.linalg.norm(target - position)
  right = np.cross(forward, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right)
  up = np.cross(right, forward)
  right, up = (np.cos(roll) * right + np.sin(roll) * up, -np.sin(roll) * right + np.cos(roll) * up)
  c2w = np.eye(4)
  c2w[:3, :3] = np.stack([right, up, -forward], axis=1)
  c2w[:3, 3] = position
  return c2w


def make_scene_clip(num_frames: int = 6, seed: int = 0) -> Clip:
  rng = np.random.default_rng(seed)
  cameras = []
  for _ in range(num_frames):
    c2w = look_at_c2w(rng.normal(size=3) * 3, rng.normal(size=3) * 0.5, rng.uniform(-0.6, 0.6))
    intrinsics = [rng.uniform(0.6, 1.2), rng.uniform(0.8, 1.6), rng.uniform(0.4, 0.6),
                  rng.uniform(0.4, 0.6)]
    cameras.append(np.concatenate([rotation_to_quaternion(c2w[:3, :3]), c2w[:3, 3], intrinsics]))
  frames = rng.integers(0, 256, size=(num_frames, HEIGHT, WIDTH, 3), dtype=np.uint8)
  return Clip("scene", frames, np.stack(cameras), pose_file="<memory>")


@pytest.fixture(scope="session")
def synthetic_clip() -> Clip:
  """A synthetic scene of ours (float64 cameras of its trajectory, frames rendered by our rasterizer)."""
  from flashworld_jax.data import scene_cameras, scene_gaussians, scene_graph, synthetic
  scene = scene_graph.sample_scene(synthetic.scene_seed("test", 0), max_objects=3)
  _, cameras = scene_cameras.sample_trajectory(np.random.default_rng(0), scene, 6, HEIGHT, WIDTH,
                                               "random")
  frames, _ = synthetic.SceneRenderer(HEIGHT, WIDTH)(scene_gaussians.scene_gaussians(scene),
                                                     cameras, scene.background)
  return Clip("scene", frames, cameras, pose_file="<memory>", caption=scene_graph.caption(scene))


@pytest.fixture(params=["synthetic", "rolled"])
def scene_clip(request, synthetic_clip) -> Clip:
  """The scene every layout test writes and reads back: a synthetic scene of ours, and random
  look-at cameras with rolls and per-frame intrinsics (conventions a synthetic path never shows)."""
  return synthetic_clip if request.param == "synthetic" else make_scene_clip()
