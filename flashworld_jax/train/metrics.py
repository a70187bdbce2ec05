"""Image and depth metrics in JAX: jittable, per image, batched over any leading axes.

Images are [..., H, W, C] in [−1, 1] (so `data_range` defaults to 2); depth maps are [..., H, W].
Each metric returns one value per image, shape [...]. Inputs are computed in float32 at least
(float64 stays float64).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _float(*arrays):
  dtype = jnp.result_type(jnp.float32, *arrays)
  return [jnp.asarray(a, dtype) for a in arrays]


def _check_images(pred, target, min_size: int = 1) -> None:
  if pred.shape != target.shape:
    raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
  if pred.ndim < 3:
    raise ValueError(f"images must be [..., H, W, C], got shape {pred.shape}")
  if min(pred.shape[-3:-1]) < min_size:
    raise ValueError(f"images of {pred.shape[-3]}×{pred.shape[-2]} are smaller than the "
                     f"{min_size}×{min_size} window")


def psnr(pred, target, data_range: float = 2.0):
  """Peak signal-to-noise ratio in dB per image [..., H, W, C] → [...]; +inf for identical images."""
  _check_images(pred, target)
  pred, target = _float(pred, target)
  mse = jnp.mean(jnp.square(pred - target), axis=(-3, -2, -1))
  return 10.0 * jnp.log10(jnp.square(data_range) / mse)


def _gaussian_window() -> np.ndarray:
  offsets = np.arange(SSIM_WINDOW) - SSIM_WINDOW // 2
  window = np.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
  return window / window.sum()


def _blur(x):
  """Separable Gaussian filter over (H, W) of [..., H, W, C], 'valid' (no padding).

  Written as shifted weighted sums rather than a convolution: exact float32 on every backend
  (no TF32 convolutions on GPU) and batched over any leading axes for free.
  """
  window = _gaussian_window()
  height, width = x.shape[-3] - SSIM_WINDOW + 1, x.shape[-2] - SSIM_WINDOW + 1
  x = sum(w * x[..., k:k + height, :, :] for k, w in enumerate(window))
  return sum(w * x[..., :, k:k + width, :] for k, w in enumerate(window))


def ssim(pred, target, data_range: float = 2.0):
  """Structural similarity (Wang et al. 2004) per image [..., H, W, C] → [...].

  11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, population (co)variances, valid filtering
  (H, W ≥ 11), then the mean over the SSIM map and channels. Matches
  `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=data_range, channel_axis=-1)`.
  """
  _check_images(pred, target, SSIM_WINDOW)
  x, y = _float(pred, target)
  c1 = jnp.square(SSIM_K1 * data_range)
  c2 = jnp.square(SSIM_K2 * data_range)
  mu_x, mu_y = _blur(x), _blur(y)
  var_x = _blur(x * x) - mu_x * mu_x
  var_y = _blur(y * y) - mu_y * mu_y
  cov = _blur(x * y) - mu_x * mu_y
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
              / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)))
  return jnp.mean(ssim_map, axis=(-3, -2, -1))


def abs_rel(pred_depth, gt_depth, valid_mask=None):
  """Mean |pred − gt| / gt over the valid pixels of each depth map [..., H, W] → [...].

  Pixels with gt ≤ 0 never count (synthetic depth is 0 where no surface was hit); `valid_mask`
  (bool [..., H, W]) removes more, and defaults to all. An image without valid pixels gives NaN,
  so batch means should use `jnp.nanmean`.
  """
  if pred_depth.shape != gt_depth.shape:
    raise ValueError(f"pred and gt depth shapes differ: {pred_depth.shape} vs {gt_depth.shape}")
  if valid_mask is not None and valid_mask.shape != gt_depth.shape:
    raise ValueError(f"valid_mask shape {valid_mask.shape} differs from depth {gt_depth.shape}")
  pred, gt = _float(pred_depth, gt_depth)
  valid = gt > 0 if valid_mask is None else (gt > 0) & jnp.asarray(valid_mask, bool)
  # The safe denominator keeps invalid pixels (gt = 0) from putting NaN into the sum.
  error = jnp.where(valid, jnp.abs(pred - gt) / jnp.where(valid, gt, 1.0), 0.0)
  return jnp.sum(error, axis=(-2, -1)) / jnp.sum(valid, axis=(-2, -1))
