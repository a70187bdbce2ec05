r"""Builds a training dataset in our on-disk format (`records`): synthetic scenes or a real layout.

  python -m flashworld_jax.data.build --dataset=synthetic --split=train --num_scenes=200 \
      --num_frames=24 --resolution=128,192 --output_dir=data/synthetic

  python -m flashworld_jax.data.build --dataset=nerfstudio --source_dir=DL3DV-10K/1K \
      --captions=captions.jsonl --resolution=480,704 --frame_stride=5 --max_frames=48 \
      --output_dir=data/dl3dv

Shards are written one at a time and atomically; running the same command again after an
interruption resumes at the first unfinished shard (a different setting is refused). The summary
(records, skipped clips by reason, time) is printed as JSON.
"""
from __future__ import annotations

import json
import sys
import time

from absl import app, flags, logging
from tqdm import tqdm

from flashworld_jax.data import clips as clips_lib
from flashworld_jax.data import records, sources, synthetic

DATASETS = ("synthetic", *sources.LAYOUTS)

_DATASET = flags.DEFINE_enum("dataset", None, DATASETS, "What to build.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Dataset folder (created; resumable).")
_SPLIT = flags.DEFINE_string("split", "train", "Split name (synthetic: train, validation or test).")
_NAME = flags.DEFINE_string("name", None, "Dataset name in file names; default: --dataset.")
_RESOLUTION = flags.DEFINE_string(
    "resolution", None, "H,W of stored frames (synthetic: required render size; real layouts: "
    "centre-crop and resize, intrinsics adjusted; default: keep each clip's own size).")
_NUM_SCENES = flags.DEFINE_integer("num_scenes", None, "Synthetic: scenes in the split.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 24, "Synthetic: views per scene.")
_MAX_OBJECTS = flags.DEFINE_integer("max_objects", 6, "Synthetic: objects per scene, at most.")
_SOURCE_DIR = flags.DEFINE_string("source_dir", None, "Real layouts: the dataset root on disk.")
_FRAMES_DIR = flags.DEFINE_string("frames_dir", None, "realestate10k: folder of per-clip frames.")
_IMAGES_DIR = flags.DEFINE_string(
    "images_dir", None, "nerfstudio: replaces the first folder of frames[].file_path (e.g. images_4); "
    "colmap: the images folder (default images).")
_CAPTIONS = flags.DEFINE_string("captions", None, "JSONL side file: {clip_id, caption} per line.")
_FRAME_STRIDE = flags.DEFINE_integer("frame_stride", 1, "Real layouts: keep every k-th frame.")
_MAX_FRAMES = flags.DEFINE_integer(
    "max_frames", None, "Real layouts: longer clips are stored as consecutive windows of this many "
    "frames (clip_id#k); nothing is dropped.")
_MIN_FRAMES = flags.DEFINE_integer("min_frames", 2, "Clips with fewer frames are bad data.")
_SKIP_BAD_CLIPS = flags.DEFINE_bool(
    "skip_bad_clips", False, "Skip bad clips with a counted warning instead of stopping.")
_ITEMS_PER_SHARD = flags.DEFINE_integer("items_per_shard", 16, "Scenes or clips per shard.")


class BuildError(ValueError):
  """Bad flags; reported as one line, exit status 1."""


def _resolution(required: bool) -> tuple[int, int] | None:
  text = _RESOLUTION.value
  if text is None:
    if required:
      raise BuildError("--resolution=H,W is required for --dataset=synthetic")
    return None
  try:
    height, width = (int(v) for v in text.split(","))
  except ValueError:
    raise BuildError(f"--resolution={text!r}: expected H,W, e.g. 128,192") from None
  if height < 16 or width < 16:
    raise BuildError(f"--resolution={text!r}: height and width must be ≥ 16")
  return height, width


def _positive(flag, value) -> int:
  if value is None or value < 1:
    raise BuildError(f"--{flag}={value!r}: expected a positive integer")
  return value


def _synthetic_plan(resolution):
  if _SPLIT.value not in synthetic.SPLITS:
    raise BuildError(f"--split={_SPLIT.value!r}: synthetic splits are {synthetic.SPLITS}")
  num_scenes = _positive("num_scenes", _NUM_SCENES.value)
  num_frames = _positive("num_frames", _NUM_FRAMES.value)
  if not 1 <= _MAX_OBJECTS.value <= 6:
    raise BuildError(f"--max_objects={_MAX_OBJECTS.value}: expected 1..6")
  renderer = synthetic.SceneRenderer(*resolution)

  def make_examples(i):
    example = synthetic.make_scene_example(_SPLIT.value, i, num_frames, renderer,
                                           max_objects=_MAX_OBJECTS.value)
    return [{**example, "source": "synthetic", "has_caption": True}]

  manifest = {"dataset": "synthetic", "num_scenes": num_scenes, "num_frames": num_frames,
              "resolution": list(resolution), "max_objects": _MAX_OBJECTS.value,
              "items_per_shard": _ITEMS_PER_SHARD.value, "format": records.VERSION}
  return num_scenes, make_examples, records.SYNTHETIC, manifest


def _windows(num_frames: int, max_frames: int | None) -> list[slice]:
  if not max_frames or num_frames <= max_frames:
    return [slice(0, num_frames)]
  # Equal windows that cover every frame; the last one may overlap its neighbour.
  starts = list(range(0, num_frames - max_frames + 1, max_frames))
  if starts[-1] + max_frames < num_frames:
    starts.append(num_frames - max_frames)
  return [slice(s, s + max_frames) for s in starts]


def clip_records(clip: clips_lib.Clip, source: str, resolution, frame_stride: int,
                 max_frames: int | None) -> list[dict]:
  """The records of one real clip: frames read, strided, cropped and resized, cut into windows."""
  frames = clips_lib.read_frames(clip)
  frames, cameras = frames[::frame_stride], clip.cameras[::frame_stride]
  if resolution is not None:
    frames, cameras = clips_lib.crop_resize_frames(frames, cameras, *resolution)
  windows = _windows(len(frames), max_frames)
  return [{"clip_id": clip.clip_id if len(windows) == 1 else f"{clip.clip_id}#{k}",
           "source": source, "images": frames[w], "cameras": cameras[w].astype("float32"),
           "caption": clip.caption or "", "has_caption": clip.caption is not None}
          for k, w in enumerate(windows)]


def _layout_plan(resolution):
  if not _SOURCE_DIR.value:
    raise BuildError(f"--source_dir is required for --dataset={_DATASET.value}")
  stride = _positive("frame_stride", _FRAME_STRIDE.value)
  if _MAX_FRAMES.value is not None:
    _positive("max_frames", _MAX_FRAMES.value)
  found, skipped_reading = sources.read(
      _DATASET.value, _SOURCE_DIR.value, frames_root=_FRAMES_DIR.value, images_dir=_IMAGES_DIR.value,
      captions=_CAPTIONS.value, min_frames=_positive("min_frames", _MIN_FRAMES.value) * stride,
      skip_bad_clips=_SKIP_BAD_CLIPS.value)
  if not found:
    raise BuildError(f"--source_dir={_SOURCE_DIR.value}: no usable {_DATASET.value} clips found"
                     + (f" (skipped: {dict(skipped_reading)})" if skipped_reading else ""))

  def make_examples(i):
    try:
      return clip_records(found[i], _DATASET.value, resolution, stride, _MAX_FRAMES.value)
    except clips_lib.DataError as e:
      if not _SKIP_BAD_CLIPS.value:
        raise
      logging.warning("skipping clip %s: %s", found[i].clip_id, e)
      return [{"skipped": e.reason}]

  manifest = {"dataset": _DATASET.value, "source_dir": _SOURCE_DIR.value,
              "resolution": list(resolution) if resolution else None, "frame_stride": stride,
              "max_frames": _MAX_FRAMES.value, "num_clips": len(found),
              "items_per_shard": _ITEMS_PER_SHARD.value, "format": records.VERSION}
  return len(found), make_examples, records.MULTIVIEW, manifest, skipped_reading


def build() -> dict:
  if not _DATASET.value or not _OUTPUT_DIR.value:
    raise BuildError("--dataset and --output_dir are required")
  _positive("items_per_shard", _ITEMS_PER_SHARD.value)
  skipped_reading = {}
  if _DATASET.value == "synthetic":
    plan = _synthetic_plan(_resolution(required=True))
  else:
    *plan, skipped_reading = _layout_plan(_resolution(required=False))
  num_items, make_examples, features, manifest = plan
  name = _NAME.value or _DATASET.value
  start = time.perf_counter()
  with tqdm(total=num_items, desc=f"{name}/{_SPLIT.value}", unit="clip") as bar:
    totals = records.build_split(
        _OUTPUT_DIR.value, name, _SPLIT.value, num_items, _ITEMS_PER_SHARD.value, make_examples,
        features, manifest, description=f"FlashWorld-JAX {_DATASET.value} data", progress=bar.update)
  for reason, count in skipped_reading.items():
    totals["skipped"][reason] = totals["skipped"].get(reason, 0) + count
  return {"dataset": _DATASET.value, "split": _SPLIT.value, "output_dir": _OUTPUT_DIR.value,
          **totals, "seconds": round(time.perf_counter() - start, 1)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    summary = build()
  except (BuildError, ValueError, records.BuildMismatchError) as e:  # DataError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  app.run(main)
