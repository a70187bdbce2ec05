"""Random activated Gaussians [N, 38] (formats.md §2) for the export tests."""
import numpy as np
import pytest


def random_gaussians(n: int, seed: int = 0, dtype=np.float32, sh_range: float = 0.5) -> np.ndarray:
  rng = np.random.default_rng(seed)
  g = np.zeros((n, 38), dtype=np.float64)
  g[:, 0:3] = rng.normal(size=(n, 3)) * 3
  g[:, 3] = rng.uniform(0.01, 0.99, n)
  g[:, 4:7] = np.exp(rng.uniform(-6, 1, (n, 3)))
  q = rng.normal(size=(n, 4))
  g[:, 7:11] = q / np.linalg.norm(q, axis=1, keepdims=True)
  g[:, 11:14] = rng.uniform(-2, 2, (n, 3))
  g[:, 14:] = rng.uniform(-sh_range, sh_range, (n, 24))
  return g.astype(dtype)


@pytest.fixture
def gaussians() -> np.ndarray:
  return random_gaussians(257)


@pytest.fixture
def make_gaussians():
  return random_gaussians
