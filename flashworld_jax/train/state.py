"""The train state: trainable parameters, optimizer state, EMA, step and the run's base RNG key.

The FlashWorld module is split once into (graphdef, trainable parameters, frozen rest): the frozen VAE
and text encoder (and buffers) are held once, outside the donated state. Step functions merge the
three back into a module inside `jit`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from flashworld_jax import sharding
from flashworld_jax.models.flashworld import FlashWorld, build_flashworld


class TrainState(NamedTuple):
  step: jax.Array            # int32 [], completed optimizer steps
  params: nnx.State          # trainable parameters (fp32 master weights)
  opt_state: optax.OptState
  ema: nnx.State             # exponential moving average of `params`
  rng: jax.Array             # uint32 key data of the run's base key; step keys are fold_in(base, step)


def trainable(names: Sequence[str]):
  """The NNX filter of the parameters under the named components."""
  return nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(name) for name in names)))


def make_optimizer(cfg_opt: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """AdamW after global-norm clipping, linear warm-up to a constant rate."""
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, cfg_opt.learning_rate, max(cfg_opt.warmup_steps, 1)),
       optax.constant_schedule(cfg_opt.learning_rate)], [max(cfg_opt.warmup_steps, 1)])
  del num_steps  # constant after warm-up (spec §13: no decay stated)
  return optax.chain(optax.clip_by_global_norm(cfg_opt.grad_clip_norm),
                     optax.adamw(schedule, b1=cfg_opt.b1, b2=cfg_opt.b2,
                                 weight_decay=cfg_opt.weight_decay))


def build_model(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> FlashWorld:
  """The model for training: from `cfg.init_checkpoint` where it has components, else random; the
  Gaussian head's learning-rate multipliers stay unfolded (they act under Adam)."""
  model, _ = build_flashworld(cfg.model, mesh, cfg.init_checkpoint or None, seed=cfg.seed,
                              for_training=True)
  return model


def create(model: nnx.Module, names: Sequence[str], tx: optax.GradientTransformation,
           seed: int, mesh: jax.sharding.Mesh):
  """(graphdef, TrainState, frozen state) with optimizer moments sharded like their parameters."""
  graphdef, params, frozen = nnx.split(model, trainable(names), ...)
  opt_state = init_optimizer(tx, params, mesh)
  rng = jax.random.key_data(jax.random.key(seed))
  replicated = sharding.named_sharding(mesh, ())
  state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), replicated), params=params,
                     opt_state=opt_state, ema=jax.tree.map(jnp.copy, params),
                     rng=jax.device_put(rng, replicated))
  return graphdef, state, frozen


def optimizer_shardings(tx: optax.GradientTransformation, params, mesh: jax.sharding.Mesh):
  """The shardings of `tx.init(params)`: each moment like its parameter, counts replicated.

  `jit` alone would replicate every moment (their zeros do not depend on the parameters' values):
  for the 5B DiT that is 39 GiB of Adam state on every device instead of its FSDP share. Call it
  outside `jax.set_mesh`: optax initialises a placeholder state eagerly, which would otherwise run
  on the mesh's devices (none exist in an AOT compile for a TPU topology).
  """
  return optax.tree_map_params(tx, lambda _, param: param.sharding,
                               jax.eval_shape(tx.init, params), params,
                               transform_non_params=lambda _: sharding.named_sharding(mesh, ()))


def init_optimizer(tx: optax.GradientTransformation, params, mesh: jax.sharding.Mesh):
  shardings = optimizer_shardings(tx, params, mesh)
  with jax.set_mesh(mesh):
    return jax.jit(tx.init, out_shardings=shardings)(params)


def shardings_of(tree):
  """The shardings of a tree of concrete arrays (the jit in/out shardings of the state)."""
  return jax.tree.map(lambda x: x.sharding, tree)


def step_key(state: TrainState) -> jax.Array:
  return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def guarded_update(params, opt_state, ema, grads, tx: optax.GradientTransformation,
                   ema_decay: float, ok: jax.Array):
  """(params, opt_state, ema) after one optimizer and EMA update, kept only where `ok` (finite loss
  and gradients, valid renders). `ema` may be None (a network without an EMA)."""
  updates, new_opt_state = tx.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  new_ema = None if ema is None else jax.tree.map(
      lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, new_params)
  return keep_where(ok, (new_params, new_opt_state, new_ema), (params, opt_state, ema))


def apply_gradients(state: TrainState, grads: nnx.State, tx: optax.GradientTransformation,
                    ema_decay: float, ok: jax.Array) -> TrainState:
  """`guarded_update` of a `TrainState`."""
  params, opt_state, ema = guarded_update(state.params, state.opt_state, state.ema, grads, tx,
                                          ema_decay, ok)
  return state._replace(params=params, opt_state=opt_state, ema=ema)


def keep_where(ok: jax.Array, new, old):
  """`new` if the scalar `ok` holds, else `old`.

  A `cond`, not a select per leaf: XLA fuses the predicate's reduction (an `and` over every
  gradient leaf) into each leaf's select, which made 63k of the tiny pre-training step's 198k
  optimised HLO instructions and 40 % of its CPU compile time.
  """
  return jax.lax.cond(ok, lambda: new, lambda: old)


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))
