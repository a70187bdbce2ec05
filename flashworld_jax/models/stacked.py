"""Running stacked blocks (variables with a leading layer axis, made with `nnx.vmap`).

`jax.lax.scan` over the blocks' split state rather than `nnx.scan`: NNX transforms require a module's
variables to belong to the trace they run in, so a frozen network called inside another network's
gradient (the text encoder, the distillation teacher) would be refused; a plain scan over arrays
has no such rule and compiles to the same loop.
"""
from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx


def scan_blocks(blocks: nnx.Module, x: jax.Array, apply: Callable[[nnx.Module, jax.Array], jax.Array],
                remat_policy: Callable | None = None, remat: bool = False,
                keep_outputs: bool = False):
  """x through every block in order: x = apply(block_i, x); `remat` rematerialises each block's
  activations in the backward pass except what `remat_policy` saves (None: save nothing).

  With `keep_outputs` returns (x, every block's output stacked on a leading layer axis).
  """
  graphdef, state = nnx.split(blocks)

  def body(carry, block_state):
    y = apply(nnx.merge(graphdef, block_state), carry)
    return y, (y if keep_outputs else None)

  if remat:
    body = jax.checkpoint(body, policy=remat_policy)
  x, outputs = jax.lax.scan(body, x, state)
  return (x, outputs) if keep_outputs else x
