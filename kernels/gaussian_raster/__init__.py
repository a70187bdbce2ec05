"""Differentiable tile compositor for Gaussian splatting: `composite` (per-tile slabs) and
`composite_lists` (per-Gaussian rows + tile lists) dispatch to XLA or Pallas."""
from kernels.gaussian_raster.api import BACKENDS, composite, composite_lists

__all__ = ["BACKENDS", "composite", "composite_lists"]
