"""Orbax checkpoints of model components: written by the converter and the trainers, read everywhere.

A checkpoint directory is an Orbax `CheckpointManager` root. Each step holds one item per component
(`dit`, `vae`, `gaussian_decoder`, `text_encoder`, any subset) plus the `config` JSON it was made with.
Restores always go into the sharded abstract state of a live model, so the target topology decides
the layout, never the saved one.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

COMPONENTS = ("dit", "vae", "gaussian_decoder", "text_encoder")
CONFIG_ITEM = "config"


class CheckpointError(ValueError):
  """A checkpoint is missing, incomplete or does not match the model."""


def _manager(directory: str, create: bool) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(create=create, enable_async_checkpointing=False),
      item_names=COMPONENTS + (CONFIG_ITEM,))


def save_components(directory: str, states: Mapping[str, nnx.State],
                    config: ml_collections.ConfigDict | None = None, step: int = 0) -> None:
  """Writes the given component states atomically as one Orbax step."""
  unknown = sorted(set(states) - set(COMPONENTS))
  if unknown:
    raise CheckpointError(f"unknown component(s) {unknown}; expected names from {COMPONENTS}")
  args = {name: ocp.args.StandardSave(state) for name, state in states.items()}
  if config is not None:
    args[CONFIG_ITEM] = ocp.args.JsonSave(config.to_dict())
  with _manager(directory, create=True) as mngr:
    mngr.save(step, args=ocp.args.Composite(**args), force=True)
    mngr.wait_until_finished()


def _latest_step_dir(directory: str) -> tuple[ocp.CheckpointManager, int]:
  if not os.path.isdir(directory):
    raise CheckpointError(f"checkpoint directory {directory!r} does not exist")
  mngr = _manager(directory, create=False)
  step = mngr.latest_step()
  if step is None:
    mngr.close()
    raise CheckpointError(f"checkpoint directory {directory!r} holds no complete Orbax step")
  return mngr, step


def available_components(directory: str) -> set[str]:
  mngr, step = _latest_step_dir(directory)
  with mngr:
    step_dir = os.path.join(os.path.abspath(directory), str(step))
    return {name for name in COMPONENTS if os.path.isdir(os.path.join(step_dir, name))}


def _restore_state(directory: str, name: str, state: nnx.State) -> nnx.State:
  """Restores component `name` into the shapes, dtypes and shardings of `state`."""
  if name not in COMPONENTS:
    raise CheckpointError(f"unknown component {name!r}; expected one of {COMPONENTS}")
  present = available_components(directory)
  if name not in present:
    raise CheckpointError(
        f"checkpoint {directory!r} has no {name!r} component (it has {sorted(present) or 'none'})")
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), state)
  mngr, step = _latest_step_dir(directory)
  with mngr:
    try:
      restored = mngr.restore(step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(target)}))
    except (ValueError, KeyError) as e:  # Orbax reports tree or shape mismatches this way.
      raise CheckpointError(
          f"checkpoint {directory!r}: component {name!r} does not match the model built from the "
          f"config ({e})") from e
  return restored[name]


def restore_component(directory: str, name: str, model: nnx.Module) -> None:
  """Loads component `name` into `model` in place, keeping `model`'s shardings."""
  nnx.update(model, _restore_state(directory, name, nnx.state(model)))


def load_component(directory: str, name: str, create_fn: Callable[[], nnx.Module],
                   mesh: jax.sharding.Mesh) -> nnx.Module:
  """Builds `create_fn()` abstractly (nothing allocated) and fills it from the checkpoint.

  Large models are never random-initialised just to be overwritten. Call under the logical rules.
  """
  graphdef, abstract = nnx.get_abstract_model(create_fn, mesh)
  return nnx.merge(graphdef, _restore_state(directory, name, abstract))


def restore_config(directory: str) -> ml_collections.ConfigDict | None:
  mngr, step = _latest_step_dir(directory)
  with mngr:
    step_dir = os.path.join(os.path.abspath(directory), str(step))
    if not os.path.isdir(os.path.join(step_dir, CONFIG_ITEM)):
      return None
    restored = mngr.restore(step, args=ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
  return ml_collections.ConfigDict(restored[CONFIG_ITEM])
