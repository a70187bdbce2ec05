"""Training losses and the noise draws they share; each is checked against a numpy formula.

Flow matching (spec §8, §13.2): z_σ = (1 − σ)·x₀ + σ·ε, the network predicts v = ε − x₀; σ is drawn
from the shifted uniform density σ = s·u / (1 + (s − 1)·u), u ~ U(0, 1), s = the schedule's shift.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flashworld_jax.sampling.scheduler import shifted_sigma


def sample_sigma(key: jax.Array, shape: tuple[int, ...], shift: float, low: float = 0.0,
                 high: float = 1.0) -> jax.Array:
  """σ with u ~ U(low, high) through the schedule's shift (the 2–98 % DMD range: low/high)."""
  return shifted_sigma(jax.random.uniform(key, shape, jnp.float32, low, high), shift)


def add_noise(x0: jax.Array, noise: jax.Array, sigma: jax.Array) -> jax.Array:
  """z_σ = (1 − σ)·x₀ + σ·ε with σ [B] broadcast over the trailing axes."""
  sigma = sigma.reshape(sigma.shape + (1,) * (x0.ndim - sigma.ndim))
  return (1.0 - sigma) * x0 + sigma * noise


def flow_matching_loss(velocity: jax.Array, noise: jax.Array, x0: jax.Array) -> jax.Array:
  """Mean squared error of the predicted velocity against ε − x₀ (L_MV, our default)."""
  return jnp.mean(jnp.square(velocity.astype(jnp.float32) - (noise - x0)))


def masked_mse(prediction: jax.Array, target: jax.Array, view_mask: jax.Array) -> jax.Array:
  """Mean squared error over the views [B, V, ...] where view_mask [B, V] is set (0 if none is)."""
  per_view = jnp.mean(jnp.square(prediction - target), axis=tuple(range(2, prediction.ndim)))
  weights = view_mask.astype(jnp.float32)
  return jnp.sum(per_view * weights) / jnp.maximum(jnp.sum(weights), 1.0)
