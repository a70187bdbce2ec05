"""Noise schedules and samplers."""
from flashworld_jax.sampling.scheduler import FlowMatchScheduler

__all__ = ["FlowMatchScheduler"]
