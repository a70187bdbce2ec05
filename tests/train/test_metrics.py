"""Image and depth metrics against independent float64 numpy implementations, batched and jitted.

Tolerances (float32 JAX vs float64 numpy; measured errors in brackets): PSNR 1e-6 relative [1e-7];
SSIM 5e-7 absolute, values in [−1, 1] [3e-8]; abs_rel 1e-6 relative.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from flashworld_jax.train import metrics

SSIM_ATOL = 5e-7


def _psnr_np(pred, target, data_range=2.0):
  mse = np.mean((pred.astype(np.float64) - target.astype(np.float64)) ** 2)
  return 10.0 * np.log10(data_range**2 / mse)


def _ssim_np(pred, target, data_range=2.0):
  """Wang et al. 2004 per channel with scipy's Gaussian filter (σ 1.5, radius 5 = 11 taps), cropped
  to the valid region, then averaged over the map and channels."""
  x, y = pred.astype(np.float64), target.astype(np.float64)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  maps = []
  for c in range(x.shape[-1]):
    def blur(a):
      return ndimage.gaussian_filter(a, sigma=1.5, truncate=3.5, mode="constant")[5:-5, 5:-5]
    xc, yc = x[..., c], y[..., c]
    mx, my = blur(xc), blur(yc)
    vx, vy, cov = blur(xc * xc) - mx**2, blur(yc * yc) - my**2, blur(xc * yc) - mx * my
    maps.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
  return np.mean(maps)


def _abs_rel_np(pred, gt, mask):
  total, count = 0.0, 0
  for p, g, m in zip(pred.reshape(-1), gt.reshape(-1).astype(np.float64), mask.reshape(-1)):
    if m and g > 0:
      total += abs(float(p) - g) / g
      count += 1
  return total / count if count else np.nan


def _per_image(fn, *arrays, image_ndim=3):
  lead = arrays[0].shape[:-image_ndim]
  flat = [a.reshape((-1,) + a.shape[len(lead):]) for a in arrays]
  return np.array([fn(*items) for items in zip(*flat)]).reshape(lead)


def _image_pairs(seed, shape):
  """A smooth target in [−1, 1] and a noisy, shifted prediction: SSIM well away from 0 and 1."""
  rng = np.random.default_rng(seed)
  target = ndimage.gaussian_filter(rng.uniform(-1, 1, shape), sigma=(0,) * (len(shape) - 3)
                                   + (2, 2, 0))
  target = np.clip(target * 4, -1, 1)
  pred = np.clip(target + rng.normal(0, 0.2, shape) + 0.1, -1, 1)
  return pred.astype(np.float32), target.astype(np.float32)


def test_psnr_matches_numpy_batched_and_jitted():
  pred, target = _image_pairs(0, (2, 3, 24, 32, 3))
  expected = _per_image(_psnr_np, pred, target)
  got = np.asarray(jax.jit(metrics.psnr)(pred, target))
  assert got.shape == (2, 3) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(metrics.psnr(pred * 127.5, target * 127.5, data_range=255.0), expected,
                             rtol=1e-6)


def test_psnr_known_value_and_identical_images():
  target = np.zeros((8, 8, 3), np.float32)
  np.testing.assert_allclose(metrics.psnr(target + 0.2, target), 20.0, rtol=1e-6)  # 10·log10(4/0.04)
  images = _image_pairs(1, (2, 16, 16, 3))[0]
  assert np.all(np.isposinf(np.asarray(jax.jit(metrics.psnr)(images, images))))


def test_ssim_matches_numpy_batched_and_jitted():
  pred, target = _image_pairs(2, (2, 2, 32, 40, 3))
  expected = _per_image(_ssim_np, pred, target)
  assert 0.2 < expected.min() and expected.max() < 0.9   # a regime where every term matters
  got = np.asarray(jax.jit(metrics.ssim)(pred, target))
  assert got.shape == (2, 2) and got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=0, atol=SSIM_ATOL)


def test_ssim_uncorrelated_images_and_other_data_range():
  rng = np.random.default_rng(3)
  pred, target = (rng.integers(0, 256, (2, 20, 24, 3)).astype(np.float32) for _ in range(2))
  expected = _per_image(lambda p, t: _ssim_np(p, t, 255.0), pred, target)
  got = np.asarray(metrics.ssim(pred, target, data_range=255.0))
  np.testing.assert_allclose(got, expected, rtol=0, atol=SSIM_ATOL)
  assert np.all(np.abs(got) < 0.1)


def test_ssim_identical_symmetric_and_window_size():
  pred, target = _image_pairs(4, (3, 16, 16, 3))
  np.testing.assert_allclose(metrics.ssim(target, target), 1.0, atol=1e-6)
  constant = np.full((11, 11, 3), 0.3, np.float32)
  np.testing.assert_allclose(metrics.ssim(constant, constant), 1.0, atol=1e-6)
  np.testing.assert_allclose(metrics.ssim(pred, target), metrics.ssim(target, pred), atol=1e-7)
  with pytest.raises(ValueError, match="smaller than the 11×11 window"):
    metrics.ssim(np.zeros((10, 16, 3)), np.zeros((10, 16, 3)))
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.ssim(np.zeros((16, 16, 3)), np.zeros((16, 16, 1)))


def test_ssim_matches_skimage():
  structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
  pred, target = _image_pairs(5, (32, 40, 3))
  expected = structural_similarity(pred.astype(np.float64), target.astype(np.float64),
                                   gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                   data_range=2.0, channel_axis=-1)
  np.testing.assert_allclose(metrics.ssim(pred, target), expected, rtol=0, atol=SSIM_ATOL)


def test_abs_rel_matches_loop_with_masks_and_empty_images():
  rng = np.random.default_rng(6)
  gt = rng.uniform(0.5, 5.0, (2, 3, 12, 16)).astype(np.float32)
  gt[rng.uniform(size=gt.shape) < 0.2] = 0.0          # no surface hit
  pred = (gt * rng.uniform(0.8, 1.3, gt.shape)).astype(np.float32)
  mask = rng.uniform(size=gt.shape) < 0.7
  mask[1, 2] = False                                   # an image with no valid pixel
  expected = _per_image(_abs_rel_np, pred, gt, mask, image_ndim=2)
  got = np.asarray(jax.jit(metrics.abs_rel)(pred, gt, mask))
  assert got.shape == (2, 3) and np.isnan(got[1, 2])
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  everywhere = _per_image(_abs_rel_np, pred, gt, np.ones_like(mask), image_ndim=2)
  np.testing.assert_allclose(metrics.abs_rel(pred, gt), everywhere, rtol=1e-6)
  np.testing.assert_array_equal(metrics.abs_rel(jnp.asarray(gt), gt), 0.0)
