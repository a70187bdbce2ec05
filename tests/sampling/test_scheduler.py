"""FlowMatchScheduler: tables vs diffusers, the four sampling steps, and the flow-matching algebra."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import flashworld as flashworld_config
from flashworld_jax.sampling import FlowMatchScheduler


@pytest.mark.oracle
def test_tables_equal_diffusers_at_every_index():
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
  ours = FlowMatchScheduler(num_train_timesteps=1000, shift=3.0)
  # diffusers orders both tables from σ = 1 (index 0) down to σ_min (index 999); tolerance: exact.
  np.testing.assert_array_equal(ours.sigmas, ref.sigmas.numpy())
  np.testing.assert_array_equal(ours.timesteps, ref.timesteps.numpy())
  assert ours.sigmas.shape == ours.timesteps.shape == (1000,)
  assert ours.sigmas.dtype == ours.timesteps.dtype == np.float32
  # Re-noising equals diffusers' scale_noise at the sampling steps' timesteps (it finds σ by a
  # timestep search; we index directly). Tolerance: float32 rounding.
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=(4, 3, 5)).astype(np.float32)
  eps = rng.normal(size=(4, 3, 5)).astype(np.float32)
  steps = np.array(ours.step_indices)
  expected = ref.scale_noise(torch.from_numpy(x0), torch.from_numpy(ours.timesteps[steps]),
                             torch.from_numpy(eps)).numpy()
  np.testing.assert_allclose(ours.add_noise(jnp.asarray(x0), jnp.asarray(eps), ours.sigma(steps)),
                             expected, rtol=0, atol=1e-6)


def test_table_formula_float64():
  sched = FlowMatchScheduler()
  k = np.arange(1000, dtype=np.float64)
  s = (1000 - k) / 1000
  sigma = 3 * s / (1 + 2 * s)
  np.testing.assert_allclose(sched.sigmas, sigma, rtol=0, atol=2e-7)  # float32 rounding
  np.testing.assert_allclose(sched.timesteps, 1000 * sigma, rtol=0, atol=2e-4)


def test_reference_sampling_steps():
  sched = FlowMatchScheduler.from_config(flashworld_config.get_config("tiny").scheduler)
  assert sched.step_indices == (0, 250, 500, 750)
  np.testing.assert_allclose(sched.step_sigmas, (1.0, 0.9, 0.75, 0.5), rtol=0, atol=1e-7)
  np.testing.assert_allclose(sched.step_timesteps, (1000.0, 900.0, 750.0, 500.0), rtol=0, atol=1e-4)
  idx = jnp.asarray(sched.step_indices)
  np.testing.assert_allclose(jax.jit(sched.sigma)(idx), (1.0, 0.9, 0.75, 0.5), rtol=0, atol=1e-7)
  np.testing.assert_allclose(sched.timestep(250), 900.0, rtol=0, atol=1e-4)


def test_noising_velocity_and_euler_algebra():
  sched = FlowMatchScheduler()
  k1, k2 = jax.random.split(jax.random.key(0))
  x0 = jax.random.normal(k1, (2, 3, 4, 5))
  eps = jax.random.normal(k2, (2, 3, 4, 5))
  sigma = jnp.array([0.9, 0.5])
  x_t = sched.add_noise(x0, eps, sigma)
  s = np.asarray(sigma)[:, None, None, None]
  np.testing.assert_allclose(x_t, s * eps + (1 - s) * x0, rtol=0, atol=1e-6)
  v = sched.velocity_target(x0, eps)
  np.testing.assert_allclose(v, eps - x0, rtol=0, atol=0)
  # x₀ is recovered exactly (up to float32 rounding) from the true velocity.
  np.testing.assert_allclose(sched.x0_from_velocity(x_t, v, sigma), x0, rtol=0, atol=1e-5)
  # With the exact velocity, an Euler step lands on the straight path at σ_next.
  np.testing.assert_allclose(sched.euler_step(x_t, v, sigma, 0.25),
                             sched.add_noise(x0, eps, 0.25), rtol=0, atol=1e-5)
  # The sample dtype is kept (bf16 latents stay bf16).
  assert sched.add_noise(x0.astype(jnp.bfloat16), eps.astype(jnp.bfloat16), 0.5).dtype == jnp.bfloat16


def test_training_sigma_distribution():
  sched = FlowMatchScheduler()
  sig = np.asarray(sched.sample_training_sigma(jax.random.key(1), (20000,)), np.float64)
  assert sig.min() >= 0 and sig.max() <= 1
  # P(σ ≤ x) = P(u ≤ x / (3 − 2x)); check the CDF at a few points (tolerance: 4 binomial std).
  for x in (0.25, 0.5, 0.75, 0.9):
    expected = x / (3 - 2 * x)
    assert abs(np.mean(sig <= x) - expected) < 4 * np.sqrt(expected * (1 - expected) / sig.size)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_train_timesteps=0), "num_train_timesteps"),
    (dict(shift=0.0), "shift"),
    (dict(step_indices=(0, 500, 250)), "step_indices"),
    (dict(step_indices=(0, 1000)), "step_indices"),
])
def test_invalid_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    FlowMatchScheduler(**kwargs)


def test_sigma_shape_mismatch_is_rejected():
  sched = FlowMatchScheduler()
  with pytest.raises(ValueError, match="sigma"):
    sched.add_noise(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((3,)))
