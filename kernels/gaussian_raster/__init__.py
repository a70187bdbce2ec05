"""Differentiable tile compositor for Gaussian splatting: `composite` dispatches to XLA or Pallas."""
from kernels.gaussian_raster.api import BACKENDS, composite

__all__ = ["BACKENDS", "composite"]
