"""UMT5 encoder (transformers `UMT5EncoderModel`): the text encoder of FlashWorld (spec §6).

T5 v1.1 blocks with a learned relative-position bias in every layer (the UMT5 change), no score
scaling, gated-GELU feed-forward and pre-norm T5 RMS norms with fp32 statistics. The residual
stream stays in fp32; matmuls run in `cfg.dtype` (bf16 by default, fp32 for parity) at
`cfg.matmul_precision` ("highest" for parity).
Layers are stacked on a leading `layers` axis (created with `nnx.vmap`, run with `nnx.scan`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from flashworld_jax import sharding
from flashworld_jax.models import precision, stacked


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """Bidirectional T5 buckets of `key_pos - query_pos`, int32 [query_length, key_length].

  Computed in numpy float32 in the same operation order as transformers, so that the log-spaced
  bucket edges (exact powers of two) round the same way.
  """
  relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
  half = num_buckets // 2
  buckets = (relative > 0).astype(np.int64) * half
  distance = np.abs(relative)
  max_exact = half // 2
  log_ratio = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
               / np.float32(math.log(max_distance / max_exact)))
  large = max_exact + (log_ratio * np.float32(half - max_exact)).astype(np.int64)
  large = np.minimum(large, half - 1)
  buckets += np.where(distance < max_exact, distance, large)
  return buckets.astype(np.int32)


class T5RMSNorm(nnx.Module):
  """x / rms(x) · scale; no mean subtraction, no bias, statistics in fp32."""

  def __init__(self, dim: int, eps: float, param_dtype: jnp.dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(variance + self.eps) * self.scale[...].astype(jnp.float32)


def _linear(in_features: int, out_features: int, names: tuple[str, str], stddev: float,
            cfg: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(
      in_features, out_features, use_bias=False, dtype=jnp.dtype(cfg.dtype),
      param_dtype=jnp.dtype(cfg.param_dtype),
      precision=precision.lax_precision(cfg.matmul_precision),
      kernel_init=nnx.with_partitioning(nnx.initializers.normal(stddev), names), rngs=rngs)


class SelfAttention(nnx.Module):
  """Bidirectional multi-head self-attention with this layer's own relative-position bias."""

  def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    self.num_heads, self.head_dim = cfg.num_heads, cfg.d_kv
    self.matmul_precision = cfg.matmul_precision
    inner = cfg.num_heads * cfg.d_kv
    self.q = _linear(cfg.d_model, inner, ("embed", "heads"), (cfg.d_model * cfg.d_kv) ** -0.5, cfg, rngs)
    self.k = _linear(cfg.d_model, inner, ("embed", "heads"), cfg.d_model ** -0.5, cfg, rngs)
    self.v = _linear(cfg.d_model, inner, ("embed", "heads"), cfg.d_model ** -0.5, cfg, rngs)
    self.o = _linear(inner, cfg.d_model, ("heads", "embed"), inner ** -0.5, cfg, rngs)
    self.relative_attention_bias = nnx.Param(
        nnx.initializers.normal(cfg.d_model ** -0.5)(
            rngs.params(), (cfg.relative_attention_num_buckets, cfg.num_heads),
            jnp.dtype(cfg.param_dtype)),
        out_sharding=("rel_buckets", "heads"))

  def __call__(self, x: jax.Array, buckets: jax.Array, key_mask: jax.Array) -> jax.Array:
    """x [B, L, D]; buckets int32 [L, L]; key_mask bool [B, 1, 1, L] → [B, L, D]."""
    batch, length, _ = x.shape

    def heads(t):
      t = t.reshape(batch, length, self.num_heads, self.head_dim)
      return sharding.constrain(t, ("act_batch", "act_length", "act_heads", "act_head_dim"))

    q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
    bias = jnp.take(self.relative_attention_bias[...].astype(jnp.float32), buckets, axis=0)
    bias = jnp.transpose(bias, (2, 0, 1))[None]                    # [1, H, L, L]
    # T5 folds the 1/sqrt(d) scale into its initialisation: scores are not scaled.
    with precision.attention_scope(self.matmul_precision):
      out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=key_mask, scale=1.0,
                                         implementation="xla")
    return self.o(out.reshape(batch, length, self.num_heads * self.head_dim))


class GatedGeluFeedForward(nnx.Module):
  """wo(gelu_tanh(wi_0 x) ⊙ wi_1 x)."""

  def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    self.wi_0 = _linear(cfg.d_model, cfg.d_ff, ("embed", "mlp"), cfg.d_model ** -0.5, cfg, rngs)
    self.wi_1 = _linear(cfg.d_model, cfg.d_ff, ("embed", "mlp"), cfg.d_model ** -0.5, cfg, rngs)
    self.wo = _linear(cfg.d_ff, cfg.d_model, ("mlp", "embed"), cfg.d_ff ** -0.5, cfg, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = jax.nn.gelu(self.wi_0(x), approximate=True) * self.wi_1(x)
    hidden = sharding.constrain(hidden, ("act_batch", "act_length", "act_mlp"))
    return self.wo(hidden)


class UMT5Block(nnx.Module):
  """Pre-norm residual self-attention, then pre-norm residual feed-forward."""

  def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    self.compute_dtype = jnp.dtype(cfg.dtype)
    param_dtype = jnp.dtype(cfg.param_dtype)
    self.attention_norm = T5RMSNorm(cfg.d_model, cfg.eps, param_dtype)
    self.attention = SelfAttention(cfg, rngs)
    self.ffn_norm = T5RMSNorm(cfg.d_model, cfg.eps, param_dtype)
    self.ffn = GatedGeluFeedForward(cfg, rngs)

  def __call__(self, x: jax.Array, buckets: jax.Array, key_mask: jax.Array) -> jax.Array:
    normed = self.attention_norm(x).astype(self.compute_dtype)
    x = x + self.attention(normed, buckets, key_mask).astype(jnp.float32)
    normed = self.ffn_norm(x).astype(self.compute_dtype)
    x = x + self.ffn(normed).astype(jnp.float32)
    return sharding.constrain(x, ("act_batch", "act_length", "act_embed"))


class UMT5Encoder(nnx.Module):
  """Token ids [B, L] + attention mask [B, L] → fp32 hidden states [B, L, d_model]."""

  def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    precision.check(cfg.matmul_precision, "text.matmul_precision")
    self.num_buckets = cfg.relative_attention_num_buckets
    self.max_distance = cfg.relative_attention_max_distance
    param_dtype = jnp.dtype(cfg.param_dtype)
    self.token_embedding = nnx.Embed(
        cfg.vocab_size, cfg.d_model, param_dtype=param_dtype,
        embedding_init=nnx.with_partitioning(nnx.initializers.normal(1.0), ("vocab", "embed")),
        rngs=rngs)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs: nnx.Rngs) -> UMT5Block:
      return UMT5Block(cfg, rngs)

    self.blocks = make_blocks(rngs)
    self.final_norm = T5RMSNorm(cfg.d_model, cfg.eps, param_dtype)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
      raise ValueError(f"UMT5Encoder: input_ids {input_ids.shape} and attention_mask "
                       f"{attention_mask.shape} must both be [batch, length]")
    length = input_ids.shape[1]
    buckets = jnp.asarray(
        relative_position_buckets(length, length, self.num_buckets, self.max_distance))
    # Padding keys are masked; padding queries still attend to the real tokens, as in transformers.
    key_mask = (attention_mask > 0)[:, None, None, :]
    x = self.token_embedding(input_ids).astype(jnp.float32)
    x = sharding.constrain(x, ("act_batch", "act_length", "act_embed"))

    x = stacked.scan_blocks(self.blocks, x, lambda block, x: block(x, buckets, key_mask))
    return self.final_norm(x)


def text_embeddings(encoder: UMT5Encoder, ids: jax.Array, mask: jax.Array) -> jax.Array:
  """Encodes ids [B, L] under mask [B, L] and zeroes every position past each prompt's length.

  The length is the number of real tokens (mask > 0, EOS included), as the reference keeps
  `hidden[:len]` and pads with zeros. Pure and jit-able; fp32 [B, L, d_model].
  """
  hidden = encoder(ids, mask)
  lengths = jnp.sum(mask > 0, axis=1)
  keep = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
  return jnp.where(keep[..., None], hidden, 0.0)


_jitted_text_embeddings = nnx.jit(text_embeddings)


def encode_text(encoder: UMT5Encoder, tokenizer, prompts: Sequence[str],
                max_length: int = 512) -> tuple[jax.Array, jax.Array]:
  """Prompts → (embeddings f32 [B, max_length, d_model], lengths int32 [B]), as the reference.

  Tokenises with EOS, pads/truncates to `max_length`, encodes with the attention mask and zeroes the
  embeddings past each prompt's length (real tokens including EOS). `tokenizer` is any object with
  `encode_batch(prompts, max_length) -> (ids, mask)` (see `flashworld_jax.models.tokenizer`). The
  "[Static] " prefix is the caller's business.
  """
  if isinstance(prompts, str):
    raise ValueError(f"encode_text: prompts must be a sequence of strings, got the string {prompts!r}")
  if not prompts:
    raise ValueError("encode_text: prompts is empty; expected at least one prompt")
  ids, mask = tokenizer.encode_batch(list(prompts), max_length)
  mask = jnp.asarray(mask, jnp.int32)
  embeddings = _jitted_text_embeddings(encoder, jnp.asarray(ids, jnp.int32), mask)
  return embeddings, jnp.sum(mask > 0, axis=1).astype(jnp.int32)
