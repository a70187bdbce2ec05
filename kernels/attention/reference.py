"""XLA attention: the CPU path and the oracle of the other backends."""
from __future__ import annotations

import jax


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q kᵀ / √head_dim) v on [B, T, N, H] (softmax statistics in fp32)."""
  return jax.nn.dot_product_attention(q, k, v, implementation="xla")
