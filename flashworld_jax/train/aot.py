"""Ahead-of-time compilation of a training step from abstract shapes: no weight is allocated.

`compile_step(cfg, mesh)` builds the model and optimizer state with `nnx.eval_shape` under the mesh
(shapes, dtypes and shardings only), lowers the stage's jitted step on an abstract batch and compiles
it; `memory_analysis()` and `cost_analysis()` of the result give per-device bytes and FLOPs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from flashworld_jax import sharding
from flashworld_jax.models.flashworld import FlashWorld, _constructors
from flashworld_jax.train import loop
from flashworld_jax.train import state as state_lib


def abstract_batch(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict:
  """The pipeline's global batch as ShapeDtypeStructs split over the mesh's batch axes."""
  d = cfg.data
  b, v = d.batch_size, d.num_input_views + d.num_novel_views
  spec = NamedSharding(mesh, P(("data", "fsdp")))
  shapes = {"images": ((b, v, d.height, d.width, 3), jnp.uint8),
            "cameras": ((b, v, 11), jnp.float32), "view_mask": ((b, v), jnp.bool_),
            "condition_index": ((b,), jnp.int32), "s_norm": ((b,), jnp.float32),
            "kind": ((b,), jnp.int32), "token_ids": ((b, cfg.model.text.max_length), jnp.int32),
            "token_mask": ((b, cfg.model.text.max_length), jnp.int32)}
  return {k: jax.ShapeDtypeStruct(s, dt, sharding=spec) for k, (s, dt) in shapes.items()}


def abstract_state(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, trainable,
                   tx: optax.GradientTransformation):
  """(graphdef, abstract TrainState, abstract frozen state), each leaf with its target sharding."""
  with jax.set_mesh(mesh), sharding.rules():
    abstract_model = nnx.eval_shape(
        lambda: FlashWorld(**{name: make() for name, make in _constructors(cfg.model, 0).items()}))
    graphdef, params, frozen = nnx.split(abstract_model, state_lib.trainable(trainable), ...)
    opt_state = jax.eval_shape(tx.init, params)
  with_sharding = lambda tree: jax.tree.map(_with_named_sharding(mesh), tree)  # noqa: E731
  replicated = NamedSharding(mesh, P())
  scalar = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)  # noqa: E731
  key_shape = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  state = state_lib.TrainState(step=scalar((), jnp.int32), params=with_sharding(params),
                               opt_state=with_sharding(opt_state), ema=with_sharding(params),
                               rng=scalar(key_shape.shape, key_shape.dtype))
  return graphdef, state, with_sharding(frozen)


def _with_named_sharding(mesh):
  def convert(leaf):
    sharding_ = getattr(leaf, "sharding", None)
    if not isinstance(sharding_, NamedSharding):
      sharding_ = NamedSharding(mesh, P())
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding_)
  return convert


def compile_step(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """The stage's step compiled for `mesh` from abstract inputs (any backend the mesh's devices have,
  including TPU topologies described by `jax.experimental.topologies`)."""
  stage = loop.STAGES[cfg.stage]
  tx = state_lib.make_optimizer(cfg.optimizer, cfg.num_steps)
  graphdef, state, frozen = abstract_state(cfg, mesh, stage.TRAINABLE, tx)
  step = stage.make_step(cfg, graphdef, tx, loop.render_settings(cfg))
  shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
  batch = abstract_batch(cfg, mesh)
  jitted = jax.jit(step, in_shardings=(shardings(state), shardings(frozen), shardings(batch)),
                   out_shardings=(shardings(state), None), donate_argnums=0)
  with jax.set_mesh(mesh):
    return jitted.lower(state, frozen, batch).compile()


def memory_and_flops(compiled) -> dict:
  """Per-device bytes (arguments, outputs, temporaries, aliased) and FLOPs of a compiled step."""
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report = {name: int(getattr(memory, f"{name}_size_in_bytes", 0))
            for name in ("argument", "output", "temp", "alias", "generated_code")}
  report["peak_estimate_bytes"] = (report["argument"] + report["output"] + report["temp"]
                                   - report["alias"])
  report["flops"] = float(cost.get("flops", 0.0)) if cost else 0.0
  return report
