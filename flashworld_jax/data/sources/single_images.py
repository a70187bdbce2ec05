"""Single images and text prompts for distillation's out-of-distribution batches (spec §13.4).

They carry no cameras: the pipeline pairs them with sampled trajectories when it loads them.

Images: a folder searched recursively for .png, .jpg, .jpeg, .webp and .bmp files (any case):

    <image_root>/
      cats/001.jpg
      cats/001.txt          optional caption: the whole file, next to the image with the same stem
      street.png

A captions JSONL side file (`clips.read_captions`: {"clip_id": ..., "caption": ...} per line, with
the image's path relative to <image_root> as the id, e.g. "cats/001.jpg") takes precedence over a
.txt caption. An image with neither has no caption; an empty .txt caption is an error. Each image's
header is read to check that it is an image; the pipeline decodes the pixels (`clips.read_image`).

Prompts: a text file, or a folder of .txt files searched recursively, one prompt per line; blank
lines and lines starting with '#' are skipped, and a file without prompts is an error.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import NamedTuple

from absl import logging
from PIL import Image, UnidentifiedImageError

from flashworld_jax.data.clips import DataError, clip_id_from_path, read_captions
from flashworld_jax.data.sources import _common

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  image_id: str                # the path relative to the image root, '/' separators
  path: str
  caption: str | None = None


@dataclasses.dataclass(frozen=True)
class PromptRecord:
  prompt_id: str               # "<file relative to the prompt root>:<line number>"
  text: str


class ImageReport(NamedTuple):
  """The images read and, per reason, how many were skipped."""
  images: list[ImageRecord]
  skipped: collections.Counter


def read_image_folder(root: str, *, captions: str | None = None,
                      skip_bad_images: bool = False) -> ImageReport:
  """Every image under `root` with its caption. An unreadable image or an empty caption file is a
  DataError, or with `skip_bad_images` a logged, counted skip."""
  side_captions = read_captions(captions) if captions else {}
  paths = _files_under(root, IMAGE_EXTENSIONS, "images")
  images, skipped = [], collections.Counter()
  for path in paths:
    image_id = clip_id_from_path(root, path)
    try:
      _check_image(path)
      caption = side_captions.get(image_id)
      if caption is None:
        caption = _caption_file(path)
    except DataError as e:
      if not skip_bad_images:
        raise
      logging.warning("Skipping an image (%s): %s", e.reason, e)
      skipped[e.reason] += 1
      continue
    images.append(ImageRecord(image_id, path, caption))
  return ImageReport(images, skipped)


def read_prompts(path: str) -> list[PromptRecord]:
  """The prompts of a text file, or of every .txt file under a folder, in file and line order."""
  if os.path.isfile(path):
    base, files = os.path.dirname(os.path.abspath(path)), [path]
  else:
    base, files = path, _files_under(path, (".txt",), "prompt files")
  prompts = []
  for file in files:
    found = list(_prompt_lines(file, clip_id_from_path(base, file)))
    if not found:
      raise DataError(file, "holds no prompts (expected one prompt per line; blank lines and '#' "
                      "comments are skipped)", "empty file")
    prompts.extend(found)
  return prompts


def _files_under(root: str, extensions: tuple[str, ...], what: str) -> list[str]:
  if not os.path.isdir(root):
    raise DataError(root, f"no such folder (expected a folder of {what})")
  paths = []
  for folder, _, files in os.walk(root, onerror=_common.raise_listing_error, followlinks=True):
    paths.extend(os.path.join(folder, name) for name in files
                 if name.lower().endswith(extensions))
  if not paths:
    raise DataError(root, f"no {what} ({', '.join(extensions)}) in it or in any folder below it")
  return sorted(paths, key=_common.natural_key)


def _check_image(path: str) -> None:
  try:
    with Image.open(path):
      pass
  except (UnidentifiedImageError, OSError) as e:
    raise DataError(path, f"not a readable image ({e})", "unreadable image") from None


def _caption_file(image_path: str) -> str | None:
  """The caption in <stem>.txt beside the image, or None without that file."""
  path = os.path.splitext(image_path)[0] + ".txt"
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      caption = f.read().strip()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(path, f"cannot read the caption file ({e})", "unreadable caption") from None
  if not caption:
    raise DataError(path, f"caption file is empty (it captions {os.path.basename(image_path)}; "
                    "delete it for no caption)", "empty caption")
  return caption


def _prompt_lines(path: str, file_id: str):
  try:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(path, f"cannot read the prompt file ({e})", "unreadable file") from None
  for number, line in enumerate(lines, 1):
    text = line.strip()
    if text and not text.startswith("#"):
      yield PromptRecord(f"{file_id}:{number}", text)
