"""Patch Fréchet distance: an FID-like score of a set of generated views against real ones.

PSNR scores a view against the one true view, so it rewards the blurred average of what could be
there; a generator that samples (what distillation trains: DMD matches distributions, not means)
pays for every sharp detail placed differently from the truth. FID asks the other question (are the
generated images distributed like real ones?) with Inception features, which nothing here may
download. The same question is put to local image statistics, as the sliced Wasserstein distance of
Karras et al. (2018) does: descriptors are the 4×4×3 neighbourhoods of each level of a Laplacian
pyramid (fine detail at level 0, coarser structure above, the low-pass colours last); per level, the
Fréchet distance between the Gaussian fits of the generated and the real descriptors, divided by
the real descriptors' total variance so that levels count alike; the score is the mean over levels.
0 for identical sets; lower is closer. It does not check that a view shows the right content (a real
image copied to every view scores well): read it next to PSNR.

Everything is float64 numpy: a set-level statistic, computed once per evaluation.
"""
from __future__ import annotations

import numpy as np

NUM_BANDS = 3     # Laplacian levels; the low-pass image after them is one more level
PATCH = 4         # descriptor: a PATCH × PATCH neighbourhood of every channel
STRIDE = 2        # between descriptors (overlapping: more samples for the covariance)


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
  """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½) of two Gaussians, by symmetric
  eigendecompositions (Σa^½ Σb Σa^½ is symmetric positive semi-definite, so its square root's trace
  is the sum of its eigenvalues' roots)."""
  mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
  cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
  values, vectors = np.linalg.eigh(cov_a)
  root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
  product = root_a @ cov_b @ root_a
  cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((product + product.T) / 2), 0.0, None)))
  distance = np.sum(np.square(mean_a - mean_b)) + np.trace(cov_a) + np.trace(cov_b) - 2 * cross
  return max(float(distance), 0.0)  # ≥ 0; rounding leaves about −1e-7 for equal Gaussians


def bands_for(height: int, width: int, patch: int = PATCH) -> int:
  """The most Laplacian bands (up to NUM_BANDS) images of this size make: both sides divisible by
  2^bands and the low-pass image at least a patch wide."""
  bands = 0
  while (bands < NUM_BANDS and height % 2 ** (bands + 1) == 0 and width % 2 ** (bands + 1) == 0
         and min(height, width) // 2 ** (bands + 1) >= patch):
    bands += 1
  return bands


def _halve(images: np.ndarray) -> np.ndarray:
  """2×2 box average of [N, H, W, C] (H, W even)."""
  n, h, w, c = images.shape
  return images.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def pyramid(images: np.ndarray, num_bands: int = NUM_BANDS) -> list[np.ndarray]:
  """The Laplacian bands of images [N, H, W, C] (each level minus its 2× box-downsampled copy
  upsampled back), finest first, then the low-pass image: num_bands + 1 arrays."""
  levels = []
  current = np.asarray(images, np.float64)
  for _ in range(num_bands):
    coarse = _halve(current)
    levels.append(current - coarse.repeat(2, axis=1).repeat(2, axis=2))
    current = coarse
  return levels + [current]


def descriptors(level: np.ndarray, patch: int = PATCH, stride: int = STRIDE) -> np.ndarray:
  """Every patch × patch neighbourhood of [N, H, W, C] at `stride`, flattened: [M, patch²·C]."""
  windows = np.lib.stride_tricks.sliding_window_view(level, (patch, patch), axis=(1, 2))
  windows = windows[:, ::stride, ::stride]                       # [N, h, w, C, patch, patch]
  return windows.reshape(-1, windows.shape[3] * patch * patch)


class PatchStatistics:
  """Running mean and covariance of each pyramid level's descriptors: images are added a batch at a
  time (a scene's views), so a set of any size is scored in bounded memory."""

  def __init__(self, num_bands: int = NUM_BANDS, patch: int = PATCH, stride: int = STRIDE):
    self.num_bands, self.patch, self.stride = num_bands, patch, stride
    self.count = 0
    self._counts: list[int] = []
    self._sums: list[np.ndarray] = []
    self._outer: list[np.ndarray] = []
    self.image_shape = None          # (H, W, C) of the images added

  def add(self, images) -> None:
    """Adds images [N, H, W, C]; every batch must have the first one's H, W, C."""
    images = np.asarray(images)
    if images.ndim != 4:
      raise ValueError(f"patch_frechet: images must be [N, H, W, C], got shape {images.shape}")
    h, w = images.shape[1:3]
    if bands_for(h, w, self.patch) < self.num_bands:
      scale = 2 ** self.num_bands
      raise ValueError(f"patch_frechet: images of {h}×{w} cannot make {self.num_bands} bands: "
                       f"sides must be multiples of {scale} and at least {scale * self.patch}")
    if self.image_shape is not None and images.shape[1:] != self.image_shape:
      raise ValueError(f"patch_frechet: images of shape {images.shape[1:]} added to a set of "
                       f"{self.image_shape}")
    self.image_shape = images.shape[1:]
    for i, level in enumerate(pyramid(images, self.num_bands)):
      desc = descriptors(level, self.patch, self.stride)
      if i == len(self._sums):
        self._counts.append(0)
        self._sums.append(np.zeros(desc.shape[1]))
        self._outer.append(np.zeros((desc.shape[1],) * 2))
      self._counts[i] += len(desc)
      self._sums[i] += desc.sum(axis=0)
      self._outer[i] += desc.T @ desc
    self.count += len(images)

  def gaussians(self) -> list[tuple[np.ndarray, np.ndarray]]:
    """(mean, covariance) per level, finest first."""
    if self.count < 2:
      raise ValueError(f"patch_frechet: the set holds {self.count} image(s); at least 2 are needed")
    fits = []
    for n, total, outer in zip(self._counts, self._sums, self._outer):
      mean = total / n
      fits.append((mean, (outer - n * np.outer(mean, mean)) / (n - 1)))
    return fits


def score(generated: PatchStatistics, real: PatchStatistics) -> dict[str, float]:
  """`patch_fd` (the mean over levels) and `patch_fd_level<i>` (i = 0 finest … num_bands, the
  low-pass) of a generated set against a real one. Each level's distance is divided by the real
  descriptors' total variance (the trace of their covariance): 1 is as far as a set whose level is
  blank (e.g. no detail at all) where the real one varies."""
  if (generated.num_bands, generated.patch, generated.stride) != (
      real.num_bands, real.patch, real.stride):
    raise ValueError("patch_frechet: the two sets were described with different settings")
  if generated.image_shape != real.image_shape:
    raise ValueError(f"patch_frechet: generated images {generated.image_shape} and real images "
                     f"{real.image_shape} differ in shape")
  scores = {}
  for i, ((mean_g, cov_g), (mean_r, cov_r)) in enumerate(zip(generated.gaussians(),
                                                              real.gaussians())):
    spread = np.trace(cov_r)
    scores[f"patch_fd_level{i}"] = (frechet_distance(mean_g, cov_g, mean_r, cov_r)
                                    / (spread if spread > 0 else 1.0))
  scores["patch_fd"] = float(np.mean(list(scores.values())))
  return scores


def patch_frechet(generated, real, num_bands: int = NUM_BANDS, patch: int = PATCH,
                  stride: int = STRIDE) -> dict[str, float]:
  """`score` of two sets of images [N, H, W, C] given whole."""
  sets = []
  for images in (generated, real):
    stats = PatchStatistics(num_bands, patch, stride)
    stats.add(images)
    sets.append(stats)
  return score(*sets)
