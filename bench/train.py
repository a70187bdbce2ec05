"""Training step cost: `pretrain_tiny` measured on this machine, `pretrain_5b` from an AOT compile.

  python -m bench.train [--steps 10] [--data_dir data/synthetic-train] [--skip_5b]

(a) Runs the jitted `pretrain_tiny` step (the loop's own step, on batches of the built synthetic set)
and reports compile time, the median and best step seconds after one warm-up step, samples per
second and the process's peak resident memory.
(b) Compiles the `pretrain_5b` step (24 input + 8 novel views at 480×704, 5B DiT) from abstract
shapes on one CPU device (`train.aot`: nothing allocated) and reports the compiled FLOPs and the
per-device bytes XLA plans for arguments, outputs and temporaries (the whole global batch on one
device here; divide by the data-parallel size for a pod's per-device activations).

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time

import jax
import numpy as np

from configs import train as train_configs
from flashworld_jax import sharding
from flashworld_jax.data import pipeline, records, synthetic
from flashworld_jax.train import aot, loop, pretrain


def _synthetic_set(data_dir: str, num_scenes: int = 8) -> str:
  """A small synthetic training set at the tiny shapes (when no built one is given)."""
  renderer = synthetic.SceneRenderer(64, 96)
  make = lambda i: [{**synthetic.make_scene_example("train", i, 16, renderer),  # noqa: E731
                     "source": "synthetic", "has_caption": True}]
  records.build_split(data_dir, "synthetic", "train", num_scenes, 8, make, records.SYNTHETIC,
                      {"bench": num_scenes}, "bench.train")
  return data_dir


def bench_tiny(data_dir: str, steps: int) -> dict:
  cfg = train_configs.get_config("pretrain_tiny")
  cfg.data.train_dir = data_dir
  mesh = sharding.single_device_mesh()
  graphdef, state, frozen = pretrain.build(cfg, mesh)
  step = jax.jit(pretrain.make_step(cfg, graphdef, loop.render_settings(cfg)), donate_argnums=0)
  dataset = pipeline.make_dataset(loop.sources(cfg), loop.sample_spec(cfg), cfg.data.batch_size,
                                  cfg.seed, tokenize=loop.make_tokenize(cfg))
  iterator = pipeline.make_iterator(dataset)
  batches = [loop.global_batch(next(iterator), mesh) for _ in range(steps + 1)]
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    state, metrics = step(state, frozen, batches[0])
    jax.block_until_ready(metrics["loss"])
    first = time.perf_counter() - start
    times = []
    for batch in batches[1:]:
      start = time.perf_counter()
      state, metrics = step(state, frozen, batch)
      jax.block_until_ready(metrics["loss"])
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  return {"config": "pretrain_tiny", "batch_size": cfg.data.batch_size,
          "views": [cfg.data.num_input_views, cfg.data.num_novel_views],
          "resolution": [cfg.data.height, cfg.data.width],
          "trainable_parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
          "first_step_s (compile + run)": round(first, 2), "median_step_s": round(median, 3),
          "best_step_s": round(min(times), 3), "samples_per_s": round(cfg.data.batch_size / median, 3),
          "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
          "overflowed": bool(np.asarray(metrics["overflow"]))}


def bench_5b_aot() -> dict:
  cfg = train_configs.get_config("pretrain_5b")
  cfg.data.batch_size = 1
  mesh = sharding.make_mesh(1, 1, 1, 1, devices=jax.devices()[:1])
  start = time.perf_counter()
  report = aot.memory_and_flops(*aot.compile_step(cfg, mesh), 1)
  return {"config": "pretrain_5b", "batch_size": 1, "devices": 1,
          "views": [cfg.data.num_input_views, cfg.data.num_novel_views],
          "resolution": [cfg.data.height, cfg.data.width],
          "remat_policy": cfg.model.dit.remat_policy, "compile_s": round(time.perf_counter() - start, 1),
          "tflops_per_sample": round(report["flops"] / 1e12, 1),
          **{f"{k}_gb": round(v / 2**30, 2) for k, v in report.items() if k.endswith(
              ("argument", "output", "temp", "alias", "generated_code", "bytes"))}}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--data_dir", default="data/synthetic-train",
                      help="a built synthetic set; a small one is built in a temporary folder if absent")
  parser.add_argument("--skip_5b", action="store_true")
  args = parser.parse_args()
  result = {"benchmark": "training step", "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()}
  with tempfile.TemporaryDirectory() as scratch:
    data_dir = args.data_dir
    if not os.path.exists(os.path.join(data_dir, "dataset_info.json")):
      data_dir = _synthetic_set(scratch)
    result["pretrain_tiny"] = bench_tiny(data_dir, args.steps)
  if not args.skip_5b:
    result["pretrain_5b_aot"] = bench_5b_aot()
  result["loadavg_end"] = os.getloadavg()
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
