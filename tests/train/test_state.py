"""The train state's optimizer moments live where their parameters live."""
import jax
import jax.numpy as jnp
from flax import nnx

from configs import train as train_configs
from flashworld_jax import sharding
from flashworld_jax.train import state as state_lib


class _Layer(nnx.Module):
  def __init__(self, rngs):
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), (16, 8)), out_sharding=("embed", "mlp"))
    self.scale = nnx.Param(jnp.ones((8,)), out_sharding=("norm",))


def test_adam_moments_are_sharded_like_their_parameters_and_counts_replicated(mesh8):
  with jax.set_mesh(mesh8), sharding.rules():
    layer = _Layer(nnx.Rngs(0))
  tx = state_lib.make_optimizer(train_configs.get_config("pretrain_tiny").optimizer, 10)
  graphdef, state, frozen = state_lib.create(layer, ["kernel", "scale"], tx, 0, mesh8)
  del graphdef, frozen
  kernel_spec = state.params["kernel"].sharding.spec
  assert kernel_spec == sharding.logical_to_spec(("embed", "mlp"))     # (fsdp, tensor)
  adam = state.opt_state[1][0]
  for moments in (adam.mu, adam.nu):
    assert moments["kernel"].sharding.spec == kernel_spec
    assert moments["kernel"].sharding.shard_shape((16, 8)) == (8, 2)
    assert moments["scale"].sharding.is_fully_replicated
  for leaf in jax.tree.leaves(state.opt_state):
    if leaf.ndim == 0:
      assert leaf.sharding.is_fully_replicated


def test_a_skipped_update_keeps_the_old_state_and_compiles_one_predicate():
  """The guard's predicate reduces over every gradient leaf; it must be computed once, not fused
  into each leaf's update (that was a third of the pre-training step's HLO)."""
  leaves = 48
  old = {f"w{i}": jnp.full((4, 4), float(i)) for i in range(leaves)}

  def update(grads):
    new = jax.tree.map(lambda w, g: w - g, old, grads)
    return state_lib.keep_where(state_lib.all_finite(grads), new, old)

  ones = jax.tree.map(jnp.ones_like, old)
  kept = jax.jit(update)({**ones, "w3": ones["w3"].at[1, 2].set(jnp.nan)})
  assert all(bool(jnp.all(kept[k] == old[k])) for k in old)
  updated = jax.jit(update)(ones)
  assert all(bool(jnp.all(updated[k] == old[k] - 1)) for k in old)
  hlo = jax.jit(update).lower(ones).compile().as_text()
  assert hlo.count(" and(") < 2 * leaves
