"""From a validated request to the model's inputs, in REF's order (formats.md §1, flashworld.md §7).

decode (done by `load_request`) → centre-crop/resize and intrinsics adjustment (only with an image)
→ 11-vectors with intrinsics divided by W and H → resample to n views. Normalisation is left to the
sampler, which needs its reference frame. `with_num_views` changes a request's view count (the
--num_views override) without moving the image off its camera.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from flashworld_jax.geometry import crop, trajectories
from flashworld_jax.io.request import MAX_VIEWS, Camera, SceneRequest


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
  return image, _as_views(camera_vectors(request, box), request.num_views)


def _as_views(cams: np.ndarray, num_views: int) -> np.ndarray:
  """The n-view trajectory of N cameras: REF resamples them only when N ≠ n."""
  if cams.shape[0] == num_views:
    return cams
  return np.asarray(trajectories.resample_cameras(cams, num_views), np.float32)


def _pixel_vectors(request: SceneRequest) -> np.ndarray:
  """The request's cameras as written, [N, 11] float64: quaternion, position, fx, fy, cx, cy.

  Resampling them commutes with the crop and the division by W and H (both affine per component).
  """
  return np.asarray([(*c.quaternion, *c.position, c.fx, c.fy, c.cx, c.cy) for c in request.cameras],
                    np.float64)


def _json_number(value: np.floating) -> float:
  # The shortest decimal that reads back as the same float32, so request.json stays legible.
  return float(str(np.float32(value)))


def _camera(vector: np.ndarray) -> Camera:
  q_w, q_x, q_y, q_z, x, y, z, fx, fy, cx, cy = (_json_number(v) for v in vector)
  return Camera((q_w, q_x, q_y, q_z), (x, y, z), fx, fy, cx, cy)


def with_num_views(request: SceneRequest, num_views: int) -> SceneRequest:
  """The request asking for `num_views` views.

  Without an image only n changes: the cameras are resampled when prepared, as REF does. With one,
  the image must stay on its own camera: the request's n-view trajectory is resampled through view
  `image_index` (`trajectories.resample_through`), and the returned request holds those cameras and
  the image's new index, so that written back it describes the run.
  """
  if not 1 <= num_views <= MAX_VIEWS:
    raise ValueError(f"num_views must be in [1, {MAX_VIEWS}], got {num_views!r}")
  if request.image is None or num_views == request.num_views:
    return dataclasses.replace(request, num_views=num_views)
  own_views = _as_views(_pixel_vectors(request), request.num_views)
  cams, image_index = trajectories.resample_through(own_views, num_views, request.image_index)
  return dataclasses.replace(request, num_views=num_views, image_index=image_index,
                             cameras=tuple(_camera(c) for c in np.asarray(cams)))
