"""Rays and ray maps vs a float64 per-pixel numpy derivation (spec §7.3, §7.4, §5.2 step 1)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flashworld_jax.geometry import rays as R
from np_geometry import random_cameras, rays as np_rays

camera_rays = jax.jit(R.camera_rays, static_argnums=(1, 2))
raymap = jax.jit(R.raymap, static_argnums=(1, 2))
H, W = 5, 7
TOL = 2e-6  # float32, unit vectors


@pytest.fixture
def cams():
  return random_cameras(np.random.default_rng(1), 3)


def test_rays_match_numpy(cams):
  origins, dirs = camera_rays(np.float32(cams), H, W)
  assert origins.shape == dirs.shape == (3, H, W, 3)
  for i, cam in enumerate(cams):
    o, d = np_rays(cam, H, W)
    np.testing.assert_allclose(origins[i], o, atol=TOL)
    np.testing.assert_allclose(dirs[i], d, atol=TOL)


def test_rays_with_uv_offsets_match_numpy(cams):
  offsets = np.random.default_rng(2).normal(scale=0.3, size=(3, H, W, 2))
  _, dirs = camera_rays(np.float32(cams), H, W, np.float32(offsets))
  for i, cam in enumerate(cams):
    np.testing.assert_allclose(dirs[i], np_rays(cam, H, W, offsets[i])[1], atol=TOL)


def test_centre_pixel_of_identity_camera_looks_down_minus_z():
  cam = np.float32([1, 0, 0, 0, 0, 0, 0, 0.8, 1.1, 0.5, 0.5])
  _, dirs = camera_rays(cam, H, W)
  np.testing.assert_allclose(dirs[H // 2, W // 2], [0, 0, -1], atol=1e-7)
  # y is up: the top row looks upward, the left column leftward.
  assert dirs[0, W // 2, 1] > 0 and dirs[H // 2, 0, 0] < 0


def test_raymap_channels(cams):
  out = np.asarray(raymap(np.float32(cams), H, W), np.float64)
  assert out.shape == (3, 6, H, W)
  dirs, closest = out[:, :3], out[:, 3:]
  np.testing.assert_allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=TOL)
  np.testing.assert_allclose(np.sum(dirs * closest, axis=1), 0.0, atol=1e-5)
  for i, cam in enumerate(cams):
    o, d = np_rays(cam, H, W)
    expected = o - np.sum(o * d, -1, keepdims=True) * d
    np.testing.assert_allclose(np.moveaxis(closest[i], 0, -1), expected, atol=1e-5)


def test_uv_offset_gradient_matches_finite_differences(cams):
  offsets = np.random.default_rng(3).normal(scale=0.1, size=(H, W, 2))
  weights = np.random.default_rng(4).normal(size=(H, W, 3))

  def loss(uv):
    return jnp.sum(R.camera_rays(np.float32(cams[0]), H, W, uv)[1] * weights)

  grad = np.asarray(jax.jit(jax.grad(loss))(np.float32(offsets)), np.float64)
  eps = 1e-6
  numeric = np.zeros_like(offsets)
  for index in np.ndindex(*offsets.shape):
    plus, minus = offsets.copy(), offsets.copy()
    plus[index] += eps
    minus[index] -= eps
    numeric[index] = (np.sum(np_rays(cams[0], H, W, plus)[1] * weights)
                      - np.sum(np_rays(cams[0], H, W, minus)[1] * weights)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-5)


def test_vmap_and_broadcasting(cams):
  single = jax.jit(jax.vmap(lambda c: R.raymap(c, H, W)))(np.float32(cams))
  np.testing.assert_allclose(single, raymap(np.float32(cams), H, W), atol=1e-6)
  # Cameras [V, 1] against offsets [V, P, h, w, 2] (the Gaussian head's P points per pixel) give
  # the same rays as repeating each camera P times.
  offsets = np.random.default_rng(5).normal(scale=0.1, size=(3, 2, H, W, 2)).astype(np.float32)
  origins, dirs = camera_rays(np.float32(cams[:, None]), H, W, offsets)
  assert origins.shape == dirs.shape == (3, 2, H, W, 3)
  _, repeated = camera_rays(np.float32(np.repeat(cams, 2, 0)), H, W, offsets.reshape(6, H, W, 2))
  np.testing.assert_allclose(np.reshape(dirs, (6, H, W, 3)), repeated, atol=1e-6)


def test_bad_arguments():
  cam = np.float32([1, 0, 0, 0, 0, 0, 0, 1, 1, 0.5, 0.5])
  with pytest.raises(ValueError, match=r"uv_offset must have shape \[\.\.\., 5, 7, 2\]"):
    R.camera_rays(cam, H, W, np.zeros((H, W)))
  with pytest.raises(ValueError, match="height and width must be positive"):
    R.camera_rays(cam, 0, W)
