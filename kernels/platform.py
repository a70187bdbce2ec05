"""The platform the kernels are traced for: the default backend's, or the one an ahead-of-time
compile targets. Lowering a TPU topology's step on a CPU host (`flashworld_jax.train.aot`) must pick
the TPU kernels (splash attention, the Pallas TPU compositor), not the host's XLA fall-backs, or
the compiled step's memory is that of attention scores materialised in full."""
from __future__ import annotations

import contextlib
import threading

import jax

_TARGET = threading.local()


def current() -> str:
  """'cpu', 'gpu' or 'tpu': the platform being compiled for."""
  return getattr(_TARGET, "platform", None) or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str):
  """Traces inside the block select the kernels of `platform` (e.g. a TPU topology's devices')."""
  previous = getattr(_TARGET, "platform", None)
  _TARGET.platform = platform
  try:
    yield
  finally:
    _TARGET.platform = previous
