"""TPU splash attention (Pallas / Mosaic) behind the [B, T, N, H] interface.

Splash works per example on [heads, seq, head_dim], so batches are vmapped and, under a multi-device
mesh, the call runs inside `jax.shard_map` (a Pallas call cannot be partitioned by GSPMD). Sequence
lengths that the block sizes do not divide are padded; the padding is kept out of every real row by
segment ids (real tokens 0, padding 1).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec as P

from kernels import platform

_LANE = 128          # splash blocks must be multiples of the TPU lane width
_MAX_BLOCK = 512


def default_block(length: int) -> int:
  """The largest useful block for a sequence: a multiple of 128, at most 512."""
  return min(_MAX_BLOCK, _LANE * math.ceil(length / _LANE))


def _block_sizes(block_q: int, block_kv: int) -> splash.BlockSizes:
  return splash.BlockSizes(
      block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
      block_q_dkv=block_q, block_kv_dkv=block_kv, block_kv_dkv_compute=block_kv,
      block_q_dq=block_q, block_kv_dq=block_kv)


def _pad_to(x: jax.Array, length: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))


def _local_attention(q, k, v, *, block_q: int, block_kv: int, interpret: bool) -> jax.Array:
  """Splash on the local [B, T, N, H] arrays (one device's shard)."""
  _, q_len, heads, head_dim = q.shape
  kv_len = k.shape[1]
  padded_q = block_q * math.ceil(q_len / block_q)
  padded_kv = block_kv * math.ceil(kv_len / block_kv)
  mask = splash.MultiHeadMask([splash.FullMask((padded_q, padded_kv))] * heads)
  kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1,
                                  block_sizes=_block_sizes(block_q, block_kv), interpret=interpret)
  segment_ids = None
  if padded_q != q_len or padded_kv != kv_len:
    segment_ids = splash.SegmentIds(
        q=jnp.asarray(np.arange(padded_q) >= q_len, jnp.int32),
        kv=jnp.asarray(np.arange(padded_kv) >= kv_len, jnp.int32))
  # Splash does not scale the logits.
  q = (q.astype(jnp.float32) * (1.0 / math.sqrt(head_dim))).astype(q.dtype)
  to_heads_major = lambda x, n: jnp.swapaxes(_pad_to(x, n), 1, 2)   # [B, N, T, H]
  run = jax.vmap(lambda q1, k1, v1: kernel(q1, k1, v1, segment_ids=segment_ids))
  out = run(to_heads_major(q, padded_q), to_heads_major(k, padded_kv), to_heads_major(v, padded_kv))
  return jnp.swapaxes(out, 1, 2)[:, :q_len]


def _divisible_spec(shape, batch_axes, head_axes, mesh) -> P:
  """P(batch, None, heads, None), dropping any axis whose mesh size does not divide the dimension."""
  def fit(axes, size):
    axes = tuple(a for a in (axes if isinstance(axes, tuple) else (axes,)) if a is not None)
    return axes if axes and size % math.prod(mesh.shape[a] for a in axes) == 0 else None
  return P(fit(batch_axes, shape[0]), None, fit(head_axes, shape[2]), None)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False,
                          block_q: int | None = None, block_kv: int | None = None,
                          batch_axes=("data", "fsdp"), head_axes="tensor") -> jax.Array:
  """Splash attention on [B, T, N, H] with the standard 1/√H scale.

  Raises NotImplementedError off TPU (unless `interpret`) and for head_dim not a multiple of 128 on
  TPU hardware, so `api.dot_product_attention` can fall through to XLA.
  """
  if not interpret and platform.current() != "tpu":
    raise NotImplementedError("splash attention needs a TPU backend (or interpret=True)")
  if not interpret and q.shape[-1] % _LANE:
    raise NotImplementedError(f"splash attention needs head_dim % {_LANE} == 0, got {q.shape[-1]}")
  block_q = block_q or default_block(q.shape[1])
  block_kv = block_kv or default_block(k.shape[1])
  local = functools.partial(_local_attention, block_q=block_q, block_kv=block_kv,
                            interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or mesh.size == 1:
    return local(q, k, v)
  known = set(mesh.axis_names)
  batch_axes = tuple(a for a in (batch_axes if isinstance(batch_axes, tuple) else (batch_axes,))
                     if a in known)
  head_axes = head_axes if head_axes in known else None
  spec = _divisible_spec(q.shape, batch_axes, head_axes, mesh)
  kv_spec = P(spec[0], None, spec[2], None)
  return jax.shard_map(local, in_specs=(spec, kv_spec, kv_spec), out_specs=spec,
                       check_vma=False)(q, k, v)
