r"""Trains FlashWorld: `python -m flashworld_jax.train --config=configs/train.py:pretrain_tiny --workdir=DIR`.

Every stage runs through this entry point and the one loop (`train.loop`); `--config.a.b=v` overrides
any field. Re-running the same command resumes from the workdir's latest checkpoint.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from flashworld_jax.data.clips import DataError
from flashworld_jax.train import distributed, loop

_CONFIG = config_flags.DEFINE_config_file("config", "configs/train.py:pretrain_tiny",
                                          "Training config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: config, metrics, checkpoints.")
_INIT_CHECKPOINT = flags.DEFINE_string(
    "init_checkpoint", None, "Start from this checkpoint's model components (converted weights or "
    "an earlier stage's checkpoints folder).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Stop after this many steps of this call.")
# Hand-started multi-process runs only: jax detects TPU pods and SLURM jobs by itself.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0's coordinator (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 ... n-1.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not _WORKDIR.value:
    print("error: --workdir is required", file=sys.stderr)
    sys.exit(1)
  # Before anything touches a device: joining the other processes must precede backend start-up.
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  # Orbax and the checkpoint machinery log every file at INFO; -v / --verbosity=0 shows them again.
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  cfg = _CONFIG.value
  if _INIT_CHECKPOINT.value:
    cfg.init_checkpoint = _INIT_CHECKPOINT.value
  try:
    summary = loop.run(cfg, _WORKDIR.value, _MAX_STEPS.value)
  except (loop.TrainingError, DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  app.run(main)
