"""Attention dispatcher: one call, the best available backend.

`implementation` is "auto", one backend name, or a sequence of names tried in order; a backend that
cannot handle the platform, shape or dtype raises NotImplementedError and the next one is tried.
"auto" means cuDNN on GPU, splash on TPU, and XLA everywhere as the last resort.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from flashworld_jax import sharding
from kernels import platform
from kernels.attention import pallas_tpu, reference

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash")
_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def _xla(q, k, v, interpret):
  del interpret
  return reference.dot_product_attention(q, k, v)


def _cudnn(q, k, v, interpret):
  del interpret
  if platform.current() != "gpu":
    raise NotImplementedError("cuDNN attention needs a GPU backend")
  if q.dtype not in _CUDNN_DTYPES:
    raise NotImplementedError(f"cuDNN attention needs bf16/fp16 inputs, got {q.dtype}")
  if q.shape[-1] % 8 or q.shape[-1] > 256:
    raise NotImplementedError(f"cuDNN attention needs head_dim % 8 == 0 and ≤ 256, got {q.shape[-1]}")
  return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


def _splash(q, k, v, interpret):
  batch_axes = sharding.logical_to_spec(("act_batch",))[0]
  head_axes = sharding.logical_to_spec(("act_heads",))[0]
  return pallas_tpu.dot_product_attention(q, k, v, interpret=interpret,
                                          batch_axes=batch_axes, head_axes=head_axes)


_BACKENDS = {"xla": _xla, "cudnn": _cudnn, "splash": _splash}


def _candidates(implementation: str | Sequence[str]) -> tuple[str, ...]:
  names = (implementation,) if isinstance(implementation, str) else tuple(implementation)
  resolved = []
  for name in names:
    if name == "auto":
      resolved += {"gpu": ["cudnn"], "tpu": ["splash"]}.get(platform.current(), []) + ["xla"]
    elif name in _BACKENDS:
      resolved.append(name)
    else:
      raise ValueError(f"attention implementation={implementation!r}: unknown name {name!r}; "
                       f"expected one of {IMPLEMENTATIONS} or a sequence of them")
  return tuple(resolved)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          implementation: str | Sequence[str] = "auto",
                          interpret: bool = False) -> jax.Array:
  """softmax(q kᵀ / √H) v for q [B, Tq, N, H] and k, v [B, Tkv, N, H]; returns [B, Tq, N, H].

  `interpret=True` runs Pallas backends in interpret mode (CPU tests).
  """
  if q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or (
      q.shape[0], q.shape[2:]) != (k.shape[0], k.shape[2:]):
    raise ValueError(f"attention: expected q [B, Tq, N, H] and k = v [B, Tkv, N, H]; got q "
                     f"{q.shape}, k {k.shape}, v {v.shape}")
  errors = []
  for name in _candidates(implementation):
    try:
      return _BACKENDS[name](q, k, v, interpret)
    except NotImplementedError as e:
      errors.append(f"{name}: {e}")
  raise NotImplementedError(f"no attention backend of {implementation!r} can run: {errors}")
