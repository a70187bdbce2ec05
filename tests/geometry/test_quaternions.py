"""Quaternion maths vs float64 numpy derivations (axis-angle / Rodrigues, textbook slerp)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flashworld_jax.geometry import quaternions as Q
from np_geometry import axis_angle_quat, quat_rotmat, rodrigues, slerp

TOL = 2e-6  # float32 on O(1) values
# One compilation per function instead of op-by-op dispatch keeps the tests fast.
quat_to_rotmat = jax.jit(Q.quat_to_rotmat)
rotmat_to_quat = jax.jit(Q.rotmat_to_quat)
quat_multiply = jax.jit(Q.quat_multiply)
quat_slerp = jax.jit(Q.quat_slerp)


def _near_half_turns():
  """Axis-angle pairs at and just below 180°, where w → 0 and naive conversions break down."""
  axes = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, -2, 3), (-0.3, 0.2, 0.9)]
  angles = [np.pi, np.pi - 1e-3, np.pi - 1e-6, 0.0, 1e-4, 1.0, 2.5]
  return [(a, t) for a in axes for t in angles]


def test_quat_to_rotmat_matches_rodrigues_for_any_norm():
  cases = _near_half_turns()
  norms = np.random.default_rng(0).uniform(0.1, 10.0, size=(len(cases), 1))  # R ignores ‖q‖
  q = np.stack([axis_angle_quat(a, t) for a, t in cases]) * norms
  expected = np.stack([rodrigues(a, t) for a, t in cases])
  np.testing.assert_allclose(quat_to_rotmat(np.float32(q)), expected, atol=TOL)


def test_rotmat_is_orthonormal_with_unit_determinant():
  q = np.random.default_rng(1).normal(size=(64, 4)) * 5
  r = np.asarray(quat_to_rotmat(np.float32(q)), np.float64)
  np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape), atol=5e-6)
  np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=5e-6)


def test_rotmat_to_quat_round_trip_incl_half_turns():
  cases = _near_half_turns()
  rotations = np.stack([rodrigues(a, t) for a, t in cases])
  quats = np.asarray(rotmat_to_quat(np.float32(rotations)), np.float64)
  for (axis, angle), r, q in zip(cases, rotations, quats):
    expected = axis_angle_quat(axis, angle)
    expected = expected if expected[0] >= 0 else -expected
    assert q[0] >= 0
    np.testing.assert_allclose(np.linalg.norm(q), 1.0, atol=TOL)
    np.testing.assert_allclose(quat_rotmat(q), r, atol=3e-6)
    if expected[0] > 1e-3:  # sign is fixed by w > 0; at w ≈ 0 both signs are the same rotation
      np.testing.assert_allclose(q, expected, atol=3e-6)
    else:
      assert min(np.abs(q - expected).max(), np.abs(q + expected).max()) < 3e-6


def test_rotmat_to_quat_batched_random():
  q = np.random.default_rng(2).normal(size=(3, 5, 4))
  q_unit = q / np.linalg.norm(q, axis=-1, keepdims=True)
  q_unit *= np.where(q_unit[..., :1] < 0, -1, 1)
  out = rotmat_to_quat(quat_to_rotmat(np.float32(q * 3)))
  assert out.shape == (3, 5, 4)
  np.testing.assert_allclose(out, q_unit, atol=3e-6)


def test_hamilton_product_composes_rotations():
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(2, 16, 4))
  ab = np.asarray(quat_multiply(np.float32(a), np.float32(b)), np.float64)
  for i in range(16):
    np.testing.assert_allclose(quat_rotmat(ab[i]), quat_rotmat(a[i]) @ quat_rotmat(b[i]), atol=5e-6)
  # Norms multiply, and (1, 0, 0, 0) is the identity on both sides.
  np.testing.assert_allclose(np.linalg.norm(ab, axis=-1),
                             np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), rtol=2e-6)
  np.testing.assert_allclose(quat_multiply(np.float32([1, 0, 0, 0]), np.float32(a)), a, atol=TOL)
  # i·j = k in Hamilton's convention.
  np.testing.assert_allclose(quat_multiply(np.float32([0, 1, 0, 0]), np.float32([0, 0, 1, 0])),
                             [0, 0, 0, 1], atol=0)


def test_slerp_matches_textbook_formula():
  rng = np.random.default_rng(4)
  q0, q1 = rng.normal(size=(2, 40, 4))
  q0 /= np.linalg.norm(q0, axis=-1, keepdims=True)
  q1 /= np.linalg.norm(q1, axis=-1, keepdims=True)
  fraction = np.repeat([0.0, 0.25, 0.5, 0.8, 1.0], 8)
  out = quat_slerp(np.float32(q0), np.float32(q1), np.float32(fraction))
  expected = np.stack([slerp(a, b, f) for a, b, f in zip(q0, q1, fraction)])
  np.testing.assert_allclose(out, expected, atol=5e-6)


def test_slerp_flips_to_the_short_arc_and_handles_equal_inputs():
  q0 = axis_angle_quat((0, 1, 0), 0.2)
  q1 = axis_angle_quat((0, 1, 0), 1.0)
  # -q1 is the same rotation as q1; the second pair has θ < 1e-5, so q0 is returned, normalised.
  out = quat_slerp(np.float32([q0, q0 * 3]), np.float32([-q1, q0 * 3]), np.float32([0.5, 0.3]))
  np.testing.assert_allclose(out, [axis_angle_quat((0, 1, 0), 0.6), q0], atol=TOL)


def test_gradients_are_finite_at_degenerate_points():
  def loss(q):
    round_trip = Q.rotmat_to_quat(Q.quat_to_rotmat(q))
    return jnp.sum(round_trip * jnp.arange(4.0)) + jnp.sum(Q.quat_slerp(q, q, 0.5))

  g = jax.jit(jax.grad(loss))(jnp.array([1.0, 0, 0, 0]))
  assert np.all(np.isfinite(g))


def test_dtype_follows_input_and_shapes_are_checked():
  assert Q.quat_to_rotmat(jnp.ones(4, jnp.bfloat16)).dtype == jnp.bfloat16
  assert Q.quat_multiply(np.ones(4, np.float32), np.ones(4, np.float32)).dtype == jnp.float32
  assert Q.quat_to_rotmat([1, 0, 0, 0]).dtype == jnp.float32
  with pytest.raises(ValueError, match=r"q must have shape \[\.\.\., 4\], got \(3,\)"):
    Q.quat_to_rotmat(np.ones(3))
  with pytest.raises(ValueError, match="rotmat"):
    Q.rotmat_to_quat(np.ones((3, 4)))
