"""Timing helpers shared by the benchmarks: warm-up, then best and median wall seconds."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import jax


def _seconds(fn: Callable) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _summary(times: list[float]) -> dict:
  return {"best_s": min(times), "median_s": statistics.median(times)}


def timed(fn: Callable, repeats: int) -> dict:
  """Calls `fn` once to warm up (compilation, caches), then `repeats` times."""
  jax.block_until_ready(fn())
  return _summary([_seconds(fn) for _ in range(repeats)])


def timed_interleaved(fns: Mapping[str, Callable], repeats: int) -> dict:
  """Warms every contender up, then alternates them run by run, so that load from other processes
  hits all of them alike."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(_seconds(fn))
  return {name: _summary(t) for name, t in times.items()}
