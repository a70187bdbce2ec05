"""Camera geometry: ours (jit, XLA CPU) vs a torch implementation of the reference formulas, one run.

  python -m bench.geometry [--views 24 --height 480 --width 704 --repeats 5]

Two workloads per scene: (1) normalise the n cameras and build the DiT ray map at H/16 × W/16;
(2) the Gaussian head's rays with uv offsets at H/2 × W/2 for 2 points per pixel. Prints one JSON
object with best / median seconds for both sides, the speed-up (torch median / ours median) and the
max absolute difference of the outputs.
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from bench.timing import timed
from flashworld_jax.geometry import cameras, rays, trajectories


def _torch_reference():
  """The reference's camera maths (REF utils.py formulas) in torch, written for this comparison."""
  import torch  # pylint: disable=import-outside-toplevel

  def rotmat(q):
    w, x, y, z = q.unbind(-1)
    s = 2.0 / (q * q).sum(-1)
    return torch.stack([1 - s * (y * y + z * z), s * (x * y - z * w), s * (x * z + y * w),
                        s * (x * y + z * w), 1 - s * (x * x + z * z), s * (y * z - x * w),
                        s * (x * z - y * w), s * (y * z + x * w), 1 - s * (x * x + y * y)],
                       -1).reshape(q.shape[:-1] + (3, 3))

  def rays_from(rotation, cams, h, w, uv_offset=None):
    """REF `create_rays`, with the rotation matrices passed in."""
    n = cams.shape[0]
    fx, fy, cx, cy = (cams[:, 7 + k, None] * size for k, size in enumerate((w, h, w, h)))
    index = torch.arange(h * w).expand(n, h * w)
    i = index % w + 0.5
    j = torch.div(index, w, rounding_mode="floor") + 0.5
    u = i / cx + (uv_offset[..., 0].reshape(n, h * w) if uv_offset is not None else 0)
    v = j / cy + (uv_offset[..., 1].reshape(n, h * w) if uv_offset is not None else 0)
    dirs = torch.stack([(u - 1) * cx / fx, -(v - 1) * cy / fy, -torch.ones_like(u)], -1)
    dirs = torch.nn.functional.normalize(dirs @ rotation.transpose(-1, -2), dim=-1)
    return cams[:, None, 4:7].expand_as(dirs).reshape(n, h, w, 3), dirs.reshape(n, h, w, 3)

  def create_rays(cams, h, w, uv_offset):
    return rays_from(rotmat(cams[:, :4]), cams, h, w, uv_offset)

  def raymap_workload(cams, h, w):
    """REF `normalize_cameras` + `create_raymaps` (the normalised rotation is used as a matrix)."""
    c2w = torch.eye(4).repeat(cams.shape[0], 1, 1)
    c2w[:, :3, :3] = rotmat(cams[:, :4])
    c2w[:, :3, 3] = cams[:, 4:7]
    relative = torch.inverse(c2w[:1]) @ c2w
    local = cams.clone()
    local[:, 4:7] = relative[:, :3, 3] / (relative[:, :3, 3].norm(dim=-1).max() + 0.01)
    o, d = rays_from(relative[:, :3, :3], local, h, w)
    return torch.cat([d, o - (o * d).sum(-1, keepdim=True) * d], -1).permute(0, 3, 1, 2)

  return torch, raymap_workload, create_rays


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  for name, default in (("views", 24), ("height", 480), ("width", 704), ("repeats", 5)):
    parser.add_argument(f"--{name}", type=int, default=default)
  args = parser.parse_args()
  torch, torch_raymap, torch_rays = _torch_reference()
  torch.set_num_threads(2)

  n, lat_h, lat_w = args.views, args.height // 16, args.width // 16
  gs_h, gs_w = args.height // 2, args.width // 2
  cams = np.array(trajectories.make_trajectory("arc", n, args.height, args.width, scale=1.5))
  rng = np.random.default_rng(0)
  cams[:, 4:7] += rng.normal(scale=0.05, size=(n, 3))  # off the plane, so no axis is degenerate
  offsets = rng.normal(scale=0.05, size=(n * 2, gs_h, gs_w, 2)).astype(np.float32)
  cams_per_point = np.repeat(cams, 2, axis=0)

  @jax.jit
  def ours_raymap(cams):
    cams_n, _, _ = cameras.normalize_cameras(cams)
    return rays.raymap(cams_n, lat_h, lat_w)

  ours_rays = jax.jit(lambda c, uv: rays.camera_rays(c, gs_h, gs_w, uv)[1])
  cams_j, cams_pp_j, offsets_j = jnp.asarray(cams), jnp.asarray(cams_per_point), jnp.asarray(offsets)
  cams_t, cams_pp_t = torch.from_numpy(cams), torch.from_numpy(cams_per_point)
  offsets_t = torch.from_numpy(offsets)

  results = {"views": n, "raymap_grid": [lat_h, lat_w], "rays_grid": [n * 2, gs_h, gs_w]}
  with torch.no_grad():
    diff_map = np.abs(np.asarray(ours_raymap(cams_j)) - torch_raymap(cams_t, lat_h, lat_w).numpy())
    diff_rays = np.abs(np.asarray(ours_rays(cams_pp_j, offsets_j))
                       - torch_rays(cams_pp_t, gs_h, gs_w, offsets_t)[1].numpy())
    results["raymap"] = {
        "ours": timed(lambda: ours_raymap(cams_j).block_until_ready(), args.repeats),
        "torch_ref": timed(lambda: torch_raymap(cams_t, lat_h, lat_w), args.repeats),
        "max_abs_diff": float(diff_map.max())}
    results["gaussian_rays"] = {
        "ours": timed(lambda: ours_rays(cams_pp_j, offsets_j).block_until_ready(), args.repeats),
        "torch_ref": timed(lambda: torch_rays(cams_pp_t, gs_h, gs_w, offsets_t), args.repeats),
        "max_abs_diff": float(diff_rays.max())}
  for key in ("raymap", "gaussian_rays"):
    entry = results[key]
    entry["speedup"] = entry["torch_ref"]["median_s"] / entry["ours"]["median_s"]
  results["backend"] = jax.default_backend()
  print(json.dumps(results))


if __name__ == "__main__":
  main()
