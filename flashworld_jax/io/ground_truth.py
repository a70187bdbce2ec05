"""Ground-truth views of a request (`generate --ground_truth`): loading, checking and scoring.

A folder holds one PNG per view of the request, `000.png`, `001.png`, ... at the request's
resolution (`python -m flashworld_jax.data.export_request` writes them for a held-out scene).
"""
from __future__ import annotations

import os

import numpy as np

from flashworld_jax.io import images


class GroundTruthError(ValueError):
  """A ground-truth folder that does not match its request."""


def view_file(folder: str, view: int) -> str:
  return os.path.join(folder, f"{view:03d}.png")


def load_views(folder: str, num_views: int, height: int, width: int) -> np.ndarray:
  """uint8 views [V, H, W, 3]; an error names the first missing or mis-sized file."""
  if not os.path.isdir(folder):
    raise GroundTruthError(f"--ground_truth={folder}: no such folder (expected 000.png, 001.png, "
                           "... one per view of the request)")
  views = []
  for view in range(num_views):
    path = view_file(folder, view)
    if not os.path.isfile(path):
      raise GroundTruthError(f"{path}: missing (the request has {num_views} views)")
    try:
      image = images.decode_image(path)
    except images.ImageDecodeError as e:
      raise GroundTruthError(f"{path}: {e}") from None
    if image.shape[:2] != (height, width):
      raise GroundTruthError(f"{path}: {image.shape[0]}x{image.shape[1]} pixels, the request's "
                             f"views are {height}x{width}")
    views.append(image)
  extra = view_file(folder, num_views)
  if os.path.exists(extra):
    raise GroundTruthError(f"{extra}: more ground-truth views than the request's {num_views}")
  return np.stack(views)


def _psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
  """PSNR in dB per image of uint8 images [..., H, W, 3] (peak 255)."""
  error = np.square(np.float64(pred) - np.float64(target)).mean(axis=(-3, -2, -1))
  return 10.0 * np.log10(255.0 ** 2 / np.maximum(error, 1e-12))


def scores(renders: np.ndarray, truth: np.ndarray, image_index: int | None) -> dict:
  """PSNR of uint8 renders [V, H, W, 3] against the truth: per view, at the image's view, and the
  mean over the other views next to the image's own PSNR there (the trivial baseline: showing the
  input image at every view)."""
  per_view = _psnr(renders, truth)
  result = {"psnr_per_view": [round(float(p), 3) for p in per_view]}
  others = np.arange(len(truth))
  if image_index is not None:
    others = others[others != image_index]
    result["psnr_image_view"] = float(per_view[image_index])
    if len(others):
      result["baseline_image_psnr_other_views"] = float(
          _psnr(np.broadcast_to(truth[image_index], truth[others].shape), truth[others]).mean())
  if len(others):
    result["psnr_other_views"] = float(per_view[others].mean())
  return result
