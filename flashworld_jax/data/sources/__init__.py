"""Readers of the multi-view layouts users have, each turning local files into `Clip`s.

    clips, skipped = sources.read("nerfstudio", root, captions="captions.jsonl", min_frames=24,
                                  skip_bad_clips=True)

Layouts (their modules describe the folder trees): "nerfstudio" (DL3DV-10K transforms.json),
"realestate10k" (camera text files plus extracted frames; needs `frames_root`), "colmap" (sparse
models, text or binary). Bad data raises a `DataError` naming the file and the problem; with
`skip_bad_clips` the clip is logged and counted in `skipped` under the error's reason instead.
Single images and prompts for distillation are read by `single_images`.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping

from absl import logging

from flashworld_jax.data.clips import DataError, attach_captions, read_captions
from flashworld_jax.data.sources._common import SourceReport
from flashworld_jax.data.sources.colmap import read_colmap
from flashworld_jax.data.sources.nerfstudio import read_nerfstudio
from flashworld_jax.data.sources.realestate10k import read_realestate10k
from flashworld_jax.data.sources.single_images import (ImageRecord, ImageReport, PromptRecord,
                                                       read_image_folder, read_prompts)

__all__ = [
    "LAYOUTS", "READERS", "ImageRecord", "ImageReport", "PromptRecord", "SourceReport", "read",
    "read_colmap", "read_image_folder", "read_nerfstudio", "read_prompts", "read_realestate10k",
]

READERS = {
    "nerfstudio": read_nerfstudio,
    "realestate10k": read_realestate10k,
    "colmap": read_colmap,
}
LAYOUTS = tuple(READERS)


def read(layout: str, root: str, *, captions: str | Mapping[str, str] | None = None,
         min_frames: int = 1, skip_bad_clips: bool = False, **options) -> SourceReport:
  """The clips of a dataset in one of the LAYOUTS, with captions keyed by clip id (a JSONL side
  file's path, or what `clips.read_captions` made of one).

  `options` are the layout's own (`frames_root` for realestate10k, `images_dir` for nerfstudio and
  colmap); None values are dropped, so a build command can pass all its flags to every layout.
  """
  if layout not in READERS:
    raise ValueError(f"unknown dataset layout {layout!r}; known: {', '.join(READERS)}")
  reader = READERS[layout]
  options = {name: value for name, value in options.items() if value is not None}
  accepted = inspect.signature(reader).parameters
  unknown = sorted(name for name in options if name not in accepted)
  if unknown:
    raise ValueError(f"{', '.join(unknown)} does not apply to the {layout} layout (its options: "
                     f"{', '.join(name for name in accepted if name != 'root')})")
  clips, skipped = reader(root, min_frames=min_frames, skip_bad_clips=skip_bad_clips, **options)
  if captions:
    clips = _with_captions(clips, captions)
  return SourceReport(clips, skipped)


def _with_captions(clips, captions: str | Mapping[str, str]):
  """Clips with their captions; captions that name none of the clips mean mismatched ids."""
  source = captions if isinstance(captions, str) else "the captions"
  if isinstance(captions, str):
    captions = read_captions(captions)
  matched = sum(clip.clip_id in captions for clip in clips)
  if clips and not matched:
    raise DataError(source, f"none of its {len(captions)} clip ids names one of the {len(clips)} "
                    f"clips read (their ids look like {clips[0].clip_id!r})")
  logging.info("Captions for %d of %d clips from %s", matched, len(clips), source)
  return list(attach_captions(clips, captions))

