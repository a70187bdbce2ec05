"""Pallas compositor kernels in interpret mode vs the XLA reference backend, on the same tile slabs.

  python -m bench.gaussian_raster_pallas [--size 64 --kcap 256 --per-tile 180 --feats 4 --repeats 3]

On CPU the Pallas kernels only run in the interpreter (~235 µs per grid step plus the kernel body run as
XLA ops), so their timings here measure the interpreter, not the TPU/GPU kernels: the numbers are a
regression guard and an agreement check (max |Δ| of the outputs, rel-L2 of the gradients against
reference.py), not a speed claim. Kernel speed on hardware is not verified. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from kernels.gaussian_raster import pallas_gpu, pallas_tpu, reference


def _timed(fn, repeats: int) -> tuple[dict, object]:
  out = jax.block_until_ready(fn())  # warm-up: compilation
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return {"best_s": min(times), "median_s": statistics.median(times)}, out


def _slabs(size: int, kcap: int, per_tile: int, n_feats: int, seed: int = 0):
  """Depth-ordered random Gaussians around each tile of one size×size image, ~per_tile per tile."""
  rng = np.random.default_rng(seed)
  tiles_per_row = size // 16
  n_tiles = tiles_per_row * tiles_per_row
  counts = np.minimum(rng.poisson(per_tile, n_tiles), kcap).astype(np.int32)
  params = np.zeros((n_tiles, 8, kcap), np.float32)
  for t, count in enumerate(counts):
    x0, y0 = (t % tiles_per_row) * 16, (t // tiles_per_row) * 16
    std = np.exp(rng.uniform(np.log(0.7), np.log(8.0), (2, count)))
    params[t, 0, :count] = x0 + rng.uniform(-8, 24, count)
    params[t, 1, :count] = y0 + rng.uniform(-8, 24, count)
    params[t, 2, :count] = 1 / std[0] ** 2
    params[t, 4, :count] = 1 / std[1] ** 2
    params[t, 5, :count] = 1 / (1 + np.exp(-rng.normal(size=count)))
  feats = rng.uniform(0, 1, (n_tiles, n_feats, kcap)).astype(np.float32)
  return (jnp.asarray(params), jnp.asarray(feats), jnp.asarray(counts)), tiles_per_row, n_tiles


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  for name, default in (("size", 64), ("kcap", 256), ("per-tile", 180), ("feats", 4), ("repeats", 3)):
    parser.add_argument(f"--{name}", type=int, default=default)
  args = parser.parse_args()
  (params, feats, counts), tiles_per_row, n_tiles = _slabs(args.size, args.kcap, args.per_tile,
                                                           args.feats)
  layout = dict(tiles_per_row=tiles_per_row, tiles_per_image=n_tiles)
  rng = np.random.default_rng(1)
  g_acc = jnp.asarray(rng.normal(size=(n_tiles, args.feats, 256)).astype(np.float32))
  g_t = jnp.asarray(rng.normal(size=(n_tiles, 256)).astype(np.float32))

  def run(module, interpret):
    fwd = jax.jit(functools.partial(module.forward, interpret=interpret, **layout))

    @jax.jit
    def fwd_bwd(params, feats, counts):
      acc, t_final, last = fwd(params, feats, counts)
      return module.backward(params, feats, counts, acc, t_final, last, g_acc, g_t,
                             interpret=interpret, **layout)
    fwd_time, out = _timed(lambda: fwd(params, feats, counts), args.repeats)
    fwd_bwd_time, grads = _timed(lambda: fwd_bwd(params, feats, counts), args.repeats)
    return {"forward": fwd_time, "forward_backward": fwd_bwd_time}, out, grads

  reference_times, want, want_grads = run(reference, False)
  result = {"bench": "gaussian_raster_pallas", "backend": jax.default_backend(),
            "shape": {"image": args.size, "n_tiles": n_tiles, "kcap": args.kcap, "feats": args.feats,
                      "mean_count": float(jnp.mean(counts)),
                      "grid_steps": n_tiles * args.kcap // 128},
            "reference_xla": reference_times}
  for name, module in (("pallas_tpu_interpret", pallas_tpu), ("pallas_gpu_interpret", pallas_gpu)):
    times, out, grads = run(module, True)
    result[name] = dict(times, agreement={
        "acc_max_abs": float(jnp.max(jnp.abs(out[0] - want[0]))),
        "t_final_max_abs": float(jnp.max(jnp.abs(out[1] - want[1]))),
        "last_mismatches": int(jnp.sum(out[2] != want[2])),
        "g_params_rel_l2": float(jnp.linalg.norm(grads[0] - want_grads[0])
                                 / jnp.linalg.norm(want_grads[0])),
        "g_feats_rel_l2": float(jnp.linalg.norm(grads[1] - want_grads[1])
                                / jnp.linalg.norm(want_grads[1]))})
  result["note"] = ("CPU interpret mode: timings measure the Pallas interpreter, not TPU/GPU kernels "
                    "(not verified on hardware)")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
