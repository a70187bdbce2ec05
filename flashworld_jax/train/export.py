r"""Exports a training run's model: `python -m flashworld_jax.train.export --workdir=DIR --output=DIR`.

A run's checkpoint steps hold the whole training state (optimizer moments, data iterator) beside the
model; the export keeps only the model components (EMA weights) and the model config, as one Orbax
step that `generate --checkpoint` and `--init_checkpoint` read. This is what ships (the demo model).
"""
from __future__ import annotations

import os
import shutil

from absl import app, flags, logging
from flax import nnx

from flashworld_jax import checkpoint, cli, sharding
from flashworld_jax.models.flashworld import build_flashworld
from flashworld_jax.train import checkpoints



def export(workdir: str, output: str) -> set[str]:
  """Writes the latest step's model components of `workdir` to `output`; returns their names."""
  source = checkpoints.directory(workdir)
  try:
    cfg = checkpoint.restore_config(source)
    present = checkpoint.available_components(source)
  except checkpoint.CheckpointError as e:
    raise checkpoint.CheckpointError(f"--workdir={workdir}: {e}") from e
  if cfg is None:
    raise checkpoint.CheckpointError(f"{source}: the latest step has no model config")
  mesh = sharding.single_device_mesh()
  model, _ = build_flashworld(cfg, mesh, source, for_training=True)
  states = {name: nnx.state(getattr(model, name)) for name in sorted(present)}
  # Written beside the target and swapped in, so an interrupted export never leaves half a model.
  staging = output.rstrip("/") + ".partial"
  shutil.rmtree(staging, ignore_errors=True)
  checkpoint.save_components(staging, states, cfg)
  shutil.rmtree(output, ignore_errors=True)
  os.replace(staging, output)
  return set(states)


def define_flags() -> None:
  """Defined when run as a command only: the trainer's entry point has a --workdir of its own."""
  flags.DEFINE_string("workdir", None, "Training run folder (holds checkpoints/).")
  flags.DEFINE_string("output", None, "Folder to write the exported model to (replaced).")


def main(argv):
  fv = flags.FLAGS
  try:
    if len(argv) > 1:
      raise checkpoint.CheckpointError(f"unexpected arguments {argv[1:]}")
    if not fv.workdir or not fv.output:
      raise checkpoint.CheckpointError("--workdir and --output are required")
    if not fv["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    names = export(fv.workdir, fv.output)
  except checkpoint.CheckpointError as e:
    cli.exit_with_error(str(e))
  print(f"exported {', '.join(sorted(names))} to {fv.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
