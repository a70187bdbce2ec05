"""RealEstate10K camera files with the frames extracted from their videos, one clip per camera file.

    <root>/                          camera files at any depth (or one camera file)
      train/0a1b2c3d4e5f6a7b.txt
    <frames_root>/                   as the common download scripts extract the videos
      train/0a1b2c3d4e5f6a7b/        the camera file's path relative to <root>, without .txt
        52553000.png ...             <timestamp_µs>.png, .jpg or .jpeg: one per camera line

A camera file (formats.md §7.2): line 1 the video URL, then one line of 19 numbers per frame,
`timestamp_µs fx fy cx cy 0 0` and a row-major 3×4 world-to-camera matrix with OpenCV camera axes;
the intrinsics are already normalised by the frame size. Frames keep the file's order. The clip id
is the camera file's path relative to <root> without `.txt`. A missing frame folder or frame file
(many videos are gone from YouTube) is a DataError, or a skipped clip with `skip_bad_clips`.
"""
from __future__ import annotations

import os

import numpy as np

from flashworld_jax.data import camera_conventions
from flashworld_jax.data.clips import Clip, DataError
from flashworld_jax.data.sources import _common

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")
NUMBERS_PER_LINE = 19
_MALFORMED = "malformed pose file"


def read_realestate10k(root: str, *, frames_root: str, min_frames: int = 1,
                       skip_bad_clips: bool = False) -> _common.SourceReport:
  """One clip per camera file (.txt) under `root`, its frames under `frames_root`."""
  if not os.path.isdir(frames_root):
    raise DataError(frames_root, "no such folder (expected the frames root, holding "
                    "<clip_id>/<timestamp>.png folders)")
  if os.path.isfile(root):
    base, camera_files = os.path.dirname(os.path.abspath(root)), [root]
  else:
    base, camera_files = root, _camera_files(root)
  return _common.collect_clips(
      camera_files, lambda path: read_camera_file(path, _clip_id(base, path), frames_root),
      min_frames=min_frames, skip_bad_clips=skip_bad_clips)


def read_camera_file(path: str, clip_id: str, frames_root: str) -> Clip:
  """The clip of one camera file; its frames are `<frames_root>/<clip_id>/<timestamp>.<ext>`."""
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(path, f"cannot read the camera file ({e})", _MALFORMED) from None
  if not lines or not lines[0].strip() or _is_numbers(lines[0]):
    raise DataError(path, "line 1: expected the video URL", _MALFORMED)
  timestamps, rows, names, seen = [], [], [], set()
  for number, line in enumerate(lines[1:], 2):
    tokens = line.split()
    if not tokens:
      continue
    if len(tokens) != NUMBERS_PER_LINE or not _is_numbers(line) or not tokens[0].isdigit():
      raise DataError(path, f"line {number}: {line.strip()[:80]!r} has {len(tokens)} fields; "
                      f"expected {NUMBERS_PER_LINE} numbers: an integer timestamp_µs, fx fy cx cy "
                      "0 0 and a row-major 3×4 world-to-camera matrix", _MALFORMED)
    if tokens[0] in seen:
      raise DataError(path, f"line {number}: timestamp {tokens[0]} appears twice", _MALFORMED)
    seen.add(tokens[0])
    timestamps.append(tokens[0])
    rows.append([float(token) for token in tokens])
    names.append(f"line {number}, timestamp {tokens[0]}")
  _common.require_frames(path, len(rows))

  rows = np.array(rows)
  world_to_camera = rows[:, 7:].reshape(-1, 3, 4)
  cameras = camera_conventions.opencv_w2c_to_cameras(
      world_to_camera[:, :, :3], world_to_camera[:, :, 3], rows[:, 1:5], path, names)
  frame_folder = os.path.join(frames_root, *clip_id.split("/"))
  return Clip(clip_id, _frame_paths(frame_folder, timestamps, path), cameras, path)


def _camera_files(root: str) -> list[str]:
  paths = []
  for folder, _, files in os.walk(root, onerror=_common.raise_listing_error, followlinks=True):
    paths.extend(os.path.join(folder, name) for name in files if name.endswith(".txt"))
  if not paths:
    raise DataError(root, "no camera files (.txt) in it or in any folder below it (expected "
                    "RealEstate10K camera files)")
  return sorted(paths, key=_common.natural_key)


def _clip_id(base: str, path: str) -> str:
  return os.path.splitext(os.path.relpath(path, base))[0].replace(os.sep, "/")


def _is_numbers(line: str) -> bool:
  try:
    [float(token) for token in line.split()]
  except ValueError:
    return False
  return True


def _frame_paths(folder: str, timestamps: list[str], pose_file: str) -> list[str]:
  """The frame file of every timestamp; the folder is listed once."""
  try:
    present = set(os.listdir(folder))
  except OSError as e:
    raise DataError(folder, f"cannot list the frame folder ({e.strerror}); {pose_file} expects "
                    "its frames there as <timestamp>.png, .jpg or .jpeg",
                    "missing frames") from None
  paths = []
  for timestamp in timestamps:
    name = next((timestamp + ext for ext in FRAME_EXTENSIONS if timestamp + ext in present), None)
    if name is None:
      raise DataError(os.path.join(folder, timestamp + FRAME_EXTENSIONS[0]),
                      f"frame for timestamp {timestamp} (listed in {pose_file}) is missing; "
                      f"expected {timestamp}.png, .jpg or .jpeg", "missing frames")
    paths.append(os.path.join(folder, name))
  return paths
