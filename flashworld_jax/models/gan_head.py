"""The distillation discriminator's head on the fake-score DiT's hidden states (spec §13.3, our design).

Per tapped depth: block output tokens [B, V·h'·w', D] → per-view token grid [B·V, h', w', D] → two
3×3 convs, each followed by GroupNorm and SiLU → a 1×1 conv to one channel → mean over the grid and
the views → one logit per sample; the depths' logits are summed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class _DepthHead(nnx.Module):
  def __init__(self, width: int, channels: int, *, rngs: nnx.Rngs):
    groups = min(8, channels)
    self.conv1 = nnx.Conv(width, channels, (3, 3), padding="SAME", rngs=rngs)
    self.norm1 = nnx.GroupNorm(channels, num_groups=groups, rngs=rngs)
    self.conv2 = nnx.Conv(channels, channels, (3, 3), padding="SAME", rngs=rngs)
    self.norm2 = nnx.GroupNorm(channels, num_groups=groups, rngs=rngs)
    self.out = nnx.Conv(channels, 1, (1, 1), rngs=rngs)

  def __call__(self, grid: jax.Array) -> jax.Array:
    x = jax.nn.silu(self.norm1(self.conv1(grid)))
    x = jax.nn.silu(self.norm2(self.conv2(x)))
    return jnp.mean(self.out(x), axis=(1, 2, 3))


class GANHead(nnx.Module):
  """hidden [depths, B, V·h'·w', D] with the token grid (V, h', w') → logits [B] (fp32)."""

  def __init__(self, width: int, num_depths: int, channels: int, *, rngs: nnx.Rngs):
    self.heads = nnx.List([_DepthHead(width, channels, rngs=rngs) for _ in range(num_depths)])

  def __call__(self, hidden: jax.Array, grid: tuple[int, int, int]) -> jax.Array:
    if hidden.shape[0] != len(self.heads):
      raise ValueError(f"GANHead: {hidden.shape[0]} hidden depths given, built for {len(self.heads)}")
    views, h, w = grid
    batch = hidden.shape[1]
    logits = jnp.zeros((batch,), jnp.float32)
    for depth, head in enumerate(self.heads):
      tokens = hidden[depth].astype(jnp.float32).reshape(batch * views, h, w, -1)
      logits += head(tokens).reshape(batch, views).mean(axis=1)
    return logits
