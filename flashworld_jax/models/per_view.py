"""A module applied to one view at a time, each view rematerialised in the backward pass.

For full-resolution per-view networks (the Gaussian decoder's trunk, the VAE encoder): only one
view's activations are live, forward or backward, instead of every view's. Costs one extra forward
per view in the backward pass.
"""
from typing import Any, Callable

import jax
from flax import nnx

from flashworld_jax import sharding


def map_views(module: nnx.Module, fn: Callable[..., Any], views: tuple[jax.Array, ...]) -> Any:
  """`fn(module, *view)` for each slice along the leading (view) axis of `views`, the per-view
  results concatenated along that axis: equal to `fn(module, *views)` for a per-view `fn`.

  `fn` sees every array with a leading axis of 1 and must return arrays (or a tree of them) with a
  leading axis of 1. On a mesh each device scans its own views (`sharding.map_local_batch`): a scan
  over the sharded view axis would gather them all onto every device.
  """
  graphdef, state = nnx.split(module)

  def local_views(state, local):
    # The scan closes over the weights' arrays (an NNX module cannot be closed over across it): as
    # loop constants they are held once; in the carry the backward pass would keep a copy of them
    # per view.
    @jax.checkpoint
    def one_view(_, view):
      return None, fn(nnx.merge(graphdef, state), *(a[None] for a in view))

    stacked = jax.lax.scan(one_view, None, local)[1]
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), stacked)

  return sharding.map_local_batch(local_views, views, state, logical_name="act_views")
