"""nerfstudio / DL3DV-10K scenes (a transforms.json beside its image folders), one clip per scene.

    <root>/                              the root may itself be a scene
      <scene>/                           scene folders at any depth (DL3DV: 1K/<hash>/)
        transforms.json
        images/frame_00001.png ...       DL3DV also ships images_2/, images_4/, images_8/

transforms.json (formats.md §7.1): `w`, `h`, `fl_x`, `fl_y`, `cx`, `cy` in pixels of the declared
w × h, at the top level or overridden per frame; `frames[]` with `file_path` (relative to the
transforms.json folder) and `transform_matrix` (4×4 camera-to-world, OpenGL camera axes, as
FlashWorld's). `camera_model` may be absent or a pinhole-like model; lens distortion (k1…k4, p1, p2)
is ignored with one logged note per clip, since FlashWorld cameras are pinhole. Frames are ordered
by `file_path` (natural order: frame_2 before frame_10). `images_dir` (e.g. "images_4") replaces the
first folder of every `file_path`, for releases that ship only downscaled folders; normalised
intrinsics hold at any uniform downscale, and the first frame's aspect ratio is checked against the
declared w × h. The clip id is the scene folder relative to the root.
"""
from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np
from absl import logging

from flashworld_jax.data import camera_conventions
from flashworld_jax.data.clips import Clip, DataError
from flashworld_jax.data.sources import _common

TRANSFORMS_FILE = "transforms.json"
PINHOLE_LIKE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV",
                       "FULL_OPENCV")
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
_MALFORMED = "malformed pose file"


class _Frame(NamedTuple):
  file_path: str
  c2w: np.ndarray               # [4, 4]
  intrinsics: np.ndarray        # [fx/w, fy/h, cx/w, cy/h]
  size: tuple[float, float]     # the declared w, h
  distortion: tuple[str, ...]   # the names of the non-zero coefficients


def read_nerfstudio(root: str, *, images_dir: str | None = None, min_frames: int = 1,
                    skip_bad_clips: bool = False) -> _common.SourceReport:
  """One clip per folder under `root` (itself included) that holds a transforms.json."""
  scenes = _common.find_scene_dirs(
      root, lambda folder: os.path.isfile(os.path.join(folder, TRANSFORMS_FILE)))
  if not scenes:
    raise DataError(root, f"no {TRANSFORMS_FILE} in it or in any folder below it (expected "
                    "nerfstudio / DL3DV scene folders)")
  return _common.collect_clips(
      scenes, lambda scene: read_transforms(os.path.join(scene, TRANSFORMS_FILE),
                                            _common.scene_clip_id(root, scene), images_dir),
      min_frames=min_frames, skip_bad_clips=skip_bad_clips)


def read_transforms(path: str, clip_id: str, images_dir: str | None = None) -> Clip:
  """The clip of one transforms.json; its frame files are checked to exist, the first one's header
  against the declared size."""
  meta = _load_json(path)
  if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
    raise DataError(path, "expected a JSON object with a 'frames' list", _MALFORMED)
  model = meta.get("camera_model", "OPENCV")
  if model not in PINHOLE_LIKE_MODELS:
    raise DataError(path, f"camera_model {model!r} is not supported (supported: "
                    f"{', '.join(PINHOLE_LIKE_MODELS)})", "unsupported camera")
  _common.require_frames(path, len(meta["frames"]))
  frames = sorted((_parse_frame(path, meta, index, frame) for index, frame in
                   enumerate(meta["frames"])), key=lambda f: _common.natural_key(f.file_path))

  names = [frame.file_path for frame in frames]
  sizes = [frame.size for frame in frames]
  _common.check_declared_sizes(sizes, path, names)
  cameras = camera_conventions.opengl_c2w_to_cameras(
      np.stack([frame.c2w for frame in frames]), np.stack([frame.intrinsics for frame in frames]),
      path, names)

  scene = os.path.dirname(path)
  image_paths = [_image_path(scene, name, images_dir) for name in names]
  _common.check_frames_exist(image_paths, path)
  _common.check_frame_aspect(image_paths[0], sizes[0], path)
  distortion = sorted({key for frame in frames for key in frame.distortion})
  if distortion:
    logging.info("%s: ignoring lens distortion (non-zero %s); FlashWorld cameras are pinhole", path,
                 ", ".join(distortion))
  return Clip(clip_id, image_paths, cameras, path)


def _load_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise DataError(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})",
                    _MALFORMED) from None
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(path, f"cannot read the file ({e})", _MALFORMED) from None


def _parse_frame(path: str, meta: dict, index: int, frame) -> _Frame:
  where = f"frames[{index}]"
  if not isinstance(frame, dict):
    raise DataError(path, f"{where} is not a JSON object", _MALFORMED)
  file_path = frame.get("file_path")
  if not isinstance(file_path, str) or not file_path:
    raise DataError(path, f"{where}: missing 'file_path' (the image path relative to the "
                    f"{TRANSFORMS_FILE} folder)", _MALFORMED)
  where = f"{where} ({file_path})"
  try:
    c2w = np.array(frame["transform_matrix"], dtype=np.float64)
  except KeyError:
    raise DataError(path, f"{where}: missing 'transform_matrix'", _MALFORMED) from None
  except (TypeError, ValueError):
    raise DataError(path, f"{where}: 'transform_matrix' is not a matrix of numbers",
                    _MALFORMED) from None
  if c2w.shape == (3, 4):
    c2w = np.concatenate([c2w, [[0.0, 0.0, 0.0, 1.0]]])
  if c2w.shape != (4, 4):
    raise DataError(path, f"{where}: 'transform_matrix' has shape {c2w.shape}, expected 4×4",
                    _MALFORMED)

  values = {}
  for key in _INTRINSIC_KEYS:
    value = frame.get(key, meta.get(key))
    if value is None:
      raise DataError(path, f"{where}: missing '{key}' (expected at the top level or in the frame)",
                      _MALFORMED)
    values[key] = _number(path, where, key, value)
  width, height = values["w"], values["h"]
  intrinsics = np.array([values["fl_x"] / width, values["fl_y"] / height, values["cx"] / width,
                         values["cy"] / height])
  distortion = tuple(key for key in _DISTORTION_KEYS if frame.get(key, meta.get(key)))
  return _Frame(file_path, c2w, intrinsics, (width, height), distortion)


def _number(path: str, where: str, key: str, value) -> float:
  """A number; image sizes must also be positive (they divide the intrinsics)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise DataError(path, f"{where}: '{key}' is {value!r}, expected a number", _MALFORMED)
  if key in ("w", "h") and value <= 0:
    raise DataError(path, f"{where}: '{key}' is {value!r}, expected a positive image size",
                    _MALFORMED)
  return float(value)


def _image_path(scene: str, file_path: str, images_dir: str | None) -> str:
  parts = os.path.normpath(file_path).split(os.sep)
  if images_dir:
    parts = [images_dir] + (parts[1:] if len(parts) > 1 else parts)
  return os.path.join(scene, *parts)
