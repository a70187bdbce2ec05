"""Training checkpoints: one Orbax step holds the whole run and, beside it, a model `generate` reads.

Items per step: the train state (parameters, optimizer states, EMA, step, base RNG key), the data
position (the next global batch, whatever the process count) and the training config, plus the
model components in `flashworld_jax.checkpoint`'s layout (`dit`, `gaussian_decoder` from the EMA
weights by default, the frozen `vae` and `text_encoder`) and the model `config`, so
`generate --checkpoint=<workdir>/checkpoints` runs the latest step directly. Saves are asynchronous and atomic (a step appears only when complete); the
manager keeps the newest `keep` steps.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from flashworld_jax import checkpoint as model_checkpoint

STATE, DATA_ITERATOR, TRAIN_CONFIG = "train_state", "data_iterator", "train_config"


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  items = (STATE, DATA_ITERATOR, TRAIN_CONFIG) + model_checkpoint.COMPONENTS + (
      model_checkpoint.CONFIG_ITEM,)
  return ocp.CheckpointManager(
      directory(workdir), item_names=items,
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save))


def _as_dict(state) -> dict:
  return state._asdict() if hasattr(state, "_asdict") else dict(state)


def save(mngr: ocp.CheckpointManager, step: int, state, cfg: ml_collections.ConfigDict,
         components: Mapping[str, nnx.State]) -> None:
  """Starts an asynchronous save of step `step` (call `mngr.wait_until_finished()` before exiting).

  Every step reads one global batch, so the data position is the step's.
  """
  args = {STATE: ocp.args.StandardSave(_as_dict(state)),
          DATA_ITERATOR: ocp.args.JsonSave({"next_batch": step,
                                            "batch_size": cfg.data.batch_size}),
          TRAIN_CONFIG: ocp.args.JsonSave(cfg.to_dict()),
          model_checkpoint.CONFIG_ITEM: ocp.args.JsonSave(cfg.model.to_dict())}
  args.update({name: ocp.args.StandardSave(value) for name, value in components.items()})
  mngr.save(step, args=ocp.args.Composite(**args), force=True)


def restore(mngr: ocp.CheckpointManager, state):
  """(state, data position, step) of the latest step, restored into `state`'s shapes, dtypes
  and shardings (the live topology decides the layout); None when the run has no checkpoint."""
  step = mngr.latest_step()
  if step is None:
    return None
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), _as_dict(state))
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{STATE: ocp.args.StandardRestore(target), DATA_ITERATOR: ocp.args.JsonRestore()}))
  values = restored[STATE]
  return type(state)(**values) if hasattr(state, "_asdict") else values, restored[DATA_ITERATOR], step
