"""Stage timings with compilation measured apart from execution (ahead-of-time lowering)."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging
import jax

from flashworld_jax import executables


def _signature(args) -> tuple:
  leaves, treedef = jax.tree.flatten(args)
  return treedef, tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x))),
                         str(getattr(x, "sharding", None))) for x in leaves)


class Timings:
  """Seconds per stage: `compile[kind]` (once per kind and input signature) and `run[name]`."""

  def __init__(self):
    self.compile: dict[str, float] = {}
    self.run_seconds: dict[str, float] = {}
    self._compiled: dict[tuple, Callable] = {}

  @contextlib.contextmanager
  def measure(self, name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    self.run_seconds[name] = self.run_seconds.get(name, 0.0) + time.perf_counter() - start

  def compiled(self, kind: str, jitted: Callable, *args) -> Callable:
    """`jitted.lower(*args).compile()`, cached per (function, argument signature); the time of a
    compile is recorded, a program this process compiled before (an earlier request) costs none.

    The function is part of the key: two functions of one kind with the same arguments (a render
    re-run with a grown capacity) are different programs.
    """
    key = (kind, jitted, _signature(args))
    if key not in self._compiled:
      start = time.perf_counter()
      self._compiled[key], compiled_now = executables.compile(jitted.lower(*args))
      if compiled_now:
        seconds = time.perf_counter() - start
        self.compile[kind] = self.compile.get(kind, 0.0) + seconds
        logging.info("compiled %-13s %8.3f s", kind, seconds)
    return self._compiled[key]

  def run(self, name: str, kind: str, jitted: Callable, *args) -> Any:
    """Compiles (if needed), runs and waits; run time is recorded under `name`."""
    compiled = self.compiled(kind, jitted, *args)
    with self.measure(name):
      out = jax.block_until_ready(compiled(*args))
    # Doubles as the progress report of long runs.
    logging.info("%-22s %8.3f s", name, self.run_seconds[name])
    return out

  def as_dict(self) -> dict:
    return {"compile_seconds": dict(self.compile), "run_seconds": dict(self.run_seconds),
            "total_compile_seconds": sum(self.compile.values()),
            "total_run_seconds": sum(self.run_seconds.values())}
