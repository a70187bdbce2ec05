"""From a validated request to the model's inputs, in REF's order (formats.md §1, flashworld.md §7).

decode (done by `load_request`) → centre-crop/resize and intrinsics adjustment (only with an image)
→ 11-vectors with intrinsics divided by W and H → resample to n views. Normalisation is left to the
sampler, which needs its reference frame.
"""
from __future__ import annotations

import numpy as np

from flashworld_jax.geometry import crop, trajectories
from flashworld_jax.io.request import SceneRequest


def camera_vectors(request: SceneRequest, box: crop.CropBox | None = None) -> np.ndarray:
  """The request's cameras as float32 11-vectors [N, 11] (N = number of request cameras).

  With a crop `box`, the pixel intrinsics are first moved onto the cropped and resized image.
  """
  rows = []
  for camera in request.cameras:
    intrinsics = (camera.fx, camera.fy, camera.cx, camera.cy)
    if box is not None:
      intrinsics = crop.crop_intrinsics(*intrinsics, box)
    fx, fy, cx, cy = intrinsics
    rows.append((*camera.quaternion, *camera.position, fx / request.width, fy / request.height,
                 cx / request.width, cy / request.height))
  # Computed in float64 from the JSON numbers and rounded once, as REF does.
  return np.asarray(rows, np.float64).astype(np.float32)


def prepare_cameras(request: SceneRequest) -> tuple[np.ndarray | None, np.ndarray]:
  """The conditioning image and the n-view camera trajectory of a request.

  Returns:
    image: float32 [H, W, 3] in [−1, 1] (centre-cropped, bicubic-resized), or None without an image.
    cams: float32 [n, 11] camera vectors (not normalised). Resampled only when the request's camera
      count differs from n, as REF does; a single camera is replicated.
  """
  image, box = None, None
  if request.image is not None:
    src_h, src_w = request.image.shape[:2]
    box = crop.center_crop_box(src_w, src_h, request.width, request.height)
    image = crop.center_crop_image(request.image, request.height, request.width)
  cams = camera_vectors(request, box)
  if cams.shape[0] != request.num_views:
    cams = np.asarray(trajectories.resample_cameras(cams, request.num_views), np.float32)
  return image, cams
