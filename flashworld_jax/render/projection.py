"""World → camera → pixel projection of 3D Gaussians, gsplat classic semantics (rasterizer.md §2.1-2.3).

Everything here is per camera; `rasterization` vmaps it over cameras. Culled Gaussians get radii (0, 0).
Divisions by quantities that are invalid for culled Gaussians (z, det) go through safe denominators so
that gradients stay finite everywhere; the culled entries never reach the compositor.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_EXTENT = 3.33          # σ multiple of the screen-space box
FOV_CLAMP_MARGIN = 0.3     # fraction of tan(fov/2) beyond the image where the Jacobian is clamped


class Projected(NamedTuple):
  """Per-camera projection results, N Gaussians."""
  means2d: jax.Array     # [N, 2] pixel coordinates
  depths: jax.Array      # [N] camera-space z
  conics: jax.Array      # [N, 3] (a, b, c) of the inverse blurred 2D covariance
  opacities: jax.Array   # [N] opacity used for compositing (× compensation when antialiased)
  radii: jax.Array       # [N, 2] int32 half-extent of the tile box; (0, 0) = culled


def quat_scale_to_covar(quats: jax.Array, scales: jax.Array) -> jax.Array:
  """Σ3d = (R·diag(s))(R·diag(s))ᵀ from wxyz quaternions (any length) and scales: [N, 3, 3].

  Written per component: XLA:CPU runs batched 3×3 einsums (and their transposes in the backward)
  2-3× slower than the same arithmetic on [N] vectors.
  """
  unit = _unit_quat(quats)
  w, x, y, z = (unit[..., i] for i in range(4))
  rot = ((1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
         (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
         (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)))
  m = [[rot[i][j] * scales[..., j] for j in range(3)] for i in range(3)]
  return _matrix([[sum(m[i][j] * m[k][j] for j in range(3)) for k in range(3)] for i in range(3)])


@jax.custom_vjp
def _unit_quat(quats: jax.Array) -> jax.Array:
  """q / |q| over the last axis (4), its sums written per component: XLA:CPU reduces over a minor
  axis of 4 slowly, and autodiff's backward has such a reduction (covariances and their gradient
  at 100k, medians: 8.0 → 3.0 ms)."""
  return _unit_quat_fwd(quats)[0]


def _unit_quat_fwd(quats):
  inv_norm = 1.0 / jnp.sqrt(sum(quats[..., i] * quats[..., i] for i in range(4)))[..., None]
  unit = quats * inv_norm
  return unit, (unit, inv_norm)


def _unit_quat_bwd(residuals, g):
  unit, inv_norm = residuals   # d(q/|q|) = (g − q̂ (q̂·g)) / |q|
  along = sum(unit[..., i] * g[..., i] for i in range(4))[..., None]
  return ((g - unit * along) * inv_norm,)


_unit_quat.defvjp(_unit_quat_fwd, _unit_quat_bwd)


def _matrix(rows) -> jax.Array:
  """[[x_ij]] nested lists of equal-shape arrays → array [..., n, m]."""
  return jnp.stack([jnp.stack(row, axis=-1) for row in rows], axis=-2)


def project(means: jax.Array, covars: jax.Array, opacities: jax.Array, viewmat: jax.Array,
            K: jax.Array, width: int, height: int, *, near_plane: float, far_plane: float,
            radius_clip: float, eps2d: float, antialiased: bool = False) -> Projected:
  """Projects N Gaussians (means [N,3], covars [N,3,3], opacities [N]) into one pinhole camera."""
  rot_v, t_v = viewmat[:3, :3], viewmat[:3, 3]
  means_c = means @ rot_v.T + t_v
  x, y, z = means_c[:, 0], means_c[:, 1], means_c[:, 2]
  in_depth = (z >= near_plane) & (z <= far_plane)
  z_safe = jnp.where(in_depth, z, 1.0)

  fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
  tan_fovx = 0.5 * width / fx
  tan_fovy = 0.5 * height / fy
  lim_x_pos = (width - cx) / fx + FOV_CLAMP_MARGIN * tan_fovx
  lim_x_neg = cx / fx + FOV_CLAMP_MARGIN * tan_fovx
  lim_y_pos = (height - cy) / fy + FOV_CLAMP_MARGIN * tan_fovy
  lim_y_neg = cy / fy + FOV_CLAMP_MARGIN * tan_fovy
  tx = z_safe * jnp.clip(x / z_safe, -lim_x_neg, lim_x_pos)
  ty = z_safe * jnp.clip(y / z_safe, -lim_y_neg, lim_y_pos)
  # Σ2d = (J·R_v) Σ (J·R_v)ᵀ: J·R_v per component (J has two zeros), then one batched product. The
  # camera rotation as its own batched einsum cost XLA:CPU more than all the rest with many cameras,
  # and [N, 1] × [3] products would make the backward reduce over a minor axis of 3 (slow there).
  jac_x = (fx / z_safe, -fx * tx / (z_safe * z_safe))            # J row 0 at columns 0 and 2
  jac_y = (fy / z_safe, -fy * ty / (z_safe * z_safe))            # J row 1 at columns 1 and 2
  jac_rot = _matrix([[jac_x[0] * rot_v[0, k] + jac_x[1] * rot_v[2, k] for k in range(3)],
                     [jac_y[0] * rot_v[1, k] + jac_y[1] * rot_v[2, k] for k in range(3)]])
  cov2d = jnp.einsum("nij,njk,nlk->nil", jac_rot, covars, jac_rot)
  means2d = jnp.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], axis=-1)

  det0 = cov2d[:, 0, 0] * cov2d[:, 1, 1] - cov2d[:, 0, 1] * cov2d[:, 1, 0]
  c00 = cov2d[:, 0, 0] + eps2d
  c11 = cov2d[:, 1, 1] + eps2d
  c01 = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])
  det = c00 * c11 - c01 * c01
  valid = in_depth & (det > 0)
  det_safe = jnp.where(valid, det, 1.0)
  conics = jnp.stack([c11 / det_safe, -c01 / det_safe, c00 / det_safe], axis=-1)

  opac = opacities
  if antialiased:
    opac = opac * jnp.sqrt(jnp.maximum(det0 / det_safe, 0.0))
  valid &= opac >= ALPHA_THRESHOLD

  # Radii, the extent and the culls are selections: no gradient flows through them (§3.3).
  o_sg = jax.lax.stop_gradient(jnp.maximum(opac, ALPHA_THRESHOLD))
  extent = jnp.minimum(MAX_EXTENT, jnp.sqrt(2.0 * jnp.log(o_sg / ALPHA_THRESHOLD)))
  radius_x = jnp.ceil(extent * jnp.sqrt(jax.lax.stop_gradient(jnp.maximum(c00, 0.0))))
  radius_y = jnp.ceil(extent * jnp.sqrt(jax.lax.stop_gradient(jnp.maximum(c11, 0.0))))
  m2d = jax.lax.stop_gradient(means2d)
  valid &= ~((radius_x <= radius_clip) & (radius_y <= radius_clip))
  valid &= ((m2d[:, 0] + radius_x > 0) & (m2d[:, 0] - radius_x < width)
            & (m2d[:, 1] + radius_y > 0) & (m2d[:, 1] - radius_y < height))
  radii = jnp.where(valid[:, None], jnp.stack([radius_x, radius_y], -1), 0.0).astype(jnp.int32)
  return Projected(means2d=means2d, depths=z, conics=conics, opacities=opac, radii=radii)
