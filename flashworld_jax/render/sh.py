"""Real spherical-harmonics colour, Sloan's fast form as in gsplat (rasterizer.md §2.4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

MAX_SH_DEGREE = 3


def sh_basis(degree: int, dirs: jax.Array) -> jax.Array:
  """The (degree+1)² real SH basis values at unit directions `dirs` [..., 3] → [..., (degree+1)²]."""
  _check_degree("sh_basis", degree)
  return jnp.stack(_basis_terms(degree, dirs[..., 0], dirs[..., 1], dirs[..., 2]), axis=-1)


def _check_degree(caller: str, degree: int) -> None:
  if not 0 <= degree <= MAX_SH_DEGREE:
    raise ValueError(f"{caller}: degree={degree}, expected 0..{MAX_SH_DEGREE}")


def _basis_terms(degree: int, x: jax.Array, y: jax.Array, z: jax.Array) -> list[jax.Array]:
  """The basis values at unit directions (x, y, z), one array per term."""
  basis = [jnp.full_like(x, 0.2820947917738781)]
  if degree >= 1:
    basis += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
  if degree >= 2:
    z2 = z * z
    f_c1 = x * x - y * y
    f_s1 = 2.0 * x * y
    basis += [0.5462742152960395 * f_s1, -1.092548430592079 * z * y,
              0.9461746957575601 * z2 - 0.3153915652525201, -1.092548430592079 * z * x,
              0.5462742152960395 * f_c1]
  if degree >= 3:
    f_c2 = x * f_c1 - y * f_s1
    f_s2 = x * f_s1 + y * f_c1
    tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
    basis += [-0.5900435899266435 * f_s2, 1.445305721320277 * z * f_s1, tmp_c * y,
              z * (1.865881662950577 * z2 - 1.119528997770346), tmp_c * x,
              1.445305721320277 * z * f_c1, -0.5900435899266435 * f_c2]
  return basis


def sh_to_rgb(degree: int, dirs: jax.Array, coeffs: jax.Array) -> jax.Array:
  """Colour `max(Σ_k basis_k(normalize(dirs))·coeff_k + 0.5, 0)`.

  dirs [..., 3] need not be unit length; coeffs [..., K, 3] with K ≥ (degree+1)², of which only the
  first (degree+1)² are used; their leading axes broadcast against those of dirs (e.g. one set of
  coefficients for all cameras) without being copied.
  """
  _check_degree("sh_to_rgb", degree)
  n_bases = (degree + 1) ** 2
  if coeffs.shape[-2] < n_bases:
    raise ValueError(f"sh_to_rgb: colors have K={coeffs.shape[-2]} coefficients, sh_degree={degree} "
                     f"needs at least {n_bases}")
  # Same normalisation as torch's F.normalize: divide by max(|d|, 1e-12).
  x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
  norm = jnp.maximum(jnp.sqrt(x * x + y * y + z * z), 1e-12)
  basis = jnp.stack(_basis_terms(degree, x / norm, y / norm, z / norm), axis=-1)
  return jnp.maximum(_combine(basis, coeffs[..., :n_bases, :]) + 0.5, 0.0)


@jax.custom_vjp
def _combine(basis: jax.Array, coeffs: jax.Array) -> jax.Array:
  """Σ_k basis[..., k]·coeffs[..., k, :] for basis [..., K] and coeffs [..., K, 3] (leading axes
  broadcast), per channel and term.

  The gradient is written out because autodiff's is slow on XLA:CPU: its basis gradient reduces over
  the minor axis of 3 channels (~5 ms per term for 100k Gaussians) and its coefficient gradient pads
  every (term, channel) slice back into [..., K, 3].
  """
  return jnp.stack([sum(basis[..., k] * coeffs[..., k, channel] for k in range(basis.shape[-1]))
                    for channel in range(3)], axis=-1)


def _combine_fwd(basis, coeffs):
  return _combine(basis, coeffs), (basis, coeffs)


def _combine_bwd(residuals, g):
  basis, coeffs = residuals
  g_basis = sum(coeffs[..., channel] * g[..., None, channel] for channel in range(3))
  g_coeffs = basis[..., None] * g[..., None, :]
  return _sum_to_shape(g_basis, basis.shape), _sum_to_shape(g_coeffs, coeffs.shape)


def _sum_to_shape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Sums x over the axes along which an operand of `shape` was broadcast to x's shape."""
  lead = x.ndim - len(shape)
  stretched = tuple(lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
  axes = tuple(range(lead)) + stretched
  return jnp.sum(x, axis=axes).reshape(shape) if axes else x


_combine.defvjp(_combine_fwd, _combine_bwd)
