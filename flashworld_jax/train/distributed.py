"""Multi-process start-up: `jax.distributed.initialize` once, before anything touches a device.

Where the processes come from decides the arguments:
  * Cloud TPU VMs and pod slices, SLURM (`srun`), Open MPI: jax's own cluster detection
    (`jax._src.clusters`) finds the coordinator, process count and id; we pass nothing.
  * Anything else (two local CPU processes in the tests, hand-started hosts): explicit
    `coordinator_address`, `num_processes`, `process_id` (also flags of
    `python -m flashworld_jax.train`), or jax's `JAX_COORDINATOR_ADDRESS` variable.
  * One process with nothing to detect: nothing to do; `jax.process_count()` stays 1.

Under SLURM jax gives each process the GPU whose index is its `SLURM_LOCALID` (one process per
GPU); a process that owns all of a node's GPUs needs `JAX_LOCAL_DEVICE_IDS=0,1,...` (launch/slurm.py
sets it).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from absl import logging
import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               local_device_ids: Sequence[int] | None = None) -> bool:
  """Joins the job's processes; returns whether jax.distributed is now initialized.

  Safe to call again (a second call returns at once). Arguments left None are auto-detected. Does
  not start the backends, so device-dependent settings may still follow.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = (coordinator_address, num_processes, process_id)
  if any(value is not None for value in explicit) or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    # Partial explicit arguments are completed by jax's detection or rejected by jax with a
    # message naming the missing one.
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids)
  else:
    try:
      jax.distributed.initialize(local_device_ids=local_device_ids)
    except ValueError as e:
      # jax raises this (before changing any state) when no cluster environment was detected.
      if "coordinator_address" not in str(e):
        raise
      logging.info("distributed: no cluster environment detected; running as one process")
      return False
  return True
