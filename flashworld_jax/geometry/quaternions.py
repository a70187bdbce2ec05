"""Quaternions in (w, x, y, z) order, real part first, as in the reference (spec §7.1, §7.5)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flashworld_jax.geometry._arrays import as_float_array

# Below this angle slerp returns its start point (REF `quaternion_slerp`).
SLERP_MIN_ANGLE = 1e-5
# REF adds this to sin(θ) before dividing; kept for parity.
_SLERP_SIN_EPS = 1e-10


def quat_to_rotmat(q: jax.typing.ArrayLike) -> jax.Array:
  """Rotation matrices [..., 3, 3] of quaternions [..., 4] of any non-zero norm (uses 2/‖q‖²)."""
  q = as_float_array(q, "q", (4,))
  w, x, y, z = jnp.moveaxis(q, -1, 0)
  two_s = 2.0 / jnp.sum(q * q, axis=-1)
  rows = (
      1 - two_s * (y * y + z * z), two_s * (x * y - z * w), two_s * (x * z + y * w),
      two_s * (x * y + z * w), 1 - two_s * (x * x + z * z), two_s * (y * z - x * w),
      two_s * (x * z - y * w), two_s * (y * z + x * w), 1 - two_s * (x * x + y * y),
  )
  return jnp.stack(rows, axis=-1).reshape(q.shape[:-1] + (3, 3))


def _sqrt_positive_part(x: jax.Array) -> jax.Array:
  """sqrt(max(x, 0)) with a zero (not infinite) gradient at and below 0."""
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def standardize_quaternion(q: jax.typing.ArrayLike) -> jax.Array:
  """Flips quaternions with a negative real part so that w ≥ 0 (same rotation)."""
  q = as_float_array(q, "q", (4,))
  return jnp.where(q[..., :1] < 0, -q, q)


def rotmat_to_quat(rotmat: jax.typing.ArrayLike) -> jax.Array:
  """Unit quaternions [..., 4] (w ≥ 0) of rotation matrices [..., 3, 3].

  Each of the four classic formulas divides by one of |w|, |x|, |y|, |z|; the one with the largest
  divisor is picked, which stays accurate near 180° rotations where w → 0.
  """
  m = as_float_array(rotmat, "rotmat", (3, 3))
  m00, m01, m02, m10, m11, m12, m20, m21, m22 = jnp.moveaxis(
      m.reshape(m.shape[:-2] + (9,)), -1, 0)
  q_abs = _sqrt_positive_part(jnp.stack([
      1.0 + m00 + m11 + m22,
      1.0 + m00 - m11 - m22,
      1.0 - m00 + m11 - m22,
      1.0 - m00 - m11 + m22,
  ], axis=-1))
  # Row k is the quaternion scaled by 2·|q_k| (up to sign), from the formula that divides by q_k.
  candidates = jnp.stack([
      jnp.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], axis=-1),
      jnp.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], axis=-1),
      jnp.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], axis=-1),
      jnp.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], axis=-1),
  ], axis=-2)
  # The 0.1 floor only protects rows that are never selected.
  candidates = candidates / (2.0 * jnp.maximum(q_abs, 0.1))[..., None]
  best = jnp.argmax(q_abs, axis=-1)
  q = jnp.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
  return standardize_quaternion(q)


def quat_multiply(a: jax.typing.ArrayLike, b: jax.typing.ArrayLike) -> jax.Array:
  """Hamilton product a ⊗ b (wxyz): R(a ⊗ b) = R(a)·R(b)."""
  a = as_float_array(a, "a", (4,))
  b = as_float_array(b, "b", (4,))
  aw, ax, ay, az = jnp.moveaxis(a, -1, 0)
  bw, bx, by, bz = jnp.moveaxis(b, -1, 0)
  return jnp.stack([
      aw * bw - ax * bx - ay * by - az * bz,
      aw * bx + ax * bw + ay * bz - az * by,
      aw * by - ax * bz + ay * bw + az * bx,
      aw * bz + ax * by - ay * bx + az * bw,
  ], axis=-1)


def quat_slerp(q0: jax.typing.ArrayLike, q1: jax.typing.ArrayLike,
               fraction: jax.typing.ArrayLike) -> jax.Array:
  """Unit-norm spherical interpolation from q0 (fraction 0) to q1 (fraction 1), as REF does it.

  q1 is flipped onto q0's hemisphere, θ = acos(clamp(q0·q1, 0, 1)) on the raw (possibly non-unit)
  quaternions, q0 is returned where θ < 1e-5, and the result is normalised. `fraction` broadcasts
  against the leading dimensions of q0 and q1.
  """
  q0 = as_float_array(q0, "q0", (4,))
  q1 = as_float_array(q1, "q1", (4,))
  fraction = jnp.asarray(fraction, dtype=jnp.result_type(q0, q1))[..., None]
  dot = jnp.sum(q0 * q1, axis=-1, keepdims=True)
  q1 = jnp.where(dot < 0, -q1, q1)
  dot = jnp.clip(jnp.abs(dot), 0.0, 1.0)
  at_start = jnp.arccos(dot) < SLERP_MIN_ANGLE
  # acos has an infinite derivative at 1: evaluate the unused branch at a harmless point instead.
  theta = jnp.arccos(jnp.where(at_start, 0.5, dot))
  inv_sin = 1.0 / (jnp.sin(theta) + _SLERP_SIN_EPS)
  q = q0 * (jnp.sin((1.0 - fraction) * theta) * inv_sin) + q1 * (jnp.sin(fraction * theta) * inv_sin)
  q = jnp.where(at_start, q0, q)
  return q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
