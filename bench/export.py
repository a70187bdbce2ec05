"""Scene export: ours vs the reference's way of writing the same files, one run.

  python -m bench.export [--num_points 200000 --frames 31 --height 240 --width 352 --repeats 3]

Reference sides: the REF PLY writer's pattern (structured array filled from a list of row tuples,
then `plyfile.PlyData.write`, 27-f_dc layout) and `imageio.mimwrite(quality=8, macro_block_size=1)`
for the video. SPZ and the world-frame transform have no reference counterpart here (REF writes SPZ
through the C++ library and exports in camera-0's frame), so only ours is timed. The full scene has
4,055,040 points; PLY and SPZ costs are linear in N.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

import imageio.v2 as imageio
import numpy as np
import plyfile

from bench.timing import timed
from flashworld_jax.export import layout, ply, spz, video, world_frame


def _random_gaussians(n: int) -> np.ndarray:
  rng = np.random.default_rng(0)
  g = rng.normal(size=(n, layout.NUM_CHANNELS)).astype(np.float32) * 0.3
  g[:, layout.OPACITY] = rng.uniform(0, 1, n)
  g[:, layout.SCALE] = np.exp(rng.uniform(-6, 0, (n, 3)))
  return g


def _reference_ply(path: str, g: np.ndarray) -> None:
  """REF's writer pattern: 27 coefficient-major f_dc_*, rows copied in as Python tuples."""
  names = ["x", "y", "z"] + [f"f_dc_{i}" for i in range(27)] + ["opacity"] + \
      [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
  o = g[:, layout.OPACITY:layout.OPACITY + 1]
  attributes = np.concatenate([g[:, layout.POSITION], g[:, layout.SH], np.log(o / (1 - o)),
                               np.log(g[:, layout.SCALE] + 1e-8), g[:, layout.ROTATION]], axis=1)
  elements = np.empty(len(g), dtype=[(name, "f4") for name in names])
  elements[:] = list(map(tuple, attributes))
  plyfile.PlyData([plyfile.PlyElement.describe(elements, "vertex")]).write(path)


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  for name, default in (("num_points", 200_000), ("frames", 31), ("height", 240), ("width", 352),
                        ("repeats", 3)):
    parser.add_argument(f"--{name}", type=int, default=default)
  args = parser.parse_args()

  g = _random_gaussians(args.num_points)
  c2w = np.eye(4)
  c2w[:3, :3] = world_frame.matrix_from_quaternion(np.array([0.8, 0.2, -0.4, 0.4]))
  frames = np.random.default_rng(1).integers(0, 256, (args.frames, args.height, args.width, 3),
                                             dtype=np.uint8)
  result = {"num_points": args.num_points, "video": [args.frames, args.height, args.width]}
  with tempfile.TemporaryDirectory() as tmp:
    def path(name):
      return os.path.join(tmp, name)

    result["ply_write"] = {"ours": timed(lambda: ply.write_ply(path("a.ply"), g), args.repeats),
                           "ref_plyfile_tuples": timed(lambda: _reference_ply(path("r.ply"), g),
                                                        args.repeats)}
    result["ply_write"]["speedup_median"] = round(
        result["ply_write"]["ref_plyfile_tuples"]["median_s"] / result["ply_write"]["ours"]["median_s"], 2)
    result["ply_read"] = {"ours": timed(lambda: ply.read_ply(path("a.ply")), args.repeats)}
    result["ply_bytes"] = os.path.getsize(path("a.ply"))
    result["spz_write"] = {
        "ours": timed(lambda: spz.write_spz(path("a.spz"), g), args.repeats),
        "ours_compresslevel_1": timed(lambda: spz.write_spz(path("b.spz"), g, compresslevel=1),
                                       args.repeats)}
    result["spz_read"] = {"ours": timed(lambda: spz.read_spz(path("a.spz")), args.repeats)}
    result["spz_bytes"] = os.path.getsize(path("a.spz"))
    result["spz_bytes_compresslevel_1"] = os.path.getsize(path("b.spz"))
    result["world_frame"] = {"ours": timed(lambda: world_frame.gaussians_to_world(g, c2w, 1.7),
                                            args.repeats)}
    result["mp4_write"] = {
        "ours": timed(lambda: video.write_mp4(path("a.mp4"), frames, 15), args.repeats),
        "ref_imageio_mimwrite": timed(lambda: imageio.mimwrite(
            path("r.mp4"), list(frames), fps=15, quality=8, macro_block_size=1), args.repeats)}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
