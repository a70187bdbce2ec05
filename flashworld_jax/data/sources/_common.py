"""What the layout readers share: finding scenes, skipping bad clips with a count, frame checks."""
from __future__ import annotations

import collections
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, TypeVar

from absl import logging
from PIL import Image, UnidentifiedImageError

from flashworld_jax.data.clips import Clip, DataError

Candidate = TypeVar("Candidate")


class SourceReport(NamedTuple):
  """A reader's result: the clips it read and, per reason, how many clips it skipped."""
  clips: list[Clip]
  skipped: collections.Counter


def natural_key(name: str) -> list:
  """Sorts 'frame_2' before 'frame_10': digit runs compare as numbers."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def raise_listing_error(error: OSError):
  raise DataError(error.filename, f"cannot list the folder ({error.strerror})")


def find_scene_dirs(root: str, is_scene: Callable[[str], bool]) -> list[str]:
  """Folders under `root` (itself included) that `is_scene` accepts, in natural order; the search
  does not descend into an accepted folder, so a scene's image folders are never walked."""
  if not os.path.isdir(root):
    raise DataError(root, "no such folder (expected the dataset root)")
  scenes = []
  for folder, subfolders, _ in os.walk(root, onerror=raise_listing_error, followlinks=True):
    if is_scene(folder):
      scenes.append(folder)
      subfolders.clear()
  return sorted(scenes, key=natural_key)


def scene_clip_id(root: str, scene: str) -> str:
  """The scene's path relative to the root, or the root's own name when the root is the scene."""
  if os.path.abspath(scene) == os.path.abspath(root):
    return os.path.basename(os.path.abspath(root))
  return os.path.relpath(scene, root).replace(os.sep, "/")


def collect_clips(candidates: Iterable[Candidate], read_clip: Callable[[Candidate], Clip], *,
                  min_frames: int, skip_bad_clips: bool) -> SourceReport:
  """Reads one clip per candidate. A DataError stops the read, or with `skip_bad_clips` is logged
  and counted under its reason."""
  clips, skipped = [], collections.Counter()
  for candidate in candidates:
    try:
      clip = read_clip(candidate)
      if clip.num_frames < min_frames:
        raise DataError(clip.pose_file, f"clip {clip.clip_id} has {clip.num_frames} frames, a "
                        f"sample needs at least {min_frames}", "too few frames")
    except DataError as e:
      if not skip_bad_clips:
        raise
      logging.warning("Skipping a clip (%s): %s", e.reason, e)
      skipped[e.reason] += 1
      continue
    clips.append(clip)
  return SourceReport(clips, skipped)


def require_frames(pose_file: str, count: int) -> None:
  if count == 0:
    raise DataError(pose_file, "lists no frames", "too few frames")


def check_frames_exist(paths: Sequence[str], pose_file: str) -> None:
  """DataError naming the first missing frame; each folder is listed once instead of one stat per
  frame."""
  listings = {}
  for path in paths:
    folder, name = os.path.split(path)
    if folder not in listings:
      try:
        listings[folder] = set(os.listdir(folder or "."))
      except OSError as e:
        raise DataError(folder, f"cannot list the frame folder ({e.strerror}); {pose_file} has "
                        "frames there", "missing frames") from None
    if name not in listings[folder]:
      raise DataError(path, f"frame file is missing (listed in {pose_file})", "missing frames")


def _same_aspect(size: tuple[int, int], other: tuple[int, int]) -> bool:
  """Whether two width × height sizes have one aspect ratio, up to the pixel that rounding a
  downscaled size (images_4 of a 1297-pixel-wide frame) may cost."""
  (width, height), (other_width, other_height) = size, other
  return abs(width * other_height - height * other_width) <= max(other_width, other_height)


def check_declared_sizes(sizes: Sequence[tuple[int, int]], pose_file: str,
                         frame_names: Sequence[str]) -> None:
  """All frames of a clip are read at one size, so the sizes their intrinsics refer to must share
  one aspect ratio."""
  for index, size in enumerate(sizes):
    if not _same_aspect(size, sizes[0]):
      raise DataError(pose_file, f"frame {index} ({frame_names[index]}) declares a {size[0]}x"
                      f"{size[1]} image but frame 0 ({frame_names[0]}) a "
                      f"{sizes[0][0]}x{sizes[0][1]} one; a clip needs one aspect ratio",
                      "frame size mismatch")


def check_frame_aspect(frame_path: str, declared_size: tuple[int, int], pose_file: str) -> None:
  """DataError unless the frame (its header only is read) has the aspect ratio of the size its
  intrinsics refer to. Normalised intrinsics hold under uniform downscaling, not under a crop or a
  stretch; `clips.read_frames` later holds every frame to the first one's size."""
  try:
    with Image.open(frame_path) as image:
      size = image.size
  except (UnidentifiedImageError, OSError) as e:
    raise DataError(frame_path, f"frame file is not a readable image ({e})",
                    "unreadable frames") from None
  if not _same_aspect(size, declared_size):
    raise DataError(frame_path, f"frame is {size[0]}x{size[1]} but {pose_file} declares "
                    f"{declared_size[0]}x{declared_size[1]}; the aspect ratios differ, so the "
                    "intrinsics do not fit the frame", "frame size mismatch")
