"""Generation requests: the reference JSON schema, validated (formats.md §1), and written back.

Every validation failure raises RequestError naming the field path (e.g. `cameras[3].quaternion`),
the offending value (abbreviated) and what was expected, and the file when read from one; nothing is
partially accepted. Unknown top-level keys are ignored, as REF does, but reported in the request's
`warnings` with the closest known key (a misspelt optional key would otherwise go unnoticed).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from flashworld_jax.io import atomic, images

MAX_VIEWS = 1024  # RoPE positions per axis (flashworld.md §1.1)
SIZE_MULTIPLE = 32  # VAE ×16, then patch 2
SEED_RANGE = (-(2**63), 2**63)  # int64, what a PRNG seed can hold
_KEYS = ("image_prompt", "text_prompt", "resolution", "image_index", "cameras", "seed")
_CAMERA_KEYS = ("quaternion", "position", "fx", "fy", "cx", "cy")
_ABBREVIATE_AT = 60


class RequestError(ValueError):
  """A request that does not follow the schema."""


@dataclasses.dataclass(frozen=True)
class Camera:
  """One camera of a request, in the request's pixels and world (formats.md §1)."""
  quaternion: tuple[float, float, float, float]  # camera-to-world rotation, w first, any non-zero norm
  position: tuple[float, float, float]  # camera centre in world units
  fx: float  # focal lengths in pixels
  fy: float
  cx: float  # principal point in pixels from the top-left corner
  cy: float


@dataclasses.dataclass(frozen=True, eq=False)
class SceneRequest:
  """A validated generation request."""
  image: np.ndarray | None  # uint8 [H, W, 3] RGB as decoded (not yet cropped), read-only
  image_source: str | None  # the original `image_prompt` string, kept for saving
  text_prompt: str
  num_views: int
  height: int
  width: int
  image_index: int
  cameras: tuple[Camera, ...]
  seed: int | None
  name: str
  warnings: tuple[str, ...] = ()  # what validation accepted but the user should hear about


def _abbreviate(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= _ABBREVIATE_AT else text[:_ABBREVIATE_AT - 1] + "…"


def _fail(field: str, value: Any, expected: str) -> RequestError:
  return RequestError(f"{field}: expected {expected}, got {_abbreviate(value)}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, field: str) -> float:
  """A finite JSON number as a float (booleans are not numbers)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise _fail(field, value, "a number")
  try:
    number = float(value)
  except OverflowError:
    number = math.inf
  if not math.isfinite(number):
    raise _fail(field, value, "a finite number")
  return number


def _vector(value: Any, field: str, length: int) -> tuple[float, ...]:
  if not isinstance(value, list) or len(value) != length:
    raise _fail(field, value, f"a list of {length} numbers")
  return tuple(_number(v, f"{field}[{i}]") for i, v in enumerate(value))


def _parse_camera(value: Any, field: str) -> Camera:
  if not isinstance(value, dict):
    raise _fail(field, value, f"a camera object with keys {list(_CAMERA_KEYS)}")
  missing = [k for k in _CAMERA_KEYS if k not in value]
  if missing:
    raise _fail(field, value, f"a camera object with keys {list(_CAMERA_KEYS)} (missing {missing})")
  quaternion = _vector(value["quaternion"], f"{field}.quaternion", 4)
  if not math.fsum(q * q for q in quaternion) > 0:
    raise _fail(f"{field}.quaternion", value["quaternion"], "a quaternion [w, x, y, z] of non-zero norm")
  position = _vector(value["position"], f"{field}.position", 3)
  fx, fy, cx, cy = (_number(value[k], f"{field}.{k}") for k in ("fx", "fy", "cx", "cy"))
  for key, focal in (("fx", fx), ("fy", fy)):
    if focal <= 0:
      raise _fail(f"{field}.{key}", value[key], "a focal length in pixels > 0")
  return Camera(quaternion, position, fx, fy, cx, cy)  # type: ignore[arg-type]


def _parse_resolution(value: Any) -> tuple[int, int, int]:
  if not isinstance(value, list) or len(value) != 3 or not all(_is_int(v) and v > 0 for v in value):
    raise _fail("resolution", value, "[n, H, W]: three positive integers")
  n, height, width = value
  if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
    raise _fail("resolution", value, f"H and W that are multiples of {SIZE_MULTIPLE}")
  if n > MAX_VIEWS:
    raise _fail("resolution", value, f"at most {MAX_VIEWS} views (n ≤ {MAX_VIEWS})")
  return n, height, width


def _optional_string(data: Mapping[str, Any], key: str) -> str:
  value = data.get(key)
  if value is None:
    return ""
  if not isinstance(value, str):
    raise _fail(key, value, "a string or null")
  return value


def _unknown_key_warnings(data: Mapping[str, Any]) -> tuple[str, ...]:
  found = []
  for key in data:
    if key in _KEYS:
      continue
    close = difflib.get_close_matches(str(key), _KEYS, n=1)
    hint = f"did you mean `{close[0]}`?" if close else f"expected keys: {', '.join(_KEYS)}"
    found.append(f"`{key}`: unknown key (ignored), {hint}")
  return tuple(found)


def parse_request(data: Any, name: str = "request", base_dir: str = ".") -> SceneRequest:
  """Validates a decoded JSON request; relative image paths are resolved against `base_dir`."""
  if not isinstance(data, dict):
    raise _fail("request", data, "a JSON object at the top level")
  text_prompt = _optional_string(data, "text_prompt")
  image_source = _optional_string(data, "image_prompt") or None
  if "resolution" not in data:
    raise RequestError("resolution: required field is missing (expected [n, H, W])")
  num_views, height, width = _parse_resolution(data["resolution"])
  image_index = data.get("image_index", 0)
  if not _is_int(image_index):
    raise _fail("image_index", image_index, "an integer")
  if "cameras" not in data:
    raise RequestError("cameras: required field is missing (expected a non-empty list of cameras)")
  raw_cameras = data["cameras"]
  if not isinstance(raw_cameras, list) or not raw_cameras:
    raise _fail("cameras", raw_cameras, "a non-empty list of camera objects")
  cameras = tuple(_parse_camera(c, f"cameras[{i}]") for i, c in enumerate(raw_cameras))
  seed = data.get("seed")
  if seed is not None and not (_is_int(seed) and SEED_RANGE[0] <= seed < SEED_RANGE[1]):
    raise _fail("seed", seed, "an integer (int64) or null")
  if image_source is None and not text_prompt.strip():
    raise RequestError("text_prompt/image_prompt: expected a non-empty text_prompt or an "
                       f"image_prompt, got text_prompt={_abbreviate(text_prompt)} and no image")
  image = None
  if image_source is not None:
    if not 0 <= image_index < num_views:
      raise _fail("image_index", image_index, f"an integer in [0, {num_views}) (n = {num_views} views)")
    try:
      image = images.decode_image(image_source, base_dir)
    except images.ImageDecodeError as e:
      raise _fail("image_prompt", image_source, f"a decodable image ({e})") from None
    image.setflags(write=False)
  return SceneRequest(image=image, image_source=image_source, text_prompt=text_prompt,
                      num_views=num_views, height=height, width=width, image_index=image_index,
                      cameras=cameras, seed=seed, name=name, warnings=_unknown_key_warnings(data))


def load_request(path_or_dict: str | os.PathLike[str] | Mapping[str, Any],
                 name: str | None = None) -> SceneRequest:
  """Loads and validates a request from a JSON file or an already decoded dict.

  `name` defaults to the file's stem, or "request" for a dict. Image paths in a file are relative to
  the file's directory; in a dict, to the working directory. Errors from a file start with its path.
  """
  if isinstance(path_or_dict, Mapping):
    return parse_request(dict(path_or_dict), name or "request", ".")
  if not isinstance(path_or_dict, (str, os.PathLike)):  # e.g. a decoded JSON list
    return parse_request(path_or_dict, name or "request", ".")
  path = os.fspath(path_or_dict)
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except FileNotFoundError:
    raise RequestError(f"{path}: no such file") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise RequestError(f"{path}: not valid JSON ({e})") from None
  stem = os.path.splitext(os.path.basename(path))[0]
  try:
    return parse_request(data, name or stem, os.path.dirname(os.path.abspath(path)))
  except RequestError as e:
    raise RequestError(f"{path}: {e}") from None


def request_to_dict(request: SceneRequest) -> dict[str, Any]:
  """The request in the reference JSON schema.

  The image is written as its original string when that is self-contained (a data URI, bare base64
  or an absolute path), otherwise (a relative path, or an image set in code) as a PNG data URI.
  """
  source = request.image_source
  if request.image is None:
    image_prompt = None
  elif source is not None and (os.path.isabs(source) or images.is_embedded(source)):
    image_prompt = source
  else:
    image_prompt = images.encode_png_data_uri(request.image)
  data: dict[str, Any] = {
      "image_prompt": image_prompt,
      "text_prompt": request.text_prompt,
      "resolution": [request.num_views, request.height, request.width],
      "image_index": request.image_index,
      "cameras": [{"quaternion": list(c.quaternion), "position": list(c.position), "fx": c.fx,
                   "fy": c.fy, "cx": c.cx, "cy": c.cy} for c in request.cameras],
  }
  if request.seed is not None:
    data["seed"] = request.seed
  return data


def save_request(request: SceneRequest, path: str | os.PathLike[str]) -> None:
  """Writes the request as JSON, atomically (readers never see a partial file)."""
  atomic.write_text(os.fspath(path), json.dumps(request_to_dict(request), indent=1) + "\n")
