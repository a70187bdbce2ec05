"""The Grain training pipeline (no TensorFlow): sources mixed by weight, shuffled by seed, sampled,
sharded per host, batched with static shapes, with an iterator state that checkpoints save.

  src  ─ shuffle(seed) ─ repeat ─┐
  src' ─ shuffle(seed) ─ repeat ─┴─ mix(weights) ─ random_map(sample, seed) ─ [host::hosts] ─ batch

Every random choice comes from `random_map`'s per-element generator, so batch k is a function of
(config, seed, k) alone: two runs with one seed see the same batches, and a run resumed from a
saved iterator state continues with exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import grain
import jax
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
                 process_index: int | None = None, process_count: int | None = None
                 ) -> grain.MapDataset:
  """Batches of samples (dicts of arrays with a leading `batch_size // process_count` axis).

  `ood_sources` with `ood_weight` > 0 mixes single-image and text-only samples (spec §13.4) with the
  multi-view ones at that share. `tokenize(text)` adds token arrays to each sample (the trainer passes
  its tokenizer; data never imports models). Hosts get disjoint interleaved slices of one stream.
  """
  if not sources:
    raise ValueError("make_dataset needs at least one multi-view source")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of the {process_count} "
                     "processes")
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
  if process_count > 1:
    samples = samples[process_index::process_count]
  return samples.batch(batch_size // process_count, drop_remainder=True)


def make_iterator(dataset: grain.MapDataset, num_threads: int = 2, prefetch: int = 4):
  """An iterator with `get_state()` / `set_state()` for checkpoints (threads keep order)."""
  return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads,
                                                        prefetch_buffer_size=prefetch)))
