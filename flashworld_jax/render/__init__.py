"""Differentiable Gaussian-splat rendering (gsplat 1.5.3 classic semantics)."""
from flashworld_jax.render.binning import RasterCapacity
from flashworld_jax.render.rasterization import estimate_capacity, rasterization

__all__ = ["RasterCapacity", "estimate_capacity", "rasterization"]
