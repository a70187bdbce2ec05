"""The `matmul_precision` config fields ("default" | "high" | "highest") of the DiT and the encoder.

They set how matmuls with fp32 operands run: "default" lets the backend choose (TF32 on recent
GPUs, one bf16 pass on TPU), "highest" is full fp32, which parity with torch needs.
"""
from __future__ import annotations

import contextlib

import jax

MATMUL_PRECISIONS = ("default", "high", "highest")


def check(name: str, field: str) -> str:
  if name not in MATMUL_PRECISIONS:
    raise ValueError(f"{field}={name!r}: expected one of {MATMUL_PRECISIONS}")
  return name


def lax_precision(name: str) -> jax.lax.Precision | None:
  """The `precision=` argument of dense layers and einsums; None keeps JAX's global default."""
  return None if name == "default" else jax.lax.Precision(name)


def attention_scope(name: str) -> contextlib.AbstractContextManager:
  """Precision for the attention call, which takes no `precision=` argument.

  XLA attention (jax.nn.dot_product_attention) runs fp32 einsums at JAX's default precision, so it
  is set around the call (read when tracing). cuDNN takes bf16 inputs only; splash is not verified
  to follow it.
  """
  return contextlib.nullcontext() if name == "default" else jax.default_matmul_precision(name)
