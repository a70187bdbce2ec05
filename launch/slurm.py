#!/usr/bin/env python3
r"""Trains on several GPU nodes under SLURM: renders an sbatch script and submits it.

  python launch/slurm.py --nodes=4 --gpus_per_node=8 --workdir=/shared/runs/pretrain_5b \
      [--processes=gpu|node] [--partition=P] [--account=A] [--time=24:00:00] [--dry_run]

The script (saved as <workdir>/slurm/<job_name>.sbatch, its output in <workdir>/slurm/<job id>.out)
runs `srun` with one task per GPU (`--processes=gpu`, the default: jax gives task i the GPU of its
SLURM_LOCALID) or one per node owning all its GPUs (`--processes=node`). Each task calls
`jax.distributed.initialize()` through `flashworld_jax.train`; jax reads the coordinator (the first
node of the step), process count and id from SLURM's variables. The code, the venv (`--venv`) and
the workdir must be on a filesystem every node mounts. `--dry_run` prints the script and the sbatch
command and writes nothing.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Overlap collectives with compute (NVIDIA's JAX-Toolbox default); let XLA take 90% of GPU memory.
_XLA_FLAGS = "--xla_gpu_enable_latency_hiding_scheduler=true"
_MEM_FRACTION = "0.9"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--nodes", type=int, required=True)
  p.add_argument("--gpus_per_node", type=int, default=8)
  p.add_argument("--processes", choices=("gpu", "node"), default="gpu",
                 help="one process per GPU, or per node owning all its GPUs")
  p.add_argument("--workdir", required=True, help="run folder on a filesystem every node mounts")
  p.add_argument("--config", default="configs/train.py:pretrain_5b")
  p.add_argument("--extra_args", default="", help="more train flags, one shell-quoted string")
  p.add_argument("--job_name", default="flashworld")
  p.add_argument("--partition")
  p.add_argument("--account")
  p.add_argument("--time", default="24:00:00")
  p.add_argument("--venv", default=os.path.join(_REPO, ".venv"),
                 help="venv with requirements.txt and jax[cuda13] installed")
  p.add_argument("--dry_run", action="store_true", help="print the script and the command only")
  args = p.parse_args(argv)
  if args.nodes < 1 or args.gpus_per_node < 1:
    p.error("--nodes and --gpus_per_node must be at least 1")
  if "://" in args.workdir:
    p.error(f"--workdir={args.workdir}: use a path on the filesystem every node mounts")
  args.workdir = os.path.abspath(args.workdir)
  return args


def script_path(args) -> str:
  return os.path.join(args.workdir, "slurm", f"{args.job_name}.sbatch")


def render(args) -> str:
  tasks_per_node = args.gpus_per_node if args.processes == "gpu" else 1
  directives = [f"--job-name={args.job_name}", f"--nodes={args.nodes}",
                f"--ntasks-per-node={tasks_per_node}", f"--gpus-per-node={args.gpus_per_node}",
                "--exclusive", f"--time={args.time}",
                # SIGTERM 5 minutes before the time limit: the loop saves a checkpoint and exits.
                "--signal=TERM@300",
                f"--output={os.path.join(args.workdir, 'slurm', '%j.out')}"]
  directives += [f"--{name}={value}" for name, value in
                 (("partition", args.partition), ("account", args.account)) if value]
  lines = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives)]
  lines += ["set -euo pipefail", f"cd {shlex.quote(_REPO)}",
            f'export XLA_FLAGS="${{XLA_FLAGS:-}} {_XLA_FLAGS}"',
            f"export XLA_PYTHON_CLIENT_MEM_FRACTION={_MEM_FRACTION}"]
  if args.processes == "node":
    # Without this jax would give the node's one process only the GPU of SLURM_LOCALID (0).
    lines.append("export JAX_LOCAL_DEVICE_IDS=" + ",".join(map(str, range(args.gpus_per_node))))
  train = [os.path.join(args.venv, "bin", "python"), "-m", "flashworld_jax.train",
           f"--config={args.config}", f"--workdir={args.workdir}", *shlex.split(args.extra_args)]
  # --kill-on-bad-exit: one failed task ends the step instead of leaving the others waiting.
  lines.append(shlex.join(["srun", f"--ntasks-per-node={tasks_per_node}",
                           "--kill-on-bad-exit=1", *train]))
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  args = parse_args(argv)
  script, path = render(args), script_path(args)
  command = ["sbatch", path]
  if args.dry_run:
    print(f"# {path}\n{script}{shlex.join(command)}", flush=True)
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(script)
  print(shlex.join(command), flush=True)
  if subprocess.call(command):
    raise SystemExit(f"error: command failed: {shlex.join(command)}")


if __name__ == "__main__":
  main()
