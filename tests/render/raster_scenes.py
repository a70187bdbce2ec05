"""Small random Gaussian scenes and cameras for the rasterizer tests (numpy only)."""
from __future__ import annotations

import numpy as np


def look_at_viewmat(campos, target=(0.0, 0.0, 3.0)) -> np.ndarray:
  """World→camera OpenCV matrix (x right, y down, z forward) looking from campos at target."""
  campos = np.asarray(campos, np.float64)
  forward = np.asarray(target, np.float64) - campos
  forward /= np.linalg.norm(forward)
  right = np.cross(np.array([0.0, -1.0, 0.0]), forward)
  right /= np.linalg.norm(right)
  down = np.cross(forward, right)
  rot = np.stack([right, down, forward])
  view = np.eye(4)
  view[:3, :3] = rot
  view[:3, 3] = -rot @ campos
  return view.astype(np.float32)


def intrinsics(width: int, height: int, focal: float) -> np.ndarray:
  return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], np.float32)


def scene(n: int, seed: int = 0, *, sh_degree: int | None = 3, n_colors: int = 3,
          scale_range=(0.005, 0.05), fov_deg: float = 60.0, z_range=(2.0, 4.0)):
  """rasterizer.md §7 scene: n Gaussians uniform in a frustum, log-uniform scales, sigmoid(randn)
  opacities. Returns a dict of float32 arrays (means, quats, scales, opacities, colors)."""
  rng = np.random.default_rng(seed)
  z = rng.uniform(*z_range, n)
  half = np.tan(np.radians(fov_deg) / 2)
  means = np.stack([rng.uniform(-1, 1, n) * half * z, rng.uniform(-1, 1, n) * half * z, z], -1)
  scales = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), (n, 3)))
  if sh_degree is None:
    colors = rng.uniform(0, 1, (n, n_colors))
  else:
    colors = rng.normal(size=(n, (sh_degree + 1) ** 2, 3)) * 0.3
  return dict(means=means.astype(np.float32), quats=rng.normal(size=(n, 4)).astype(np.float32),
              scales=scales.astype(np.float32),
              opacities=(1 / (1 + np.exp(-rng.normal(size=n)))).astype(np.float32),
              colors=colors.astype(np.float32))


def cameras(n_cameras: int, width: int, height: int, fov_deg: float = 60.0, seed: int = 0):
  """(viewmats [C,4,4], Ks [C,3,3]); camera 0 is the identity, others look at the scene centre."""
  rng = np.random.default_rng(seed + 1000)
  focal = 0.5 * width / np.tan(np.radians(fov_deg) / 2)
  views = [np.eye(4, dtype=np.float32)]
  for _ in range(n_cameras - 1):
    views.append(look_at_viewmat(rng.uniform(-0.5, 0.5, 3) * [1, 1, 0.5]))
  return np.stack(views), np.stack([intrinsics(width, height, focal)] * n_cameras)
