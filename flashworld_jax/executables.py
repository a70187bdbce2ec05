"""Compiled programs kept for the process, keyed by their StableHLO.

Work that lowers to a program already compiled in this process (a resumed run, the next request of a
`generate` folder, a sweep, the test suite) runs it without compiling again. The cache is bounded:
large executables hold device memory.
"""
from __future__ import annotations

import hashlib

import jax

_EXECUTABLES: dict[str, jax.stages.Compiled] = {}
MAX_EXECUTABLES = 32


def compile(lowered: jax.stages.Lowered) -> tuple[jax.stages.Compiled, bool]:  # noqa: A001
  """(`lowered` compiled, True when it was compiled now rather than found)."""
  key = hashlib.sha256(lowered.as_text().encode()).hexdigest()
  if key in _EXECUTABLES:
    return _EXECUTABLES[key], False
  if len(_EXECUTABLES) >= MAX_EXECUTABLES:
    del _EXECUTABLES[next(iter(_EXECUTABLES))]
  _EXECUTABLES[key] = lowered.compile()
  return _EXECUTABLES[key], True


def release() -> None:
  """Drops the kept executables (their memory goes once nothing else holds them)."""
  _EXECUTABLES.clear()
