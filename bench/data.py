"""Training data: synthetic scenes built per minute, and Grain pipeline batches per second, one run.

  python -m bench.data [--num_scenes 20 --views 24 --height 128 --width 192]
  python -m bench.data --num_scenes=4          # a quick check that it runs

(a) Builds `--num_scenes` synthetic scenes with the build entry point's calls (records.build_split
over synthetic.make_scene_example) into a temporary folder. The first scene carries the
rasterizer's compilation, so it is reported apart from the steady-state rate of the others; the
minutes for `--extrapolate_to` scenes and the shard bytes per scene follow from both.
(b) Builds a small dataset at the tiny training shapes, then times pipeline.make_dataset +
make_iterator batches after `--warmup` untimed ones.

Prints one JSON object. The data threads and the renderer compete with anything else on the host:
`os.cpu_count()` and the load average at start and end tell a loaded machine.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax

from flashworld_jax.data import pipeline, records, scene_graph, synthetic
from flashworld_jax.data.sampling import SampleSpec

_NAME, _SPLIT = "synthetic", "train"


def _build(data_dir: str, num_scenes: int, views: int, height: int, width: int,
           max_objects: int) -> list[float]:
  """Builds the split like `python -m flashworld_jax.data.build --dataset=synthetic`; returns the
  perf_counter times at its start, after each scene, and at its end (metadata written)."""
  renderer = synthetic.SceneRenderer(height, width)
  times = [time.perf_counter()]

  def make_examples(i):
    example = synthetic.make_scene_example(_SPLIT, i, views, renderer, max_objects=max_objects)
    times.append(time.perf_counter())
    return [{**example, "source": "synthetic", "has_caption": True}]

  manifest = {"dataset": "synthetic", "num_scenes": num_scenes, "num_frames": views,
              "resolution": [height, width], "max_objects": max_objects, "format": records.VERSION}
  records.build_split(data_dir, _NAME, _SPLIT, num_scenes, 16, make_examples, records.SYNTHETIC,
                      manifest, description="bench.data")
  times.append(time.perf_counter())
  return times


def _shard_bytes(data_dir: str) -> int:
  return sum(os.path.getsize(os.path.join(data_dir, n)) for n in os.listdir(data_dir)
             if ".array_record-" in n and not n.endswith((".json", ".tmp")))


def bench_build(args) -> dict:
  with tempfile.TemporaryDirectory() as data_dir:
    times = _build(data_dir, args.num_scenes, args.views, args.height, args.width,
                   args.max_objects)
    size = _shard_bytes(data_dir)
  first = times[1] - times[0]
  # From the first scene's end to the build's end: scenes 2..N with their serialisation and writes.
  steady = (times[-1] - times[1]) / (args.num_scenes - 1)
  return {"num_scenes": args.num_scenes, "views": args.views, "height": args.height,
          "width": args.width, "max_objects": args.max_objects,
          "first_scene_s": round(first, 3),
          "compile_estimate_s": round(first - steady, 3),
          "steady_s_per_scene": round(steady, 3),
          "steady_scenes_per_minute": round(60.0 / steady, 2),
          f"extrapolated_minutes_for_{args.extrapolate_to}":
              round((first + (args.extrapolate_to - 1) * steady) / 60.0, 2),
          "bytes_per_scene": size // args.num_scenes,
          "total_s": round(times[-1] - times[0], 3)}


def bench_pipeline(args) -> dict:
  spec = SampleSpec(num_input_views=args.input_views, num_novel_views=args.novel_views,
                    height=args.pipeline_height, width=args.pipeline_width,
                    min_frame_stride=1, max_frame_stride=1)
  with tempfile.TemporaryDirectory() as data_dir:
    _build(data_dir, args.pipeline_scenes, args.pipeline_views, args.pipeline_height,
           args.pipeline_width, args.max_objects)
    start = time.perf_counter()
    dataset = pipeline.make_dataset([pipeline.SourceSpec(data_dir)], spec, args.batch_size, seed=0)
    iterator = pipeline.make_iterator(dataset, num_threads=args.threads)
    next(iterator)
    first = time.perf_counter() - start
    for _ in range(args.warmup - 1):
      next(iterator)
    start = time.perf_counter()
    for _ in range(args.batches):
      batch = next(iterator)
    seconds = time.perf_counter() - start
  return {"scenes": args.pipeline_scenes, "views_per_scene": args.pipeline_views,
          "height": args.pipeline_height, "width": args.pipeline_width,
          "input_views": args.input_views, "novel_views": args.novel_views,
          "batch_size": args.batch_size, "threads": args.threads,
          "batch_images_shape": list(batch["images"].shape),
          "first_batch_s": round(first, 3), "warmup_batches": args.warmup,
          "timed_batches": args.batches, "seconds": round(seconds, 3),
          "batches_per_s": round(args.batches / seconds, 2),
          "samples_per_s": round(args.batches * args.batch_size / seconds, 2)}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  for name, default in (("num_scenes", 20), ("views", 24), ("height", 128), ("width", 192),
                        ("extrapolate_to", 200), ("max_objects", scene_graph.MAX_OBJECTS),
                        ("pipeline_scenes", 8), ("pipeline_views", 12), ("pipeline_height", 64),
                        ("pipeline_width", 96), ("input_views", 8), ("novel_views", 4),
                        ("batch_size", 4), ("threads", 2), ("warmup", 3), ("batches", 20)):
    parser.add_argument(f"--{name}", type=int, default=default)
  args = parser.parse_args()
  if args.num_scenes < 2:
    parser.error("--num_scenes must be ≥ 2: the first scene is timed apart from the rest")
  if args.warmup < 1 or args.batches < 1:
    parser.error("--warmup and --batches must be ≥ 1")

  results = {"benchmark": "training data: synthetic build rate, Grain pipeline throughput",
             "jax_backend": jax.default_backend(), "cpu_count": os.cpu_count(),
             "loadavg_start": [round(v, 2) for v in os.getloadavg()]}
  results["synthetic_build"] = bench_build(args)
  results["pipeline"] = bench_pipeline(args)
  results["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
  print(json.dumps(results))


if __name__ == "__main__":
  main()
