"""Building blocks of the Wan2.2 DiT: norms, RoPE, timestep sinusoid, attention, FFN, block.

Precision: norms, RoPE and AdaLN modulation in fp32; matmuls in `dtype` (bf16 by default) at
`matmul_precision`; the residual stream is kept in `dtype` and every residual update is done in
fp32, then cast (as the reference does).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from flashworld_jax import sharding
from flashworld_jax.models import precision
from kernels import attention
from kernels.attention import sequence_parallel

_F32 = jnp.float32
_ACTIVATIONS = {"silu": jax.nn.silu, "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}


@dataclasses.dataclass(frozen=True)
class DiTDims:
  """The static (hashable) part of a DiT config that the modules need."""
  width: int
  num_heads: int
  head_dim: int
  ffn_dim: int
  text_dim: int
  freq_dim: int
  eps: float
  rope_theta: float
  rope_max_seq_len: int
  dtype: jnp.dtype
  param_dtype: jnp.dtype
  attention: str
  matmul_precision: str
  sequence_parallel: str = "none"     # "all_to_all": self-attention split over mesh.sequence


def dense(in_features: int, out_features: int, names: tuple[str, str], dims: DiTDims, *,
          rngs: nnx.Rngs, dtype=None, preferred_element_type=None) -> nnx.Linear:
  """A Linear with bias whose kernel/bias carry the logical axis names `names` / `names[1]`."""
  return nnx.Linear(
      in_features, out_features, dtype=dims.dtype if dtype is None else dtype,
      param_dtype=dims.param_dtype, preferred_element_type=preferred_element_type,
      precision=precision.lax_precision(dims.matmul_precision),
      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), names),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), names[1:]), rngs=rngs)


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """Affine-free LayerNorm in fp32 (two-pass variance, as torch)."""
  x = x.astype(_F32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centred = x - mean
  return centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + eps)


class AffineLayerNorm(nnx.Module):
  """LayerNorm with learned scale and bias, computed in fp32."""

  def __init__(self, width: int, dims: DiTDims):
    self.eps = dims.eps
    self.scale = nnx.Param(jnp.ones((width,), dims.param_dtype), out_sharding=("norm",))
    self.bias = nnx.Param(jnp.zeros((width,), dims.param_dtype), out_sharding=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    return layer_norm(x, self.eps) * self.scale[...].astype(_F32) + self.bias[...].astype(_F32)


class RMSNorm(nnx.Module):
  """RMSNorm over the last axis with a learned scale, in fp32; returns fp32."""

  def __init__(self, width: int, dims: DiTDims):
    self.eps = dims.eps
    self.scale = nnx.Param(jnp.ones((width,), dims.param_dtype), out_sharding=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(_F32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return x * self.scale[...].astype(_F32)


def timestep_sinusoid(t: jax.Array, freq_dim: int) -> jax.Array:
  """[cos(t·f_k) | sin(t·f_k)], f_k = 10000^(−k/half), in fp32; t of any shape → [..., freq_dim]."""
  half = freq_dim // 2
  # Frequencies are computed in fp32 as diffusers does, so that large t rounds the same way.
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=_F32) / half)
  angles = t.astype(_F32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
  """Channels per RoPE axis (views, rows, columns), as diffusers' WanRotaryPosEmbed splits them."""
  spatial = 2 * (head_dim // 6)
  return head_dim - 2 * spatial, spatial, spatial


def rope_tables(grid: tuple[int, int, int], dims: DiTDims) -> tuple[jax.Array, jax.Array]:
  """cos and sin [V·h·w, head_dim/2] (one angle per channel pair) for a (views, rows, columns) grid.

  Each axis's angles are computed in float64 with numpy (the grid is static) and rounded to fp32, as
  diffusers does; only these small per-axis tables become constants, broadcast in the graph.
  """
  if any(n > dims.rope_max_seq_len for n in grid):
    raise ValueError(f"token grid (views, rows, columns) = {grid} exceeds rope_max_seq_len = "
                     f"{dims.rope_max_seq_len} positions per axis")
  cos_parts, sin_parts = [], []
  for axis, (n, dim) in enumerate(zip(grid, rope_axis_dims(dims.head_dim))):
    freqs = 1.0 / dims.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.outer(np.arange(n, dtype=np.float64), freqs)           # [n, dim/2]
    shape = [1, 1, 1, dim // 2]
    shape[axis] = n
    for parts, table in ((cos_parts, np.cos(angles)), (sin_parts, np.sin(angles))):
      table = jnp.asarray(table.astype(np.float32)).reshape(shape)
      parts.append(jnp.broadcast_to(table, (*grid, dim // 2)))
  flat = lambda parts: jnp.concatenate(parts, axis=-1).reshape(-1, dims.head_dim // 2)
  return flat(cos_parts), flat(sin_parts)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates interleaved channel pairs (2m, 2m+1) of x [B, L, N, H] by the [L, H/2] angles."""
  pairs = x.reshape(*x.shape[:-1], -1, 2)
  a, b = pairs[..., 0], pairs[..., 1]
  cos, sin = cos[:, None], sin[:, None]
  return jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)


def cross_attention_implementation(name: str) -> str | tuple[str, ...]:
  """Short text sequences stay off splash (jax.md §8); cuDNN still serves them on GPU."""
  return {"auto": ("cudnn", "xla"), "splash": "xla"}.get(name, name)


class Attention(nnx.Module):
  """Multi-head attention with RMSNorm on q and k across all heads; self- or cross-attention."""

  def __init__(self, dims: DiTDims, implementation: str | tuple[str, ...], *,
               sequence_parallel: str = "none", rngs: nnx.Rngs):
    inner = dims.num_heads * dims.head_dim
    self.num_heads, self.head_dim = dims.num_heads, dims.head_dim
    self.implementation = implementation
    self.sequence_parallel = sequence_parallel
    self.matmul_precision = dims.matmul_precision
    self.to_q = dense(dims.width, inner, ("embed", "heads"), dims, rngs=rngs)
    self.to_k = dense(dims.width, inner, ("embed", "heads"), dims, rngs=rngs)
    self.to_v = dense(dims.width, inner, ("embed", "heads"), dims, rngs=rngs)
    self.to_out = dense(inner, dims.width, ("heads", "embed"), dims, rngs=rngs)
    self.norm_q = RMSNorm(inner, dims)
    self.norm_k = RMSNorm(inner, dims)

  def _heads(self, x: jax.Array, length_name: str) -> jax.Array:
    x = x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)
    return sharding.constrain(x, ("act_batch", length_name, "act_heads", "act_head_dim"))

  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """x [B, L, D]; context [B, S, D] for cross-attention (None: self-attention)."""
    source, kv_length = (x, "act_length") if context is None else (context, "act_kv_length")
    dtype = x.dtype
    q = self._heads(self.norm_q(self.to_q(x)), "act_length")
    k = self._heads(self.norm_k(self.to_k(source)), kv_length)
    v = self._heads(self.to_v(source), kv_length)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    attend = (sequence_parallel.dot_product_attention if self.sequence_parallel == "all_to_all"
              else attention.dot_product_attention)
    with precision.attention_scope(self.matmul_precision):
      out = attend(q.astype(dtype), k.astype(dtype), v, implementation=self.implementation)
    out = checkpoint_name(out.reshape(*out.shape[:2], -1), "attention")
    return self.to_out(out)


class MLP(nnx.Module):
  """Linear → activation → Linear; the hidden axis carries the logical name `hidden_name`.

  `hidden_constraint`: logical names of the hidden activation [B, L, hidden], or None.
  """

  def __init__(self, in_features: int, hidden: int, out_features: int, activation: str,
               dims: DiTDims, *, in_name: str, hidden_name: str = "mlp", out_name: str = "embed",
               hidden_constraint: tuple[str, ...] | None = None, dtype=None, rngs: nnx.Rngs):
    self.activation = activation
    self.hidden_constraint = hidden_constraint
    self.linear_1 = dense(in_features, hidden, (in_name, hidden_name), dims, rngs=rngs, dtype=dtype)
    self.linear_2 = dense(hidden, out_features, (hidden_name, out_name), dims, rngs=rngs,
                          dtype=dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.linear_1(x)
    if self.hidden_constraint is not None:
      h = sharding.constrain(h, self.hidden_constraint)
    return self.linear_2(_ACTIVATIONS[self.activation](h))


def modulation_rows(table: jax.Array, mod: jax.Array) -> list[jax.Array]:
  """table [K, D] + mod [B, L|1, K, D] → K fp32 arrays [B, L|1, D]."""
  rows = table.astype(_F32) + mod.astype(_F32)
  return [rows[:, :, i] for i in range(table.shape[0])]


class Block(nnx.Module):
  """AdaLN self-attention (+RoPE), affine-LayerNorm cross-attention to text, AdaLN tanh-GELU FFN."""

  def __init__(self, dims: DiTDims, *, rngs: nnx.Rngs):
    self.eps = dims.eps
    self.attn1 = Attention(dims, dims.attention, sequence_parallel=dims.sequence_parallel,
                           rngs=rngs)
    self.attn2 = Attention(dims, cross_attention_implementation(dims.attention), rngs=rngs)
    self.norm2 = AffineLayerNorm(dims.width, dims)
    self.ffn = MLP(dims.width, dims.ffn_dim, dims.width, "gelu_tanh", dims, in_name="embed",
                   hidden_constraint=("act_batch", "act_length", "act_mlp"), rngs=rngs)
    init = jax.random.normal(rngs.params(), (6, dims.width), _F32) / math.sqrt(dims.width)
    self.scale_shift_table = nnx.Param(init.astype(dims.param_dtype),
                                       out_sharding=("modulation", "embed"))

  def __call__(self, x: jax.Array, context: jax.Array, mod: jax.Array,
               rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    """x [B, L, D] (residual dtype); context [B, S, D]; mod [B, L|1, 6, D] fp32."""
    dtype = x.dtype
    shift, scale, gate, c_shift, c_scale, c_gate = modulation_rows(self.scale_shift_table[...], mod)
    h = (layer_norm(x, self.eps) * (1 + scale) + shift).astype(dtype)
    x = (x.astype(_F32) + self.attn1(h, rope=rope).astype(_F32) * gate).astype(dtype)
    x = sharding.constrain(x, ("act_batch", "act_length", "act_embed"))
    x = x + self.attn2(self.norm2(x).astype(dtype), context).astype(dtype)
    h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(dtype)
    x = (x.astype(_F32) + self.ffn(h).astype(_F32) * c_gate).astype(dtype)
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed"))
