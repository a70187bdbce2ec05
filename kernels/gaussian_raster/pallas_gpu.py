"""Pallas GPU (Mosaic GPU, Hopper and newer) tile compositor: forward and backward kernels.

Not verified on hardware. On CPU the kernels are checked three ways: the Mosaic GPU lowering runs
(`jax.export` for "cuda"); `interpret=True` runs the same per-chunk bodies in the generic Pallas
interpreter through a plain `pallas_call` grid; and when `interpret` is a Mosaic GPU interpreter params
object the whole kernel runs in that interpreter (not public API in jax 0.10.2, so only the tests reach
for it; it runs the forward, but not the backward's predicated output copies).

Layout: `plgpu.kernel` with one CUDA block (a 128-thread warpgroup, one Pallas thread) per tile;
`plgpu.emit_pipeline` streams the tile's 128-Gaussian chunks through shared memory by TMA, like gsplat's
shared-memory batches. Mosaic GPU has no scalar prefetch, so a chunk's work is gated on data: a chunk
whose opacities are all 0 (padding) or a tile whose pixels are all done is skipped in the forward, a
chunk past the tile's last blended slot in the backward.

Inside a step the warpgroup holds the tile's 256 pixels as vectors (2 per thread) and walks the chunk's
128 Gaussians in order, reading each one's parameters as scalars from shared memory: gsplat's own
per-pixel recurrence (§2.6), so the forward keeps its arithmetic order. (A [256 × 128] block per step,
as on TPU, would not fit a warpgroup's registers.) The backward walks forward order too (§3.2) and
reduces each pair gradient over the 256 pixels once per Gaussian. Per-pixel state lives in
shared-memory scratch and is copied to the outputs every step, so it is right for any pipeline depth.
Pixel centres and `last` enter as f32 vectors built in XLA: no in-kernel iota (it would need an explicit
layout) and no signed-integer vectors (slot indices < 2^24 are exact in f32).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from kernels import platform
from kernels.gaussian_raster import pallas_common as common

_BACKEND = "pallas_gpu"
_TILE_AXIS = "tile"
_PIPELINE_DEPTH = 2       # chunks in flight: the next chunk's TMA copy overlaps this chunk's maths
_STATIC = ("tiles_per_row", "tiles_per_image", "interpret")


def _check_platform(interpret: Any) -> None:
  if interpret:
    return
  if platform.current() != "gpu":
    raise NotImplementedError(f"{_BACKEND}: needs a GPU backend (have {platform.current()!r}) or "
                              "interpret mode")
  capability = getattr(jax.devices()[0], "compute_capability", "0.0")
  if float(capability) < 9.0:
    raise NotImplementedError(f"{_BACKEND}: Mosaic GPU needs compute capability ≥ 9.0 (Hopper), "
                              f"this GPU has {capability}")


class _Block:
  """A BlockSpec of a [n_tiles, rows, width] operand: the tile's whole row block, or one chunk."""

  def __init__(self, rows: int, per_chunk: bool):
    self.shape = (1, rows, common.CHUNK if per_chunk else common.TILE_PIXELS)
    self.per_chunk = per_chunk

  def index(self, tile, chunk):
    return tile, 0, chunk if self.per_chunk else 0


def _run(chunk_body: Callable, operands: Sequence[jax.Array], in_blocks: Sequence[_Block],
         out_blocks: Sequence[_Block], out_shapes, scratch, *, n_tiles: int, n_chunks: int,
         interpret: Any, name: str):
  """Runs `chunk_body(chunk, *in_blocks, *out_blocks, *scratch)` on every chunk of every tile, chunks
  in order."""
  if interpret is True:
    # The generic interpreter cannot run emit_pipeline's TMA copies: drive the same body from a grid.
    # It never lowers for a device (interpret only), so it needs no compiler params.
    specs = lambda blocks: [pl.BlockSpec(b.shape, b.index) for b in blocks]
    return pl.pallas_call(
        lambda *refs: chunk_body(pl.program_id(1), *refs), out_shape=out_shapes,
        grid=(n_tiles, n_chunks), in_specs=specs(in_blocks), out_specs=specs(out_blocks),
        scratch_shapes=scratch, interpret=True, name=name)(*operands)

  def tile_kernel(*refs):
    gmem, scratch_refs = refs[:len(operands) + len(out_shapes)], refs[len(operands) + len(out_shapes):]
    tile = lax.axis_index(_TILE_AXIS)
    specs = lambda blocks: [pl.BlockSpec(b.shape, functools.partial(b.index, tile)) for b in blocks]
    plgpu.emit_pipeline(
        lambda indices, *blocks: chunk_body(indices[0], *blocks, *scratch_refs),
        grid=(n_chunks,), in_specs=specs(in_blocks), out_specs=specs(out_blocks),
        max_concurrent_steps=_PIPELINE_DEPTH)(*gmem)

  return plgpu.kernel(tile_kernel, out_type=out_shapes, scratch_types=scratch, grid=(n_tiles,),
                      grid_names=(_TILE_AXIS,), interpret=interpret or None)(*operands)


def _pixel_centres(n_tiles: int, tiles_per_row: int, tiles_per_image: int) -> jax.Array:
  """f32[n_tiles, 2, 256]: (x, y) of every pixel."""
  tile = jnp.arange(n_tiles, dtype=jnp.int32)[:, None]
  pixel = jnp.arange(common.TILE_PIXELS, dtype=jnp.int32)[None, :]
  return jnp.stack(common.pixel_centres(tile, pixel, tiles_per_row, tiles_per_image), axis=1)


def _gaussian(params_ref, i):
  """(mean_x, mean_y, conic_a, conic_b, conic_c, opacity) of slot i of this chunk, as scalars."""
  return tuple(params_ref[0, row, i] for row in range(common.GRAD_ROWS))


def _slot(chunk, i) -> jax.Array:
  return (chunk * common.CHUNK + i).astype(jnp.float32)


def _forward_chunk(chunk, pixels_ref, params_ref, feats_ref, acc_ref, trans_ref, last_ref, acc_scr,
                   trans_scr, last_scr, done_scr):
  n_feats = acc_scr.shape[0]

  @pl.when(chunk == 0)
  def _init():
    acc_scr[...] = jnp.zeros_like(acc_scr)
    trans_scr[...] = jnp.ones_like(trans_scr)
    last_scr[...] = jnp.full_like(last_scr, -1.0)
    done_scr[...] = jnp.zeros_like(done_scr)

  has_work = (jnp.max(params_ref[0, 5, :]) > 0) & (jnp.min(done_scr[...]) == 0)

  @pl.when(has_work)
  def _composite():
    px, py = pixels_ref[0, 0, :], pixels_ref[0, 1, :]

    def blend(i, carry):
      trans, done, last, acc = carry
      pair = common.pair_alpha(*_gaussian(params_ref, i), px, py)
      keep = pair.keep & ~done
      t_after = trans * (1.0 - pair.alpha)
      stop = keep & (t_after <= common.T_MIN)          # exclusive: this pair is not blended
      blended = keep & ~stop
      weight = jnp.where(blended, pair.alpha * trans, 0.0)
      acc = tuple(a + feats_ref[0, d, i] * weight for d, a in enumerate(acc))
      return (jnp.where(blended, t_after, trans), done | stop,
              jnp.where(blended, _slot(chunk, i), last), acc)

    carry = (trans_scr[...], done_scr[...] > 0, last_scr[...],
             tuple(acc_scr[d, :] for d in range(n_feats)))
    trans, done, last, acc = lax.fori_loop(0, common.CHUNK, blend, carry)
    trans_scr[...] = trans
    done_scr[...] = done.astype(jnp.float32)
    last_scr[...] = last
    for d in range(n_feats):
      acc_scr[d, :] = acc[d]

  acc_ref[0] = acc_scr[...]
  trans_ref[0, 0, :] = trans_scr[...]
  last_ref[0, 0, :] = last_scr[...]


@functools.partial(jax.jit, static_argnames=_STATIC)
def forward(params: jax.Array, feats: jax.Array, counts: jax.Array, *, tiles_per_row: int,
            tiles_per_image: int, interpret: Any = False):
  """Composites per-tile slabs front to back (gsplat classic); the contract is in `pallas_common`.

  `counts` is only validated: the kernel relies on padding opacity 0 (Mosaic GPU has no scalar
  prefetch). `interpret`: False on a Hopper+ GPU; True runs the per-chunk body in the generic Pallas
  interpreter; a Mosaic GPU interpreter params object runs the whole kernel in that interpreter.
  Raises NotImplementedError when not on a Hopper+ GPU and not interpreting, for Kcap not a multiple
  of 128 and for non-f32 slabs.
  """
  common.check_slabs(params, feats, counts, _BACKEND)
  _check_platform(interpret)
  del counts  # no scalar prefetch on Mosaic GPU: chunks are gated on their opacities (module doc)
  n_tiles, n_feats, kcap = feats.shape
  pixels = common.TILE_PIXELS
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  acc, t_final, last = _run(
      _forward_chunk, (_pixel_centres(n_tiles, tiles_per_row, tiles_per_image), params, feats),
      in_blocks=[_Block(2, per_chunk=False), _Block(common.PARAM_ROWS, per_chunk=True),
                 _Block(n_feats, per_chunk=True)],
      out_blocks=[_Block(n_feats, per_chunk=False), _Block(1, per_chunk=False),
                  _Block(1, per_chunk=False)],
      out_shapes=(f32(n_tiles, n_feats, pixels), f32(n_tiles, 1, pixels), f32(n_tiles, 1, pixels)),
      scratch=[plgpu.SMEM((n_feats, pixels), jnp.float32),     # acc
               plgpu.SMEM((pixels,), jnp.float32),              # T
               plgpu.SMEM((pixels,), jnp.float32),              # last
               plgpu.SMEM((pixels,), jnp.float32)],             # done, as 0/1
      n_tiles=n_tiles, n_chunks=kcap // common.CHUNK, interpret=interpret, name="gaussian_raster_fwd")
  return acc, t_final[:, 0], last[:, 0].astype(jnp.int32)


def _backward_chunk(chunk, params_ref, feats_ref, g_acc_ref, pixel_terms_ref, g_params_ref,
                    g_feats_ref, trans_scr, prefix_scr):
  n_feats = g_acc_ref.shape[1]

  @pl.when(chunk == 0)
  def _init():
    trans_scr[...] = jnp.ones_like(trans_scr)
    prefix_scr[...] = jnp.zeros_like(prefix_scr)

  # Slots past every pixel's last blended pair get no gradient; rows 6-7 never do.
  g_params_ref[...] = jnp.zeros_like(g_params_ref)
  for d in range(n_feats):
    g_feats_ref[0, d, :] = jnp.zeros((common.CHUNK,), jnp.float32)
  last = pixel_terms_ref[0, 4, :]

  @pl.when(_slot(chunk, 0) <= jnp.max(last))
  def _gradients():
    px, py, background_term, acc_dot_g = (pixel_terms_ref[0, r, :] for r in range(4))
    g_acc = tuple(g_acc_ref[0, d, :] for d in range(n_feats))

    def pair_gradients(i, carry):
      trans, blended_dot_g = carry
      mean_x, mean_y, conic_a, conic_b, conic_c, opacity = _gaussian(params_ref, i)
      pair = common.pair_alpha(mean_x, mean_y, conic_a, conic_b, conic_c, opacity, px, py)
      inc = pair.keep & (_slot(chunk, i) <= last)                      # saved inclusion (§3.2)
      alpha = jnp.where(inc, pair.alpha, 0.0)
      one_minus_alpha = 1.0 - alpha
      weight = alpha * trans                                           # zero unless blended
      color_dot_g = common.color_dot([feats_ref[0, d, i] for d in range(n_feats)], g_acc)
      blended_dot_g = blended_dot_g + weight * color_dot_g
      v_alpha = jnp.where(inc, common.pair_v_alpha(trans, color_dot_g, acc_dot_g - blended_dot_g,
                                                   background_term, one_minus_alpha), 0.0)
      grads = common.pair_grads(pair, v_alpha, conic_a, conic_b, conic_c, opacity)
      for row, g in enumerate(grads):
        g_params_ref[0, row, i] = jnp.sum(g)
      for d, g in enumerate(g_acc):
        g_feats_ref[0, d, i] = jnp.sum(g * weight)
      return trans * one_minus_alpha, blended_dot_g

    trans, blended_dot_g = lax.fori_loop(0, common.CHUNK, pair_gradients,
                                         (trans_scr[...], prefix_scr[...]))
    trans_scr[...] = trans
    prefix_scr[...] = blended_dot_g


@functools.partial(jax.jit, static_argnames=_STATIC)
def backward(params: jax.Array, feats: jax.Array, counts: jax.Array, acc: jax.Array,
             t_final: jax.Array, last: jax.Array, g_acc: jax.Array, g_t: jax.Array, *,
             tiles_per_row: int, tiles_per_image: int, interpret: Any = False):
  """Per-slot gradients of the compositor; the contract is in `pallas_common`."""
  common.check_slabs(params, feats, counts, _BACKEND)
  common.check_backward_inputs(feats, acc, t_final, last, g_acc, g_t, _BACKEND)
  _check_platform(interpret)
  n_tiles, n_feats, kcap = feats.shape
  # Per pixel: x, y, g_T·T_final, acc·g_acc and last, [n_tiles, 5, 256].
  pixel_terms = jnp.concatenate([
      _pixel_centres(n_tiles, tiles_per_row, tiles_per_image),
      jnp.stack([g_t * t_final, jnp.sum(acc * g_acc, axis=1), last.astype(jnp.float32)], axis=1)],
      axis=1)
  return _run(
      _backward_chunk, (params, feats, g_acc, pixel_terms),
      in_blocks=[_Block(common.PARAM_ROWS, per_chunk=True), _Block(n_feats, per_chunk=True),
                 _Block(n_feats, per_chunk=False), _Block(5, per_chunk=False)],
      out_blocks=[_Block(common.PARAM_ROWS, per_chunk=True), _Block(n_feats, per_chunk=True)],
      out_shapes=(jax.ShapeDtypeStruct(params.shape, jnp.float32),
                  jax.ShapeDtypeStruct(feats.shape, jnp.float32)),
      scratch=[plgpu.SMEM((common.TILE_PIXELS,), jnp.float32),     # T before the chunk
               plgpu.SMEM((common.TILE_PIXELS,), jnp.float32)],    # Σ w_j (c_j·g) so far
      n_tiles=n_tiles, n_chunks=kcap // common.CHUNK, interpret=interpret, name="gaussian_raster_bwd")
