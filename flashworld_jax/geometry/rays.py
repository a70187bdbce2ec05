"""Per-pixel camera rays and the DiT's ray map (REF `create_rays`, `create_raymaps`; spec §7.3, §7.4)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from flashworld_jax.geometry._arrays import as_float_array
from flashworld_jax.geometry.cameras import CAMERA_DIM
from flashworld_jax.geometry.quaternions import quat_to_rotmat


def camera_rays(
    cams: jax.typing.ArrayLike,
    height: int,
    width: int,
    uv_offset: jax.typing.ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
  """World-space rays through the pixel centres of a height × width grid.

  The normalised intrinsics are scaled to the grid (f_x·w, c_x·w, f_y·h, c_y·h). Pixel (row, col) is
  sampled at column col + 0.5 + Δu·(c_x·w) and row row + 0.5 + Δv·(c_y·h), where (Δu, Δv) =
  `uv_offset` [..., h, w, 2] (zero when None): the Gaussian head's offsets are in units of the
  principal point (spec §5.2).

  Args:
    cams: camera vectors [..., 11].
    height, width: grid size in pixels.
    uv_offset: optional raw offsets [..., height, width, 2], broadcast against cams' batch.

  Returns:
    (origins, directions), each [..., height, width, 3]; directions have unit length.
  """
  cams = as_float_array(cams, "cams", (CAMERA_DIM,))
  if height < 1 or width < 1:
    raise ValueError(f"height and width must be positive, got height={height}, width={width}")
  dtype = cams.dtype
  rotation = quat_to_rotmat(cams[..., 0:4])
  scale = jnp.asarray([width, height, width, height], dtype)
  fx, fy, cx, cy = jnp.moveaxis(cams[..., 7:11] * scale, -1, 0)
  fx, fy, cx, cy = (a[..., None, None] for a in (fx, fy, cx, cy))
  u = jnp.arange(width, dtype=dtype) + 0.5
  v = (jnp.arange(height, dtype=dtype) + 0.5)[:, None]
  if uv_offset is not None:
    uv_offset = as_float_array(uv_offset, "uv_offset", (height, width, 2)).astype(dtype)
    u = u + uv_offset[..., 0] * cx
    v = v + uv_offset[..., 1] * cy
  x = (u - cx) / fx
  y = -(v - cy) / fy
  x, y = jnp.broadcast_arrays(x, y)
  directions_cam = jnp.stack([x, y, -jnp.ones_like(x)], axis=-1)
  directions = jnp.einsum("...ij,...hwj->...hwi", rotation, directions_cam)
  directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
  origins = jnp.broadcast_to(cams[..., None, None, 4:7], directions.shape)
  return origins, directions


def raymap(cams: jax.typing.ArrayLike, height: int, width: int) -> jax.Array:
  """Channel-first ray map [..., 6, height, width]: [d̂, o − (o·d̂)·d̂] per pixel.

  The last three channels are the point of the ray closest to the world origin (not the Plücker
  moment o × d), as REF computes them.
  """
  origins, directions = camera_rays(cams, height, width)
  closest = origins - jnp.sum(origins * directions, axis=-1, keepdims=True) * directions
  return jnp.moveaxis(jnp.concatenate([directions, closest], axis=-1), -1, -3)
