"""COLMAP sparse reconstructions (MVImgNet, DL3DV `colmap/`), one clip per scene.

    <root>/                              the root may itself be a scene
      <scene>/                           scene folders at any depth (MVImgNet: <category>/<object>/)
        images/                          the frames images.txt/.bin names (`images_dir`)
        sparse/0/cameras.bin, images.bin or cameras.txt, images.txt (sparse/ itself also works;
                                         .bin is read where both exist; only model 0 is read)

Poses are world-to-camera quaternions and translations with OpenCV camera axes (formats.md §7.3).
Intrinsics come from the camera's pixel parameters divided by its width and height. Supported
models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV; their lens distortion
is ignored with one logged note per clip (FlashWorld cameras are pinhole), and any other model (the
fisheye ones) is a DataError naming it. Frames are ordered by image name (natural order). The first
frame's aspect ratio is checked against its camera's size, so `images_dir` may name a uniformly
downscaled folder (images_4). The clip id is the scene folder relative to the root.
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging

from flashworld_jax.data import camera_conventions
from flashworld_jax.data.clips import Clip, DataError
from flashworld_jax.data.sources import _common, colmap_model

# Where fx, fy, cx, cy sit among each supported model's parameters; the ones after are distortion.
_PINHOLE_PARAMS = {
    "SIMPLE_PINHOLE": (0, 0, 1, 2), "PINHOLE": (0, 1, 2, 3), "SIMPLE_RADIAL": (0, 0, 1, 2),
    "RADIAL": (0, 0, 1, 2), "OPENCV": (0, 1, 2, 3), "FULL_OPENCV": (0, 1, 2, 3),
}
_MALFORMED = "malformed pose file"


def read_colmap(root: str, *, images_dir: str = "images", min_frames: int = 1,
                skip_bad_clips: bool = False) -> _common.SourceReport:
  """One clip per folder under `root` (itself included) that holds a sparse/ folder."""
  scenes = _common.find_scene_dirs(
      root, lambda folder: os.path.isdir(os.path.join(folder, "sparse")))
  if not scenes:
    raise DataError(root, "no sparse/ folder in it or in any folder below it (expected COLMAP "
                    "scenes: <scene>/sparse/0/ and <scene>/images/)")
  return _common.collect_clips(
      scenes, lambda scene: read_model(scene, _common.scene_clip_id(root, scene), images_dir),
      min_frames=min_frames, skip_bad_clips=skip_bad_clips)


def read_model(scene: str, clip_id: str, images_dir: str = "images") -> Clip:
  """The clip of one scene's sparse model; its frame files are checked to exist, the first one's
  header against its camera's size."""
  cameras_path, images_path = _model_files(scene)
  cameras = colmap_model.read_cameras(cameras_path)
  images = sorted(colmap_model.read_images(images_path).values(),
                  key=lambda image: _common.natural_key(image.name))
  _common.require_frames(images_path, len(images))
  names = [image.name for image in images]

  intrinsics, sizes, distorted = [], [], set()
  for image in images:
    camera = cameras.get(image.camera_id)
    if camera is None:
      raise DataError(images_path, f"image {image.name} uses camera {image.camera_id}, which "
                      f"{cameras_path} does not define", _MALFORMED)
    intrinsics.append(_normalised_intrinsics(cameras_path, image.camera_id, camera))
    sizes.append((camera.width, camera.height))
    if camera.params[max(_PINHOLE_PARAMS[camera.model]) + 1:].any():
      distorted.add(camera.model)
  _common.check_declared_sizes(sizes, images_path, names)
  cams = camera_conventions.colmap_to_cameras(
      np.stack([image.qvec for image in images]), np.stack([image.tvec for image in images]),
      np.stack(intrinsics), images_path, names)

  frame_paths = [os.path.join(scene, images_dir, *name.split("/")) for name in names]
  _common.check_frames_exist(frame_paths, images_path)
  _common.check_frame_aspect(frame_paths[0], sizes[0], cameras_path)
  if distorted:
    logging.info("%s: ignoring the lens distortion of its %s cameras; FlashWorld cameras are "
                 "pinhole", cameras_path, ", ".join(sorted(distorted)))
  return Clip(clip_id, frame_paths, cams, images_path)


def _model_files(scene: str) -> tuple[str, str]:
  """(cameras, images) files of the scene's model, binary where both formats exist."""
  for folder in (os.path.join(scene, "sparse", "0"), os.path.join(scene, "sparse")):
    cameras, images = _model_file(folder, "cameras"), _model_file(folder, "images")
    if cameras and images:
      return cameras, images
  raise DataError(os.path.join(scene, "sparse"), "no COLMAP model: expected cameras.bin and "
                  "images.bin (or .txt) in sparse/0/ or sparse/", _MALFORMED)


def _model_file(folder: str, name: str) -> str | None:
  for extension in (".bin", ".txt"):
    path = os.path.join(folder, name + extension)
    if os.path.isfile(path):
      return path
  return None


def _normalised_intrinsics(path: str, camera_id: int,
                           camera: colmap_model.ColmapCamera) -> np.ndarray:
  if camera.model not in _PINHOLE_PARAMS:
    raise DataError(path, f"camera {camera_id} has model {camera.model}, which is not supported "
                    f"(supported: {', '.join(_PINHOLE_PARAMS)}; undistort other models first)",
                    "unsupported camera")
  if camera.width <= 0 or camera.height <= 0:
    raise DataError(path, f"camera {camera_id} has size {camera.width}x{camera.height}, expected a "
                    "positive width and height", _MALFORMED)
  fx, fy, cx, cy = camera.params[list(_PINHOLE_PARAMS[camera.model])]
  return np.array([fx / camera.width, fy / camera.height, cx / camera.width, cy / camera.height])
