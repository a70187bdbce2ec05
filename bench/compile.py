"""Compile cost of the tiny training steps: the skipped-update guard as one `cond` (ours) against a
select per leaf (the reference it replaced).

  python -m bench.compile [--stages pretrain_tiny,distill_tiny]

For each stage, traces the step a run compiles (`train.aot.trace_step`, one CPU device), compiles it
and counts the optimised HLO's instructions and `and`s. With a select per leaf, XLA fuses the
guard's predicate (an `and` over every gradient leaf) into each parameter, moment and EMA leaf's
update. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import re
import time

import jax
import jax.numpy as jnp

from configs import train as train_configs
from flashworld_jax import sharding
from flashworld_jax.train import aot
from flashworld_jax.train import state as state_lib


def _select_per_leaf(ok, new, old):
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def _measure(stage: str) -> dict:
  jax.clear_caches()
  start = time.perf_counter()
  lowered = aot.trace_step(train_configs.get_config(stage), sharding.single_device_mesh()).lower()
  lowered_at = time.perf_counter()
  text = lowered.compile().as_text()
  return {"lower_s": round(lowered_at - start, 1),
          "compile_s": round(time.perf_counter() - lowered_at, 1),
          "hlo_instructions": len(re.findall(r"\n\s*(?:ROOT )?%\S+ = ", text)),
          "hlo_ands": text.count(" and(")}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--stages", default="pretrain_tiny,distill_tiny")
  args = parser.parse_args()
  ours = state_lib.keep_where
  result = {"backend": jax.default_backend()}
  for stage in args.stages.split(","):
    result[stage] = {"ours_one_cond": _measure(stage)}
    state_lib.keep_where = _select_per_leaf
    try:
      result[stage]["reference_select_per_leaf"] = _measure(stage)
    finally:
      state_lib.keep_where = ours
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
