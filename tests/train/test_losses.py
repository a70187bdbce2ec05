"""Training losses and noise draws against numpy formulas."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flashworld_jax.train import losses


def test_flow_matching_loss_is_the_velocity_mse():
  rng = np.random.default_rng(0)
  v, eps, x0 = (rng.normal(size=(2, 3, 4, 4, 8)) for _ in range(3))
  expected = np.mean((v - (eps - x0)) ** 2)
  got = losses.flow_matching_loss(jnp.asarray(v, jnp.float32), jnp.asarray(eps, jnp.float32),
                                  jnp.asarray(x0, jnp.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_add_noise_interpolates_per_sample():
  rng = np.random.default_rng(1)
  x0, eps = rng.normal(size=(3, 2, 5)), rng.normal(size=(3, 2, 5))
  sigma = np.array([0.0, 0.3, 1.0])
  got = losses.add_noise(jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(sigma))
  np.testing.assert_allclose(got, (1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * eps,
                             rtol=1e-6)


def test_masked_mse_averages_only_masked_views():
  rng = np.random.default_rng(2)
  pred, target = rng.normal(size=(2, 3, 4, 4, 3)), rng.normal(size=(2, 3, 4, 4, 3))
  mask = np.array([[True, False, True], [False, False, True]])
  per_view = np.mean((pred - target) ** 2, axis=(2, 3, 4))
  expected = per_view[mask].mean()
  got = losses.masked_mse(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert float(losses.masked_mse(jnp.asarray(pred), jnp.asarray(target),
                                 jnp.zeros((2, 3), bool))) == 0.0


@pytest.mark.parametrize("low,high", [(0.0, 1.0), (0.02, 0.98)])
def test_sigma_follows_the_shifted_uniform_density(low, high):
  shift = 3.0
  sigma = np.asarray(losses.sample_sigma(jax.random.key(0), (200_000,), shift, low, high))
  # σ = s·u/(1 + (s−1)·u) is monotone in u, so σ's quantiles are the formula at u's quantiles.
  q = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
  u = low + q * (high - low)
  np.testing.assert_allclose(np.quantile(sigma, q), shift * u / (1 + (shift - 1) * u), atol=3e-3)
