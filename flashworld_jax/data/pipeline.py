"""The Grain training pipeline (no TensorFlow): sources mixed by weight, shuffled by seed, sampled,
each process reading its own rows of every global batch, batched with static shapes.

  src  ─ shuffle(seed) ─ repeat ─┐
  src' ─ shuffle(seed) ─ repeat ─┴─ mix(weights) ─ random_map(sample, seed) ─ [rows] ─ batch

Every random choice comes from `random_map`'s per-element generator, so global batch k is samples
k·B … k·B+B−1 of one stream, a function of (config, seed, k) alone: two runs with one seed see the
same batches in the same row order whatever their process count (each process reads its own rows
of every batch), and a run resumed at batch k continues with exactly the batches an uninterrupted
run would have seen, on any number of processes.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import grain
import numpy as np

from flashworld_jax.data import ood, records, sampling
from flashworld_jax.data.sampling import SampleSpec


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """A built multi-view split and its mixing weight."""
  data_dir: str
  split: str = "train"
  weight: float = 1.0


def _open(source: SourceSpec):
  data = records.open_split(source.data_dir, source.split)
  if len(data) == 0:
    raise ValueError(f"{source.data_dir}: split {source.split!r} has no records")
  return data


def _mixed(datasets: Sequence[grain.MapDataset], weights: Sequence[float]) -> grain.MapDataset:
  if len(datasets) == 1:
    return datasets[0]
  if any(w <= 0 for w in weights):
    raise ValueError(f"source weights must be positive, got {list(weights)}")
  return grain.MapDataset.mix(list(datasets), list(weights))


def make_dataset(sources: Sequence[SourceSpec], spec: SampleSpec, batch_size: int, seed: int, *,
                 ood_sources: ood.OODSources | None = None, ood_weight: float = 0.0,
                 tokenize: Callable[[str], dict] | None = None,
                 rows: Sequence[int] | None = None) -> grain.MapDataset:
  """Batches of samples (dicts of arrays with a leading `len(rows)` axis): `rows` of each global
  batch of `batch_size` (all of them when None; a process passes `sharding.process_batch_rows`).

  `ood_sources` with `ood_weight` > 0 mixes single-image and text-only samples (spec §13.4) with the
  multi-view ones at that share. `tokenize(text)` adds token arrays to each sample (the trainer passes
  its tokenizer; data never imports models).
  """
  if not sources:
    raise ValueError("make_dataset needs at least one multi-view source")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  rows = np.arange(batch_size) if rows is None else np.asarray(rows)
  if (rows.ndim != 1 or not len(rows) or not np.issubdtype(rows.dtype, np.integer)
      or rows.min() < 0 or rows.max() >= batch_size or len(np.unique(rows)) != len(rows)):
    raise ValueError(f"rows must be distinct integers in [0, {batch_size}) (batch_size), got "
                     f"{rows.tolist()}")
  opened = [_open(s) for s in sources]
  tagged = [grain.MapDataset.source(data).shuffle(seed=seed + i).repeat().map(
      lambda r: ("multiview", r)) for i, data in enumerate(opened)]
  weights = [s.weight for s in sources]
  if ood_weight > 0.0:
    if ood_sources is None:
      raise ValueError("ood_weight > 0 needs ood_sources (single images and/or prompts)")
    total = sum(weights)
    weights = [w * (1.0 - ood_weight) / total for w in weights] + [ood_weight]
    # An OOD element is only an index: trajectories and contents are drawn in `sample`.
    tagged.append(grain.MapDataset.range(2**62).map(lambda i: ("ood", None)))
  mixed = _mixed(tagged, weights)

  def sample(element, rng: np.random.Generator) -> dict:
    tag, record = element
    if tag == "multiview":
      result = sampling.multiview_sample(record, spec, rng)
    else:
      result = ood.ood_sample(ood_sources, opened[0], spec, rng)
    if tokenize is not None:
      result.update(tokenize(result["text"]))
    return result

  samples = mixed.random_map(sample, seed=seed)
  if len(rows) < batch_size:
    samples = _rows_of_each_batch(samples, batch_size, rows)
  return samples.batch(len(rows), drop_remainder=True)


def _rows_of_each_batch(samples: grain.MapDataset, batch_size: int,
                        rows: np.ndarray) -> grain.MapDataset:
  """Element i·len(rows)+j is sample i·batch_size + rows[j]: a random_map's element is a function
  of its index, so this reads exactly the samples a process holding every row would place there."""
  per_batch = len(rows)
  return grain.MapDataset.range(len(samples) // batch_size * per_batch).map(
      lambda i: samples[i // per_batch * batch_size + int(rows[i % per_batch])])


def make_iterator(dataset: grain.MapDataset, num_threads: int = 2, prefetch: int = 4):
  """The batches in order (threads keep it); a resumed run iterates `dataset[next_batch:]`."""
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                        prefetch_buffer_size=prefetch)))
