"""Tile compositor entry points: backend dispatch and the custom VJPs (rasterizer.md §3-§4.4).

`composite` takes per-tile slabs (the kernels' contract) and is differentiable w.r.t. `params` and
`feats` per slot; the caller's gather turns them into per-Gaussian gradients. `composite_lists` takes
per-Gaussian rows and the tile lists: on XLA it gathers lazily, only the list blocks it reaches, and
returns per-Gaussian gradients directly; on Pallas it gathers the slabs and calls `composite`. Every
backend sits behind a `jax.custom_vjp`: `pallas_call` has no transpose rule, and the backward must
reuse the forward's `last` (never re-derive inclusion from T thresholds).
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType

import jax
import jax.numpy as jnp

from kernels import platform
from kernels.gaussian_raster import reference

BACKENDS = ("auto", "xla", "pallas_tpu", "pallas_gpu")
_AUTO = {"tpu": "pallas_tpu", "gpu": "pallas_gpu", "cuda": "pallas_gpu"}


def _module(name: str) -> ModuleType:
  if name == "xla":
    return reference
  # Imported lazily: the Pallas backends pull in platform-specific Pallas modules.
  return importlib.import_module(f"kernels.gaussian_raster.{name}")


def _candidates(backend: str) -> tuple[str, ...]:
  if backend not in BACKENDS:
    raise ValueError(f"composite: backend={backend!r}, expected one of {BACKENDS}")
  if backend == "auto":
    backend = _AUTO.get(platform.current(), "xla")
  return (backend, "xla") if backend != "xla" else ("xla",)


def _dispatch(op: str, backend: str, *args, **kwargs):
  """Runs `op` on the first candidate backend that does not raise NotImplementedError."""
  candidates = _candidates(backend)
  for name in candidates:
    try:
      module = _module(name)
    except ImportError:
      if name == "xla":
        raise
      continue
    try:
      return getattr(module, op)(*args, **kwargs)
    except NotImplementedError:
      if name == candidates[-1]:
        raise
  raise AssertionError("unreachable: the xla candidate either returns or raises")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _composite(params, feats, counts, tiles_per_row, tiles_per_image, backend, interpret):
  return _composite_fwd(params, feats, counts, tiles_per_row, tiles_per_image, backend, interpret)[0]


def _composite_fwd(params, feats, counts, tiles_per_row, tiles_per_image, backend, interpret):
  acc, t_final, last = _dispatch("forward", backend, params, feats, counts,
                                 tiles_per_row=tiles_per_row, tiles_per_image=tiles_per_image,
                                 interpret=interpret)
  return (acc, t_final), (params, feats, counts, acc, t_final, last)


def _composite_bwd(tiles_per_row, tiles_per_image, backend, interpret, residuals, cotangents):
  params, feats, counts, acc, t_final, last = residuals
  g_acc, g_t = cotangents
  g_params, g_feats = _dispatch("backward", backend, params, feats, counts, acc, t_final, last, g_acc,
                                g_t, tiles_per_row=tiles_per_row, tiles_per_image=tiles_per_image,
                                interpret=interpret)
  return g_params, g_feats, None


_composite.defvjp(_composite_fwd, _composite_bwd)


def composite(params: jax.Array, feats: jax.Array, counts: jax.Array, *, tiles_per_row: int,
              tiles_per_image: int, backend: str = "auto",
              interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """Front-to-back alpha compositing of per-tile Gaussian slabs.

  Args:
    params: f32[n_tiles, 8, Kcap], rows (mean_x, mean_y, conic_a, conic_b, conic_c, opacity, 0, 0);
      padding slots have opacity 0.
    feats: f32[n_tiles, D, Kcap] features to composite.
    counts: i32[n_tiles] valid (leading, depth-sorted) slots per tile.
    tiles_per_row, tiles_per_image: tile t covers the 16×16 pixels at
      x0 = ((t % tiles_per_image) % tiles_per_row)·16, y0 = ((t % tiles_per_image) // tiles_per_row)·16.
    backend: "xla" | "pallas_tpu" | "pallas_gpu" | "auto" (by platform.current()); a backend that
      raises NotImplementedError falls through to "xla".
    interpret: run Pallas kernels in interpret mode (CPU tests).

  Returns:
    acc f32[n_tiles, D, 256] (Σ wᵢ fᵢ, no background) and t_final f32[n_tiles, 256], pixel ly·16+lx.
  """
  if params.ndim != 3 or params.shape[1] != 8:
    raise ValueError(f"composite: params shape {params.shape}, expected [n_tiles, 8, Kcap]")
  if feats.ndim != 3 or feats.shape[0] != params.shape[0] or feats.shape[2] != params.shape[2]:
    raise ValueError(f"composite: feats shape {feats.shape}, expected [{params.shape[0]}, D, "
                     f"{params.shape[2]}]")
  if counts.shape != (params.shape[0],):
    raise ValueError(f"composite: counts shape {counts.shape}, expected ({params.shape[0]},)")
  _candidates(backend)
  return _composite(params, feats, counts, tiles_per_row, tiles_per_image, backend, interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _composite_lists_xla(rows, ids, counts, tiles_per_row, tiles_per_image):
  # Outside differentiation, nothing is recorded for a backward.
  acc, t_final, _ = reference.forward_lists(rows, ids, counts, tiles_per_row=tiles_per_row,
                                            tiles_per_image=tiles_per_image)
  return acc, t_final


def _composite_lists_xla_fwd(rows, ids, counts, tiles_per_row, tiles_per_image):
  acc, t_final, last, entries, n_entries = reference.forward_lists_with_entries(
      rows, ids, counts, tiles_per_row=tiles_per_row, tiles_per_image=tiles_per_image)
  return (acc, t_final), (rows, ids, acc, t_final, last, entries, n_entries)


def _composite_lists_xla_bwd(tiles_per_row, tiles_per_image, residuals, cotangents):
  g_rows = reference.backward_lists(*residuals, *cotangents, tiles_per_row=tiles_per_row,
                                    tiles_per_image=tiles_per_image)
  return g_rows, None, None


_composite_lists_xla.defvjp(_composite_lists_xla_fwd, _composite_lists_xla_bwd)


def composite_lists(rows: jax.Array, ids: jax.Array, counts: jax.Array, *, tiles_per_row: int,
                    tiles_per_image: int, backend: str = "auto",
                    interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """`composite` from per-Gaussian rows and per-tile lists, differentiable w.r.t. `rows`.

  Args:
    rows: f32[G+1, 8+D], per Gaussian (mean_x, mean_y, conic_a, conic_b, conic_c, opacity, 0, 0)
      then its D features; the last row is zero (list padding points at it).
    ids: i32[n_tiles, Kcap] per-tile, depth-sorted indices into rows; padding G (or −1).
    counts: i32[n_tiles] valid entries per list.
    tiles_per_row, tiles_per_image, backend, interpret: as `composite`.

  Returns:
    acc f32[n_tiles, D, 256] and t_final f32[n_tiles, 256], as `composite`.
  """
  if rows.ndim != 2 or rows.shape[1] <= 8:
    raise ValueError(f"composite_lists: rows shape {rows.shape}, expected [G+1, 8+D] with D >= 1")
  if ids.ndim != 2 or counts.shape != (ids.shape[0],):
    raise ValueError(f"composite_lists: ids {ids.shape} / counts {counts.shape}, expected "
                     "[n_tiles, Kcap] / [n_tiles]")
  if _candidates(backend)[0] == "xla":
    return _composite_lists_xla(rows, ids, counts, tiles_per_row, tiles_per_image)
  slabs = jnp.moveaxis(rows.T[:, jnp.where(ids < 0, rows.shape[0] - 1, ids)], 0, 1)
  return composite(slabs[:, :8], slabs[:, 8:], counts, tiles_per_row=tiles_per_row,
                   tiles_per_image=tiles_per_image, backend=backend, interpret=interpret)
