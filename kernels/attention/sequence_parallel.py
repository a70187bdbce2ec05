"""Sequence-parallel attention over the mesh's `sequence` axis: all-to-all over heads (Ulysses).

Between attention calls the DiT's tokens are split along the sequence over the `sequence` axis
(`act_length`), and everything but attention is per token. Attention needs every key for each query,
so before it one all-to-all per q, k and v trades the sequence split for a split of the heads: each
device then holds the whole sequence for 1/s of its heads and runs the ordinary (single-device)
attention backend on them; one all-to-all on the output trades back.

Why all-to-all rather than ring attention: FlashWorld's sequences are short (7,920 tokens for 24
views of 480×704) and have 24 heads. All-to-all moves q, k, v and the output once each, four
collectives per layer with no per-step latency, and leaves the backend (splash, cuDNN, XLA) as it
is. Ring attention passes k and v around s times, each step a latency-bound transfer overlapped with
a block of compute; it pays off only when one sequence's k and v do not fit on a device, and ours
do. The price: the heads (per `tensor` shard) must divide by the `sequence` axis size s, so 24 heads
allow s = 2, 3, 4, 6, 8, 12 or 24 (with tensor = 1), and the sequence length must divide by s.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
from jax.sharding import PartitionSpec as P

from flashworld_jax import sharding
from kernels.attention import api

SEQUENCE_AXIS = "sequence"
MODES = ("none", "all_to_all")


def _mesh_axes(logical_name: str, mesh) -> tuple[str, ...]:
  axes = sharding.logical_to_spec((logical_name,))[0]
  axes = axes if isinstance(axes, tuple) else (axes,)
  return tuple(a for a in axes if a is not None and a in mesh.axis_names)


def _dividing(axes: tuple[str, ...], size: int, mesh) -> tuple[str, ...] | None:
  """`axes` if their mesh sizes divide `size`, else None (that dimension stays whole per device)."""
  return axes if axes and size % math.prod(mesh.shape[a] for a in axes) == 0 else None


def _attend_locally(q, k, v, *, implementation, interpret):
  """One device's part: sequence-split q, k, v → heads-split, attention, → sequence-split."""
  to_heads = lambda x: jax.lax.all_to_all(x, SEQUENCE_AXIS, 2, 1, tiled=True)  # noqa: E731
  out = api.dot_product_attention(to_heads(q), to_heads(k), to_heads(v),
                                  implementation=implementation, interpret=interpret)
  return jax.lax.all_to_all(out, SEQUENCE_AXIS, 1, 2, tiled=True)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          implementation: str | Sequence[str] = "auto",
                          interpret: bool = False) -> jax.Array:
  """`api.dot_product_attention` on [B, T, N, H], sequence-parallel over the current mesh.

  Without a mesh, or with a `sequence` axis of size 1, this is the plain call.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.shape.get(SEQUENCE_AXIS, 1) == 1:
    return api.dot_product_attention(q, k, v, implementation=implementation, interpret=interpret)
  size = mesh.shape[SEQUENCE_AXIS]
  batch_axes = _dividing(_mesh_axes("act_batch", mesh), q.shape[0], mesh)
  head_axes = _dividing(_mesh_axes("act_heads", mesh), q.shape[2], mesh)
  local_heads = q.shape[2] // math.prod(mesh.shape[a] for a in head_axes or ())
  if local_heads % size:
    raise ValueError(f"sequence-parallel attention: {local_heads} heads per tensor shard do not "
                     f"divide by the sequence axis size {size}")
  if q.shape[1] % size or k.shape[1] % size:
    raise ValueError(f"sequence-parallel attention: lengths {q.shape[1]} (q), {k.shape[1]} (kv) "
                     f"do not divide by the sequence axis size {size}")
  spec = P(batch_axes, SEQUENCE_AXIS, head_axes, None)
  local = functools.partial(_attend_locally, implementation=implementation, interpret=interpret)
  # check_vma=False: splash's backward (a Pallas call) returns cotangents without the varying-axes
  # annotation that check_vma=True expects.
  return jax.shard_map(local, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)
