"""COLMAP sparse-model files, text and binary, as COLMAP documents them (cameras and images only).

Text, '#' starting a comment line:
  cameras.txt: `CAMERA_ID MODEL WIDTH HEIGHT PARAMS...` per camera;
  images.txt: two lines per image, `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`, then its 2D
  points (read past, possibly an empty line).
Binary, little-endian:
  cameras.bin: uint64 count, then per camera int32 camera_id, int32 model_id, uint64 width,
  uint64 height, float64 params[the model's count];
  images.bin: uint64 count, then per image int32 image_id, float64 qw qx qy qz tx ty tz, int32
  camera_id, a NUL-terminated name, uint64 num_points2D and that many (float64 x, float64 y, int64
  point3D_id).
(qw, qx, qy, qz, tx, ty, tz) is the world-to-camera pose with OpenCV camera axes.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import numpy as np

from flashworld_jax.data.clips import DataError

# COLMAP's model ids → (name, parameter count), as in its sensor/models.h.
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
_PARAM_COUNTS = dict(CAMERA_MODELS.values())
_MALFORMED = "malformed pose file"
_POINT2D_BYTES = 24


class ColmapCamera(NamedTuple):
  model: str
  width: int
  height: int
  params: np.ndarray


class ColmapImage(NamedTuple):
  qvec: np.ndarray  # w, x, y, z
  tvec: np.ndarray
  camera_id: int
  name: str


def read_cameras(path: str) -> dict[int, ColmapCamera]:
  """cameras.txt or cameras.bin → {camera id: Camera}."""
  if path.endswith(".bin"):
    return _read_cameras_binary(path)
  cameras = {}
  for number, tokens in _text_lines(path):
    try:
      camera_id, model, width, height = int(tokens[0]), tokens[1], int(tokens[2]), int(tokens[3])
      params = np.array([float(token) for token in tokens[4:]])
    except (IndexError, ValueError):
      raise DataError(path, f"line {number}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS..., got "
                      f"{' '.join(tokens)[:80]!r}", _MALFORMED) from None
    if model in _PARAM_COUNTS and len(params) != _PARAM_COUNTS[model]:
      raise DataError(path, f"line {number}: camera model {model} has {_PARAM_COUNTS[model]} "
                      f"parameters, the line gives {len(params)}", _MALFORMED)
    cameras[camera_id] = ColmapCamera(model, width, height, params)
  return cameras


def read_images(path: str) -> dict[int, ColmapImage]:
  """images.txt or images.bin → {image id: Image}."""
  if path.endswith(".bin"):
    return _read_images_binary(path)
  images = {}
  lines = _text_lines(path, keep_empty=True)
  # Image lines alternate with 2D-point lines, which may be empty (the last one even absent); an odd
  # trailing empty line closes the file rather than a pair.
  while len(lines) % 2 and not lines[-1][1]:
    lines.pop()
  for number, tokens in lines[::2]:
    try:
      if len(tokens) < 10:
        raise ValueError("too few fields")
      values = [float(token) for token in tokens[1:8]]
      image_id, camera_id = int(tokens[0]), int(tokens[8])
    except ValueError:
      raise DataError(path, f"line {number}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID "
                      f"NAME, got {' '.join(tokens)[:80]!r}", _MALFORMED) from None
    images[image_id] = ColmapImage(np.array(values[:4]), np.array(values[4:]), camera_id,
                             " ".join(tokens[9:]))
  return images


def _text_lines(path: str, keep_empty: bool = False) -> list[tuple[int, list[str]]]:
  """(line number, tokens) of the non-comment lines, the empty ones only with `keep_empty`."""
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(path, f"cannot read the file ({e})", _MALFORMED) from None
  return [(number, line.split()) for number, line in enumerate(text.splitlines(), 1)
          if not line.lstrip().startswith("#") and (keep_empty or line.strip())]


class _BinaryReader:
  """Reads little-endian records, naming the file and offset when the data ends early."""

  def __init__(self, path: str):
    self.path = path
    try:
      with open(path, "rb") as f:
        self.data = f.read()
    except OSError as e:
      raise DataError(path, f"cannot read the file ({e.strerror})", _MALFORMED) from None
    self.offset = 0

  def take(self, size: int, what: str) -> bytes:
    if self.offset + size > len(self.data):
      raise DataError(self.path, f"truncated: {what} needs {size} bytes at offset {self.offset}, "
                      f"the file has {len(self.data)}", _MALFORMED)
    chunk = self.data[self.offset:self.offset + size]
    self.offset += size
    return chunk

  def unpack(self, fmt: str, what: str) -> tuple:
    return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

  def name(self, what: str) -> str:
    end = self.data.find(b"\0", self.offset)
    if end < 0:
      raise DataError(self.path, f"truncated: {what} has no terminating NUL after offset "
                      f"{self.offset}", _MALFORMED)
    raw = self.take(end + 1 - self.offset, what)[:-1]
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError:
      raise DataError(self.path, f"{what} is not UTF-8: {raw[:80]!r}", _MALFORMED) from None

  def expect_end(self, count: int, kind: str) -> None:
    if self.offset != len(self.data):
      raise DataError(self.path, f"{len(self.data) - self.offset} bytes follow the {count} {kind} "
                      "the header announces", _MALFORMED)


def _read_cameras_binary(path: str) -> dict[int, ColmapCamera]:
  reader = _BinaryReader(path)
  (count,) = reader.unpack("Q", "the camera count")
  cameras = {}
  for index in range(count):
    what = f"camera {index}"
    camera_id, model_id, width, height = reader.unpack("iiQQ", what)
    if model_id not in CAMERA_MODELS:
      raise DataError(path, f"{what} (id {camera_id}): unknown camera model id {model_id} (known: "
                      f"{sorted(CAMERA_MODELS)})", _MALFORMED)
    model, param_count = CAMERA_MODELS[model_id]
    params = np.array(reader.unpack(f"{param_count}d", f"{what} parameters"))
    cameras[camera_id] = ColmapCamera(model, width, height, params)
  reader.expect_end(count, "cameras")
  return cameras


def _read_images_binary(path: str) -> dict[int, ColmapImage]:
  reader = _BinaryReader(path)
  (count,) = reader.unpack("Q", "the image count")
  images = {}
  for index in range(count):
    what = f"image {index}"
    image_id, *pose, camera_id = reader.unpack("i7di", what)
    name = reader.name(f"{what} name")
    (num_points,) = reader.unpack("Q", f"{what} point count")
    reader.take(num_points * _POINT2D_BYTES, f"{what} points")
    images[image_id] = ColmapImage(np.array(pose[:4]), np.array(pose[4:]), camera_id, name)
  reader.expect_end(count, "images")
  return images
