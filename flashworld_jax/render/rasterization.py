"""Public differentiable Gaussian-splat renderer with gsplat 1.5.3 classic semantics (rasterizer.md).

Pipeline: projection + SH per camera → static-capacity binning and sort → compositor on per-Gaussian
rows and the tile lists (`kernels.gaussian_raster.composite_lists`, a custom VJP: XLA gathers lazily
and returns per-Gaussian gradients; Pallas gathers per-tile slabs outside its kernels' VJP) → un-tile,
crop, background.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from flashworld_jax.render import binning, projection, sh
from flashworld_jax.render.binning import RasterCapacity
from kernels.gaussian_raster import BACKENDS, composite_lists

RENDER_MODES = ("RGB", "D", "RGB+D")
RASTERIZE_MODES = ("classic", "antialiased")
_CONCRETE_ERRORS = (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
                    jax.errors.TracerBoolConversionError)


def _require_shape(name: str, x: jax.Array, shape: tuple) -> None:
  """shape entries: int (must match) or None (any)."""
  ok = x.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, x.shape))
  if not ok:
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    raise ValueError(f"rasterization: {name} has shape {tuple(x.shape)}, expected {want}")


def _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
              sh_degree, tile_size, backgrounds, render_mode, rasterize_mode, backend) -> None:
  if render_mode not in RENDER_MODES:
    raise ValueError(f"rasterization: render_mode={render_mode!r}, expected one of {RENDER_MODES}")
  if rasterize_mode not in RASTERIZE_MODES:
    raise ValueError(f"rasterization: rasterize_mode={rasterize_mode!r}, expected one of "
                     f"{RASTERIZE_MODES}")
  if backend not in BACKENDS:
    raise ValueError(f"rasterization: backend={backend!r}, expected one of {BACKENDS}")
  if tile_size != binning.TILE_SIZE:
    raise ValueError(f"rasterization: tile_size={tile_size}, only {binning.TILE_SIZE} is supported")
  if not near_plane > 0:
    raise ValueError(f"rasterization: near_plane={near_plane}, expected > 0 (depth sort keys need it)")
  for name, size in (("width", width), ("height", height)):
    if not isinstance(size, int) or size < 1:
      raise ValueError(f"rasterization: {name}={size!r}, expected an int >= 1")
  _require_shape("means", means, (None, 3))
  n = means.shape[0]
  _require_shape("quats", quats, (n, 4))
  _require_shape("scales", scales, (n, 3))
  _require_shape("opacities", opacities, (n,))
  _require_shape("viewmats", viewmats, (None, 4, 4))
  c = viewmats.shape[0]
  _require_shape("Ks", Ks, (c, 3, 3))
  if sh_degree is None:
    if colors.ndim == 2:
      _require_shape("colors", colors, (n, None))
    else:
      _require_shape("colors", colors, (c, n, None))
  else:
    if not (isinstance(sh_degree, int) and 0 <= sh_degree <= sh.MAX_SH_DEGREE):
      raise ValueError(f"rasterization: sh_degree={sh_degree!r}, expected None or 0..{sh.MAX_SH_DEGREE}")
    if colors.ndim == 3:
      _require_shape("colors", colors, (n, None, 3))
    else:
      _require_shape("colors", colors, (c, n, None, 3))
    if colors.shape[-2] < (sh_degree + 1) ** 2:
      raise ValueError(f"rasterization: colors have K={colors.shape[-2]} SH coefficients, "
                       f"sh_degree={sh_degree} needs K >= {(sh_degree + 1) ** 2}")
  if backgrounds is not None and render_mode != "D":
    n_colors = 3 if sh_degree is not None else colors.shape[-1]
    _require_shape("backgrounds", backgrounds, (c, n_colors))


def _features(means, colors, viewmats, depths, sh_degree, render_mode) -> jax.Array:
  """Per-camera features to composite, [C, N, X] (colours, depth, or colours then depth)."""
  n_cameras, n = depths.shape
  parts = []
  if render_mode in ("RGB", "RGB+D"):
    if sh_degree is None:
      rgb = jnp.broadcast_to(colors, (n_cameras, n, colors.shape[-1]))
    else:
      campos = jnp.linalg.inv(viewmats)[:, :3, 3]
      dirs = means[None, :, :] - campos[:, None, :]
      rgb = sh.sh_to_rgb(sh_degree, dirs, colors)     # colors [N,K,3] or [C,N,K,3] broadcast
    parts.append(rgb)
  if render_mode in ("D", "RGB+D"):
    parts.append(depths[..., None])
  return jnp.concatenate(parts, axis=-1)


def _untile(x: jax.Array, n_cameras: int, width: int, height: int) -> jax.Array:
  """[C·th·tw, X, 256] tiles → [C, H, W, X] images (edge tiles cropped)."""
  tiles_x, tiles_y = binning.tile_grid(width, height)
  ts = binning.TILE_SIZE
  x = x.reshape(n_cameras, tiles_y, tiles_x, x.shape[1], ts, ts)
  x = x.transpose(0, 1, 4, 2, 5, 3).reshape(n_cameras, tiles_y * ts, tiles_x * ts, -1)
  return x[:, :height, :width]


def _project_cameras(means, quats, scales, opacities, viewmats, Ks, *, width, height, near_plane,
                     far_plane, radius_clip, eps2d, rasterize_mode) -> projection.Projected:
  """Projection for all C cameras: Projected fields with a leading camera axis."""
  covars = projection.quat_scale_to_covar(quats, scales)
  project = functools.partial(projection.project, width=width, height=height, near_plane=near_plane,
                              far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
                              antialiased=rasterize_mode == "antialiased")
  return jax.vmap(project, in_axes=(None, None, None, 0, 0))(means, covars, opacities, viewmats, Ks)


@functools.partial(jax.jit, static_argnames=(
    "width", "height", "near_plane", "far_plane", "radius_clip", "eps2d", "sh_degree", "render_mode",
    "rasterize_mode", "capacity", "backend", "interpret"))
def _rasterize(means, quats, scales, opacities, colors, viewmats, Ks, backgrounds, *, width, height,
               near_plane, far_plane, radius_clip, eps2d, sh_degree, render_mode, rasterize_mode,
               capacity, backend, interpret):
  n_cameras, n = viewmats.shape[0], means.shape[0]
  proj = _project_cameras(means, quats, scales, opacities, viewmats, Ks, width=width, height=height,
                          near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
                          eps2d=eps2d, rasterize_mode=rasterize_mode)
  feats = _features(means, colors, viewmats, proj.depths, sh_degree, render_mode)

  lists = binning.bin_gaussians(jax.lax.stop_gradient(proj.means2d), proj.radii,
                                jax.lax.stop_gradient(proj.depths), width, height, capacity)
  # One row per (camera, Gaussian) and a zero row for list padding; the compositor gathers what the
  # lists reach (the XLA path lazily, block by block) and returns per-row gradients.
  rows = jnp.concatenate([proj.means2d, proj.conics, proj.opacities[..., None],
                          jnp.zeros((n_cameras, n, 2), jnp.float32), feats], axis=-1)
  rows = jnp.pad(rows.reshape(n_cameras * n, rows.shape[-1]), ((0, 1), (0, 0)))
  tiles_x, tiles_y = binning.tile_grid(width, height)
  acc, t_final = composite_lists(rows, lists.ids, lists.counts, tiles_per_row=tiles_x,
                                 tiles_per_image=tiles_x * tiles_y, backend=backend,
                                 interpret=interpret)
  image = _untile(acc, n_cameras, width, height)
  t_image = _untile(t_final[:, None, :], n_cameras, width, height)
  if backgrounds is not None and render_mode != "D":
    n_colors = backgrounds.shape[-1]
    bg = jnp.concatenate([backgrounds, jnp.zeros((n_cameras, image.shape[-1] - n_colors))], axis=-1)
    image = image + t_image * bg[:, None, None, :]
  meta = {
      "radii": proj.radii, "means2d": proj.means2d, "depths": proj.depths, "conics": proj.conics,
      "opacities": proj.opacities, "tile_counts": lists.tile_counts, "n_isects": lists.n_isects,
      "max_tile_count": lists.max_tile_count, "overflow": lists.overflow,
  }
  return image, 1.0 - t_image, meta


@functools.partial(jax.jit, static_argnames=("width", "height", "near_plane", "far_plane",
                                             "radius_clip", "eps2d", "rasterize_mode"))
def _count_isects(means, quats, scales, opacities, viewmats, Ks, *, width, height, near_plane,
                  far_plane, radius_clip, eps2d, rasterize_mode):
  proj = _project_cameras(means, quats, scales, opacities, viewmats, Ks, width=width, height=height,
                          near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip,
                          eps2d=eps2d, rasterize_mode=rasterize_mode)
  tiles_x, tiles_y = binning.tile_grid(width, height)
  boxes = binning.tile_boxes(proj.means2d, proj.radii, tiles_x, tiles_y)
  tile_counts = binning.count_per_tile(boxes, tiles_x, tiles_y)
  return jnp.sum(boxes.counts), jnp.max(tile_counts, initial=0)


def estimate_capacity(means, quats, scales, opacities, viewmats, Ks, width: int, height: int, *,
                      near_plane: float = 0.01, far_plane: float = 1e10, radius_clip: float = 0.0,
                      eps2d: float = 0.3, rasterize_mode: str = "classic",
                      headroom: float = 1.1) -> RasterCapacity:
  """Runs the counting pass on concrete arrays and sizes a `RasterCapacity` with `headroom` (≥ 1).

  Use it on the host before jitting a renderer over scenes of similar density.
  """
  lax_stop = jax.lax.stop_gradient
  n_isects, max_tile_count = _count_isects(
      *(lax_stop(x) for x in (means, quats, scales, opacities, viewmats, Ks)), width=width,
      height=height, near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
      rasterize_mode=rasterize_mode)
  try:
    n_isects, max_tile_count = int(n_isects), int(max_tile_count)
  except _CONCRETE_ERRORS as e:
    raise ValueError("estimate_capacity needs concrete arrays; under jit/vmap pass "
                     "rasterization(capacity=RasterCapacity(...)) sized on the host") from e
  return RasterCapacity.from_counts(n_isects, max_tile_count, headroom)


def rasterization(means: jax.Array, quats: jax.Array, scales: jax.Array, opacities: jax.Array,
                  colors: jax.Array, viewmats: jax.Array, Ks: jax.Array, width: int, height: int, *,
                  near_plane: float = 0.01, far_plane: float = 1e10, radius_clip: float = 0.0,
                  eps2d: float = 0.3, sh_degree: int | None = None, tile_size: int = 16,
                  backgrounds: jax.Array | None = None, render_mode: str = "RGB",
                  rasterize_mode: str = "classic", capacity: RasterCapacity | None = None,
                  backend: str = "auto", interpret: bool = False):
  """Renders N 3D Gaussians into C pinhole cameras, matching gsplat 1.5.3 `rasterization()` (classic).

  Args:
    means [N,3], quats [N,4] (wxyz, normalised inside), scales [N,3] (activated std-devs),
    opacities [N] (in [0,1]): the Gaussians, world space.
    colors: sh_degree None: [N,D] or [C,N,D] features; else SH coefficients [N,K,3] or [C,N,K,3]
      with K ≥ (sh_degree+1)² (colour = max(SH(normalize(mean − campos)) + 0.5, 0)).
    viewmats [C,4,4]: world→camera, OpenCV axes. Ks [C,3,3]: pinhole intrinsics in pixels.
    width, height: image size in pixels (static).
    near_plane (> 0), far_plane: depth cull. radius_clip: cull when both radii ≤ it. eps2d: 2D blur.
    tile_size: must be 16. backgrounds [C,D_colors] or None (0); ignored for depth.
    render_mode: "RGB" | "D" | "RGB+D" (camera-z accumulated Σ wᵢ zᵢ appended last).
    rasterize_mode: "classic" | "antialiased".
    capacity: static `RasterCapacity`. None: sized on the host by `estimate_capacity` and grown and
      re-run on overflow; this needs concrete inputs, so under jit/vmap pass it explicitly.
    backend: compositor "auto" | "xla" | "pallas_tpu" | "pallas_gpu". interpret: Pallas interpret mode.

  Returns:
    render_colors [C,H,W,X] (X = D, 1 or D+1), render_alphas [C,H,W,1] and meta with radii [C,N,2]
    int32, means2d [C,N,2], depths [C,N], conics [C,N,3], opacities [C,N], tile_counts [C,th,tw],
    n_isects, max_tile_count (int32) and overflow (bool: True means the images are invalid; only
    possible with an explicit capacity).
  """
  _validate(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane,
            sh_degree, tile_size, backgrounds, render_mode, rasterize_mode, backend)
  settings = dict(width=width, height=height, near_plane=float(near_plane),
                  far_plane=float(far_plane), radius_clip=float(radius_clip), eps2d=float(eps2d),
                  rasterize_mode=rasterize_mode)
  render = functools.partial(_rasterize, means, quats, scales, opacities, colors, viewmats, Ks,
                             backgrounds, sh_degree=sh_degree, render_mode=render_mode,
                             backend=backend, interpret=interpret, **settings)
  if capacity is not None:
    return render(capacity=capacity)
  capacity = estimate_capacity(means, quats, scales, opacities, viewmats, Ks, **settings)
  while True:
    colors_out, alphas, meta = render(capacity=capacity)
    if not bool(meta["overflow"]):
      return colors_out, alphas, meta
    capacity = RasterCapacity.from_counts(
        max(int(meta["n_isects"]), capacity.max_isects + 1),
        max(int(meta["max_tile_count"]), capacity.tile_capacity + 1))
