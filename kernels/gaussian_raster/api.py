"""Tile compositor entry point: backend dispatch and the custom VJP (rasterizer.md §3-§4.4).

`composite` is differentiable w.r.t. `params` and `feats` (per-slot; the caller's gather turns them into
per-Gaussian gradients). Every backend sits behind one `jax.custom_vjp`: `pallas_call` has no transpose
rule, and the backward must reuse the forward's `last` (never re-derive inclusion from T thresholds).
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType

import jax

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
    backend = _AUTO.get(jax.default_backend(), "xla")
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
  acc, t_final, _ = _dispatch("forward", backend, params, feats, counts, tiles_per_row=tiles_per_row,
                              tiles_per_image=tiles_per_image, interpret=interpret)
  return acc, t_final


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
    backend: "xla" | "pallas_tpu" | "pallas_gpu" | "auto" (by jax.default_backend()); a backend that
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
