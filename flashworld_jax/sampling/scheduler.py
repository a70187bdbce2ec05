"""Rectified-flow noise schedule of diffusers' `FlowMatchEulerDiscreteScheduler` with a static shift.

Convention (spec flashworld.md §8): x_t = (1 − σ)·x₀ + σ·ε, the network predicts v = ε − x₀, so
x₀ = x_t − σ·v. Index k ∈ [0, T) of the training tables has s_k = (T − k)/T, σ_k = shift·s/(1 +
(shift − 1)·s) and timestep t_k = T·σ_k (what the DiT receives). Sampling steps index σ directly
(the reference searched for the nearest timestep; quirk h).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# The reference's four 3D-mode sampling steps: σ = 1.0, 0.9, 0.75, 0.5 for shift 3.
DEFAULT_STEP_INDICES = (0, 250, 500, 750)


def shifted_sigma(s, shift: float):
  """Time shift σ = shift·s / (1 + (shift − 1)·s), the same expression diffusers evaluates."""
  return shift * s / (1 + (shift - 1) * s)


def _broadcast_sigma(sigma, x: jax.Array) -> jax.Array:
  """σ as a scalar, per-example [B] (any leading prefix of x's shape) or x-rank array → float32."""
  sigma = jnp.asarray(sigma, dtype=jnp.float32)
  if sigma.shape == x.shape[:sigma.ndim]:
    return sigma.reshape(sigma.shape + (1,) * (x.ndim - sigma.ndim))
  if sigma.ndim == x.ndim and all(a in (1, b) for a, b in zip(sigma.shape, x.shape)):
    return sigma
  raise ValueError(f"sigma: shape {sigma.shape} does not broadcast against the sample shape "
                   f"{x.shape}; expected (), a leading prefix of it, or the same rank")


class FlowMatchScheduler:
  """Shifted flow-matching schedule: lookup tables, forward process and Euler update.

  Tables are float32 and bit-identical to diffusers' (computed with the same float32 operations).
  Arithmetic helpers compute in float32 and return the dtype of the sample they were given.
  """

  def __init__(self, num_train_timesteps: int = 1000, shift: float = 3.0,
               step_indices: Sequence[int] = DEFAULT_STEP_INDICES):
    if not isinstance(num_train_timesteps, (int, np.integer)) or num_train_timesteps < 1:
      raise ValueError(
          f"num_train_timesteps: got {num_train_timesteps!r}, expected a positive integer")
    if not np.isfinite(shift) or shift <= 0:
      raise ValueError(f"shift: got {shift!r}, expected a finite positive number")
    steps = tuple(int(i) for i in step_indices)
    if not steps or any(not 0 <= i < num_train_timesteps for i in steps) or \
        any(a >= b for a, b in zip(steps, steps[1:])):
      raise ValueError(f"step_indices: got {tuple(step_indices)}, expected strictly increasing "
                       f"indices in [0, {num_train_timesteps})")
    self.num_train_timesteps = int(num_train_timesteps)
    self.shift = float(shift)
    self.step_indices = steps
    # linspace(1, T, T)[::-1] / T in float32, then the shift, exactly as diffusers builds them.
    unshifted = np.arange(num_train_timesteps, 0, -1, dtype=np.float32) / np.float32(num_train_timesteps)
    self.sigmas = shifted_sigma(unshifted, np.float32(shift)).astype(np.float32)
    self.timesteps = (self.sigmas * np.float32(num_train_timesteps)).astype(np.float32)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> FlowMatchScheduler:
    """Builds the scheduler from `cfg.scheduler` (num_train_timesteps, shift, step_indices)."""
    return cls(config.num_train_timesteps, config.shift,
               config.get("step_indices", DEFAULT_STEP_INDICES))

  # --- tables ------------------------------------------------------------------------------------

  def sigma(self, index) -> jax.Array:
    """σ at training index/indices `index` (int or integer array; traceable)."""
    return jnp.asarray(self.sigmas)[index]

  def timestep(self, index) -> jax.Array:
    """DiT timestep t = T·σ at training index/indices `index` (int or integer array; traceable)."""
    return jnp.asarray(self.timesteps)[index]

  @property
  def step_sigmas(self) -> tuple[float, ...]:
    """σ of each sampling step, e.g. (1.0, 0.9, 0.75, 0.5)."""
    return tuple(float(self.sigmas[i]) for i in self.step_indices)

  @property
  def step_timesteps(self) -> tuple[float, ...]:
    """DiT timestep of each sampling step, e.g. (1000, 900, 750, 500)."""
    return tuple(float(self.timesteps[i]) for i in self.step_indices)

  # --- forward process and updates ---------------------------------------------------------------

  def add_noise(self, x0: jax.Array, noise: jax.Array, sigma) -> jax.Array:
    """x_σ = σ·ε + (1 − σ)·x₀ (training noising and the sampler's re-noising)."""
    s = _broadcast_sigma(sigma, x0)
    out = s * noise.astype(jnp.float32) + (1.0 - s) * x0.astype(jnp.float32)
    return out.astype(x0.dtype)

  @staticmethod
  def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    """The flow-matching regression target v = ε − x₀."""
    return noise - x0

  def x0_from_velocity(self, x_t: jax.Array, v: jax.Array, sigma) -> jax.Array:
    """Clean-sample estimate x̂₀ = x_t − σ·v."""
    s = _broadcast_sigma(sigma, x_t)
    return (x_t.astype(jnp.float32) - s * v.astype(jnp.float32)).astype(x_t.dtype)

  def euler_step(self, x_t: jax.Array, v: jax.Array, sigma, sigma_next) -> jax.Array:
    """One Euler step of dx/dσ = v from σ to σ_next: x_t + (σ_next − σ)·v."""
    ds = _broadcast_sigma(sigma_next, x_t) - _broadcast_sigma(sigma, x_t)
    return (x_t.astype(jnp.float32) + ds * v.astype(jnp.float32)).astype(x_t.dtype)

  def sample_training_sigma(self, key: jax.Array, shape: Sequence[int] = ()) -> jax.Array:
    """σ = shift·u/(1 + (shift − 1)·u) with u ~ U[0, 1): the continuous shifted training density."""
    u = jax.random.uniform(key, tuple(shape), dtype=jnp.float32)
    return shifted_sigma(u, self.shift)
