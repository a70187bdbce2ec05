"""The one on-disk format of every training source: TFDS metadata over array_record shards.

A dataset folder holds, per split, shards `<name>-<split>.array_record-0000k-of-0000n` that we write
ourselves (atomically, one at a time, so an interrupted build resumes at the first missing shard),
a `<split>.build.json` manifest of the build that made them, and TFDS's `dataset_info.json` /
`features.json`, so `tfds.builder_from_directory(folder).as_data_source(split)` reads it without
TensorFlow and the training pipeline has one reader.

Every record holds `MULTIVIEW` features: clip id, source, uint8 frames [F, H, W, 3], float32
11-number cameras [F, 11] (spec §7.1; intrinsics normalised by the stored frames' size), the caption
("" with `has_caption` False when the clip has none). Synthetic records add z-depth, the scene's
Gaussians, its graph and trajectory kind (`SYNTHETIC`).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from flashworld_jax.io import atomic

VERSION = "1.0.0"
_ZLIB = tfds.features.Encoding.ZLIB
MULTIVIEW = {
    "clip_id": tfds.features.Text(),
    "source": tfds.features.Text(),
    "images": tfds.features.Tensor(shape=(None, None, None, 3), dtype=np.uint8, encoding=_ZLIB),
    "cameras": tfds.features.Tensor(shape=(None, 11), dtype=np.float32),
    "caption": tfds.features.Text(),
    "has_caption": tfds.features.Scalar(dtype=np.bool_),
}
SYNTHETIC = {
    **MULTIVIEW,
    "depth": tfds.features.Tensor(shape=(None, None, None), dtype=np.float16, encoding=_ZLIB),
    "gaussians": tfds.features.Tensor(shape=(None, 14), dtype=np.float32, encoding=_ZLIB),
    "scene": tfds.features.Text(),
    "trajectory": tfds.features.Text(),
}
_WRITER_OPTIONS = "group_size:1"   # one record per chunk: random access reads one example


def features_dict(features: dict) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(dict(features))


def shard_path(data_dir: str, name: str, split: str, shard: int, num_shards: int) -> str:
  return os.path.join(data_dir, f"{name}-{split}.array_record-{shard:05d}-of-{num_shards:05d}")


def _manifest_path(data_dir: str, split: str) -> str:
  return os.path.join(data_dir, f"{split}.build.json")


def _shard_summary_path(path: str) -> str:
  return path + ".summary.json"


class BuildMismatchError(ValueError):
  """A resumed build whose settings differ from the ones that wrote the existing shards."""


def start_build(data_dir: str, split: str, manifest: dict) -> None:
  """Records the build's settings, or checks them against an interrupted build's."""
  os.makedirs(data_dir, exist_ok=True)
  path = _manifest_path(data_dir, split)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      previous = json.load(f)
    changed = {k: (previous.get(k), v) for k, v in manifest.items() if previous.get(k) != v}
    if changed:
      listing = ", ".join(f"{k}: {old!r} then, {new!r} now" for k, (old, new) in changed.items())
      raise BuildMismatchError(f"{data_dir}: split {split!r} was started with other settings "
                               f"({listing}); use a new --output_dir or the same settings")
    return
  atomic.write_text(path, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def write_shard(path: str, features: tfds.features.FeaturesDict,
                examples: Iterable[dict]) -> dict:
  """Writes one shard atomically (temporary name, then rename); returns its summary.

  A skipped item appears in `examples` as `{"skipped": reason}`; the summary counts records and
  skips by reason.
  """
  tmp = path + ".tmp"
  writer = array_record_module.ArrayRecordWriter(tmp, _WRITER_OPTIONS)
  summary = {"records": 0, "skipped": {}}
  try:
    for example in examples:
      if "skipped" in example:
        reason = example["skipped"]
        summary["skipped"][reason] = summary["skipped"].get(reason, 0) + 1
        continue
      writer.write(features.serialize_example(example))
      summary["records"] += 1
  finally:
    writer.close()
  atomic.write_text(_shard_summary_path(path), json.dumps(summary) + "\n")
  os.replace(tmp, path)
  return summary


def read_shard_summary(path: str) -> dict | None:
  """The summary of a finished shard, or None if the shard is missing or unfinished."""
  if not os.path.exists(path) or not os.path.exists(_shard_summary_path(path)):
    return None
  with open(_shard_summary_path(path), encoding="utf-8") as f:
    return json.load(f)


def finish_split(data_dir: str, name: str, split: str, num_shards: int,
                 features: tfds.features.FeaturesDict, description: str) -> dict:
  """Writes TFDS metadata covering every finished split of the folder; returns this split's totals."""
  summaries = [read_shard_summary(shard_path(data_dir, name, split, k, num_shards))
               for k in range(num_shards)]
  missing = [k for k, s in enumerate(summaries) if s is None]
  if missing:
    raise RuntimeError(f"{data_dir}: split {split!r} is missing shards {missing}")
  split_infos = []
  for other in _finished_splits(data_dir, name):
    lengths = _shard_lengths(data_dir, name, other)
    split_infos.append(tfds.core.SplitInfo(name=other, shard_lengths=lengths, num_bytes=0,
                                           filename_template=None))
  tfds.folder_dataset.write_metadata(data_dir=data_dir, features=features, split_infos=split_infos,
                                     version=VERSION, check_data=False, description=description)
  skipped: dict[str, int] = {}
  for s in summaries:
    for reason, count in s["skipped"].items():
      skipped[reason] = skipped.get(reason, 0) + count
  return {"records": sum(s["records"] for s in summaries), "skipped": skipped,
          "shards": num_shards}


def _finished_splits(data_dir: str, name: str) -> list[str]:
  splits = []
  for entry in sorted(os.listdir(data_dir)):
    if entry.endswith(".build.json"):
      split = entry[:-len(".build.json")]
      if _shard_lengths(data_dir, name, split) is not None:
        splits.append(split)
  return splits


def _shard_lengths(data_dir: str, name: str, split: str) -> list[int] | None:
  """Record counts of a split's shards, or None unless every shard is finished."""
  pattern = re.compile(re.escape(f"{name}-{split}.array_record-") + r"(\d{5})-of-(\d{5})$")
  shards = sorted(e for e in os.listdir(data_dir) if pattern.match(e))
  if not shards:
    return None
  num_shards = int(pattern.match(shards[0]).group(2))
  summaries = [read_shard_summary(shard_path(data_dir, name, split, k, num_shards))
               for k in range(num_shards)]
  if any(s is None for s in summaries):
    return None
  return [s["records"] for s in summaries]


def build_split(data_dir: str, name: str, split: str, num_items: int, items_per_shard: int,
                make_examples: Callable[[int], list[dict]], features: dict, manifest: dict,
                description: str, progress: Callable[[int], None] | None = None) -> dict:
  """Writes items 0..num_items−1 of a split in shards, skipping shards an earlier run finished.

  `make_examples(i)` returns item i's records (a long clip may give several) or [{"skipped": reason}].
  `progress(n)` is told of every n items done (finished shards at start included). Returns the
  split's totals.
  """
  if num_items < 1 or items_per_shard < 1:
    raise ValueError(f"num_items and items_per_shard must be ≥ 1, got {num_items}, {items_per_shard}")
  start_build(data_dir, split, manifest)
  features_spec = features_dict(features)
  num_shards = -(-num_items // items_per_shard)
  for shard in range(num_shards):
    items = range(shard * items_per_shard, min(num_items, (shard + 1) * items_per_shard))
    path = shard_path(data_dir, name, split, shard, num_shards)
    if read_shard_summary(path) is None:
      write_shard(path, features_spec, _with_progress(items, make_examples, progress))
    elif progress:
      progress(len(items))
  return finish_split(data_dir, name, split, num_shards, features_spec, description)


def _with_progress(items: Sequence[int], make_examples, progress):
  for i in items:
    yield from make_examples(i)
    if progress:
      progress(1)


def open_split(data_dir: str, split: str):
  """A random-access source of a built split (numpy records; text comes back as bytes)."""
  if not os.path.exists(os.path.join(data_dir, "dataset_info.json")):
    raise FileNotFoundError(f"{data_dir}: not a built dataset (no dataset_info.json); build it with "
                            "python -m flashworld_jax.data.build")
  builder = tfds.builder_from_directory(data_dir)
  if split not in builder.info.splits:
    raise ValueError(f"{data_dir}: no split {split!r}; it has {sorted(builder.info.splits)}")
  return builder.as_data_source(split=split)
