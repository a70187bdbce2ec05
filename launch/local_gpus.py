#!/usr/bin/env python3
r"""Trains on the GPUs of one machine: one process owning all of them (the JAX norm on one host).

  python launch/local_gpus.py --workdir=runs/pretrain [--gpus=0,1,2,3] [--config=...] [--dry_run]

The training process replaces this script (so SIGTERM and Ctrl-C reach the loop, which saves a
checkpoint), with GPU settings in its environment: collectives overlapped with compute, 90% of GPU
memory for XLA, and `--gpus` as CUDA_VISIBLE_DEVICES. No `jax.distributed` set-up is needed: the
mesh spans the local devices. `--dry_run` prints the command.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

_XLA_FLAGS = "--xla_gpu_enable_latency_hiding_scheduler=true"
_MEM_FRACTION = "0.9"


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--config", default="configs/train.py:pretrain_5b")
  p.add_argument("--extra_args", default="", help="more train flags, one shell-quoted string")
  p.add_argument("--gpus", help="comma-separated GPU indices (default: all)")
  p.add_argument("--python", default=sys.executable, help="interpreter of the project's venv")
  p.add_argument("--dry_run", action="store_true", help="print the command, run nothing")
  args = p.parse_args(argv)
  # The command runs from the repository root (where configs/ is), so a relative workdir is
  # resolved against the caller's folder first.
  if "://" not in args.workdir:
    args.workdir = os.path.abspath(args.workdir)
  return args


def command(args) -> list[str]:
  """`env VAR=value ... python -m flashworld_jax.train ...`: the environment is part of the line."""
  xla_flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), _XLA_FLAGS) if f)
  env = [f"XLA_FLAGS={xla_flags}", f"XLA_PYTHON_CLIENT_MEM_FRACTION={_MEM_FRACTION}"]
  if args.gpus:
    env.append(f"CUDA_VISIBLE_DEVICES={args.gpus}")
  return ["env", *env, args.python, "-m", "flashworld_jax.train", f"--config={args.config}",
          f"--workdir={args.workdir}", *shlex.split(args.extra_args)]


def main(argv=None) -> None:
  args = parse_args(argv)
  train = command(args)
  print(shlex.join(train), flush=True)
  if not args.dry_run:
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.execvp(train[0], train)


if __name__ == "__main__":
  main()
