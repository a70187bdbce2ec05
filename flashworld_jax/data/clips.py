"""The common form of a multi-view clip, its errors, and the frame operations every source shares.

A clip's cameras are 11-vectors (spec §7.1): camera-to-world quaternion (w, x, y, z) and position,
OpenGL camera axes, intrinsics divided by the frame's own width and height. Normalised intrinsics do
not change when a frame is downscaled, so a clip may point at any of a dataset's resolutions.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from flashworld_jax.geometry import crop


class DataError(ValueError):
  """Bad data on disk; the message names the file and the problem.

  `reason` is a short category ("missing frames", "invalid pose", ...) under which readers count a
  clip they skip, so a build summary can say why clips were dropped.
  """

  def __init__(self, path: str, problem: str, reason: str = "bad data"):
    super().__init__(f"{path}: {problem}")
    self.path = path
    self.problem = problem
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Clip:
  """One multi-view clip as a source describes it, before its frames are read.

  `frames` holds either image paths (read by `read_frames`) or, for in-memory sources, a uint8
  array [F, H, W, 3]. `pose_file` is the file the cameras came from, named in errors.
  """
  clip_id: str
  frames: Sequence[str] | np.ndarray
  cameras: np.ndarray            # float64 [F, 11]
  pose_file: str
  caption: str | None = None

  def __post_init__(self):
    cameras = np.asarray(self.cameras)
    if cameras.ndim != 2 or cameras.shape[1] != 11:
      raise DataError(self.pose_file, f"clip {self.clip_id}: cameras have shape {cameras.shape}, "
                      "expected [F, 11]")
    if len(self.frames) != cameras.shape[0]:
      raise DataError(self.pose_file, f"clip {self.clip_id}: {len(self.frames)} frames but "
                      f"{cameras.shape[0]} cameras")
    if not np.all(np.isfinite(cameras)):
      bad = int(np.argwhere(~np.isfinite(cameras))[0, 0])
      raise DataError(self.pose_file, f"clip {self.clip_id}: frame {bad} has a non-finite camera "
                      f"{cameras[bad].tolist()}")

  @property
  def num_frames(self) -> int:
    return int(self.cameras.shape[0])


def read_captions(path: str) -> dict[str, str]:
  """A JSONL side file of {"clip_id": ..., "caption": ...} lines → {clip id: caption}."""
  captions = {}
  try:
    with open(path, encoding="utf-8") as f:
      lines = list(f)
  except OSError as e:
    raise DataError(path, f"cannot read the captions file ({e.strerror})") from None
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      row = json.loads(line)
      clip_id, caption = row["clip_id"], row["caption"]
    except (json.JSONDecodeError, KeyError, TypeError):
      raise DataError(path, f"line {number}: expected a JSON object with string keys 'clip_id' and "
                      f"'caption', got {line.strip()[:80]!r}") from None
    if not isinstance(clip_id, str) or not isinstance(caption, str):
      raise DataError(path, f"line {number}: 'clip_id' and 'caption' must be strings")
    captions[clip_id] = caption
  return captions


def read_image(path: str) -> np.ndarray:
  """uint8 RGB [H, W, 3] of an image file; a missing or unreadable file is a DataError."""
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except FileNotFoundError:
    raise DataError(path, "frame file is missing") from None
  except (UnidentifiedImageError, OSError) as e:
    raise DataError(path, f"frame file is not a readable image ({e})") from None


def read_frames(clip: Clip) -> np.ndarray:
  """The clip's frames as uint8 [F, H, W, 3]; every frame must have the first frame's size."""
  if isinstance(clip.frames, np.ndarray):
    return clip.frames
  frames = []
  for path in clip.frames:
    image = read_image(path)
    if frames and image.shape != frames[0].shape:
      raise DataError(path, f"frame size {image.shape[1]}x{image.shape[0]} differs from the clip's "
                      f"first frame ({frames[0].shape[1]}x{frames[0].shape[0]}, {clip.frames[0]})")
    frames.append(image)
  return np.stack(frames)


def crop_resize_frames(frames: np.ndarray, cameras: np.ndarray, height: int,
                       width: int) -> tuple[np.ndarray, np.ndarray]:
  """Centre-crops frames [F, h, w, 3] to the target aspect, resizes them to height × width, and moves
  the normalised intrinsics with them (formats.md §7.4).

  The window is `geometry.crop.center_crop_box`'s; downscaling uses a box filter (area average, no
  aliasing of the procedural textures), upscaling bicubic.
  """
  src_h, src_w = frames.shape[1:3]
  cameras = np.array(cameras, np.float64)
  if (src_h, src_w) == (height, width):
    return frames, cameras
  box, window = _crop_window(src_h, src_w, height, width)
  downscale = box.width >= width
  resample = Image.Resampling.BOX if downscale else Image.Resampling.BICUBIC
  out = np.stack([np.asarray(Image.fromarray(f).crop(window).resize((width, height), resample))
                  for f in frames])
  fx, fy, cx, cy = cameras[:, 7], cameras[:, 8], cameras[:, 9], cameras[:, 10]
  cameras[:, 7] = fx * src_w / box.width
  cameras[:, 8] = fy * src_h / box.height
  cameras[:, 9] = (cx * src_w - box.offset_x) / box.width
  cameras[:, 10] = (cy * src_h - box.offset_y) / box.height
  return out, cameras


def crop_resize_depth(depth: np.ndarray, height: int, width: int) -> np.ndarray:
  """Depth maps [F, h, w] through `crop_resize_frames`' window, nearest-neighbour: an average would
  blend surfaces with the 0 of empty pixels into depths that exist nowhere. Returns float32."""
  depth = np.asarray(depth, np.float32)
  src_h, src_w = depth.shape[1:3]
  if (src_h, src_w) == (height, width):
    return depth
  _, window = _crop_window(src_h, src_w, height, width)
  return np.stack([np.asarray(Image.fromarray(d).crop(window).resize(
      (width, height), Image.Resampling.NEAREST)) for d in depth])


def _crop_window(src_h: int, src_w: int, height: int, width: int):
  box = crop.center_crop_box(src_w, src_h, width, height)
  return box, (box.offset_x, box.offset_y, box.offset_x + box.width, box.offset_y + box.height)


def attach_captions(clips, captions: Mapping[str, str] | None):
  """Clips with their caption from a side file (clips absent from it keep theirs, or none)."""
  for clip in clips:
    if captions and clip.clip_id in captions:
      clip = dataclasses.replace(clip, caption=captions[clip.clip_id])
    yield clip


def clip_id_from_path(root: str, path: str) -> str:
  """A stable clip id: the path relative to the dataset root, with '/' separators."""
  return os.path.relpath(path, root).replace(os.sep, "/")
