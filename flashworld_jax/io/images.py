"""Decoding `image_prompt` strings (file path, data URI or bare base64) and encoding images back."""
from __future__ import annotations

import base64
import binascii
import io
import os

import numpy as np
from PIL import Image

_DATA_URI_PREFIX = "data:"


class ImageDecodeError(ValueError):
  """An `image_prompt` string that names no readable image; the message says why."""


def _strict_b64decode(text: str) -> bytes:
  # JSON writers sometimes wrap base64; whitespace is not data.
  return base64.b64decode("".join(text.split()), validate=True)


def is_embedded(source: str) -> bool:
  """True for a data URI or bare base64, False for anything that must be a file path."""
  if source.startswith(_DATA_URI_PREFIX):
    return True
  try:
    _strict_b64decode(source)
  except (binascii.Error, ValueError):
    return False
  return True


def _image_bytes(source: str, base_dir: str) -> bytes:
  if source.startswith(_DATA_URI_PREFIX):
    header, sep, payload = source.partition(",")
    if not sep or not header.endswith(";base64"):
      raise ImageDecodeError("a data URI must look like 'data:image/<fmt>;base64,<data>'")
    try:
      return _strict_b64decode(payload)
    except (binascii.Error, ValueError) as e:
      raise ImageDecodeError(f"the data URI's payload is not valid base64 ({e})") from None
  path = os.path.join(base_dir, os.path.expanduser(source))
  if os.path.isfile(path):
    with open(path, "rb") as f:
      return f.read()
  try:
    return _strict_b64decode(source)
  except (binascii.Error, ValueError):
    raise ImageDecodeError(
        f"no such file ({os.path.abspath(path)}) and not a data URI or valid base64") from None


def decode_image(source: str, base_dir: str = ".") -> np.ndarray:
  """The image named by `source` as uint8 RGB [H, W, 3] (alpha and palettes dropped).

  `source` is a file path (relative to `base_dir` unless absolute), a data URI
  `data:image/<fmt>;base64,<data>`, or bare base64. An existing file wins over a base64 reading,
  as in REF. Raises ImageDecodeError saying what is wrong.
  """
  data = _image_bytes(source, base_dir)
  try:
    with Image.open(io.BytesIO(data)) as image:
      rgb = image.convert("RGB")
  except Exception as e:  # PIL raises many types for corrupt or unknown data.
    raise ImageDecodeError(f"not a decodable image ({type(e).__name__}: {e})") from None
  return np.asarray(rgb, np.uint8)


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a uint8 RGB image [H, W, 3]."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8), "RGB").save(buffer, format="PNG")
  return buffer.getvalue()


def encode_png_data_uri(image: np.ndarray) -> str:
  """A `data:image/png;base64,...` URI of a uint8 RGB image [H, W, 3]."""
  return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")
