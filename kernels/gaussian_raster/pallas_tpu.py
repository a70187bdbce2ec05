"""Pallas TPU (Mosaic) tile compositor: forward and backward kernels (rasterizer.md §4.5).

Not verified on hardware. On CPU, correctness is established in interpret mode (plain `interpret=True`
and `pltpu.InterpretParams`), and the tests lower both kernels to Mosaic through `jax.export` for "tpu";
Mosaic's own compiler passes run only on a TPU and may still reject what the lowering accepted.

Grid (n_tiles, Kcap/128), chunk axis innermost and "arbitrary": per-pixel state is carried across the
chunks of one tile in VMEM. The number of chunks with work per tile is scalar-prefetched; the
`index_map` clamps the chunk index to the tile's last such chunk, so the skipped steps repeat the block
index (no copy) and `pl.when` skips their compute. The forward also skips the rest of a tile once all its
pixels have stopped (a vector → scalar reduction of the `done` flags in the `pl.when` condition).

Each step works on a [256 pixels, 128 Gaussians] block. Gaussians stay on the lane axis as in the slabs,
so the kernels never transpose: Gaussian parameters are [1, 128] rows, pixel quantities [256, 1] columns
(the per-pixel inputs and outputs are shaped [n_tiles, 256, 1|D] for that, reshaped outside). The
running transmittance of a chunk is T0·exp(exclusive prefix of log(1−α)), the prefix being a matmul with
a strictly upper-triangular 0/1 matrix; every in-kernel matmul uses Precision.HIGHEST, otherwise the MXU
would round its f32 operands to bf16.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels import platform
from kernels.gaussian_raster import pallas_common as common

_BACKEND = "pallas_tpu"
_HIGHEST = lax.Precision.HIGHEST


def _check_platform(interpret) -> None:
  if not interpret and platform.current() != "tpu":
    raise NotImplementedError(f"{_BACKEND}: needs a TPU backend (have {platform.current()!r}) or "
                              "interpret mode")


def _matmul(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.dot(x, y, precision=_HIGHEST, preferred_element_type=jnp.float32)


def _triangle(inclusive: bool) -> jax.Array:
  """[128, 128] 0/1 matrix m[j, i] = (j < i), or (j ≤ i): x @ m is the (in|ex)clusive prefix sum of the
  rows of x."""
  j = lax.broadcasted_iota(jnp.int32, (common.CHUNK, common.CHUNK), 0)
  i = lax.broadcasted_iota(jnp.int32, (common.CHUNK, common.CHUNK), 1)
  return ((j <= i) if inclusive else (j < i)).astype(jnp.float32)


def _chunk_pairs(params_ref, tile, tiles_per_row: int, tiles_per_image: int):
  """The [256, 128] pairs of this grid step, and the Gaussians' conic and opacity rows."""
  p = params_ref[0]                                                     # [8, 128]
  mean_x, mean_y, conic_a, conic_b, conic_c, opacity = (p[r:r + 1, :] for r in range(6))
  pixel = lax.broadcasted_iota(jnp.int32, (common.TILE_PIXELS, 1), 0)
  px, py = common.pixel_centres(tile, pixel, tiles_per_row, tiles_per_image)
  pair = common.pair_alpha(mean_x, mean_y, conic_a, conic_b, conic_c, opacity, px, py)
  return pair, (conic_a, conic_b, conic_c, opacity)


def _slots(chunk) -> jax.Array:
  """Slab index of each Gaussian of chunk `chunk`, [1, 128]."""
  return chunk * common.CHUNK + lax.broadcasted_iota(jnp.int32, (1, common.CHUNK), 1)


def _chunk_index_map(t, k, chunks):
  return t, 0, jnp.minimum(k, jnp.maximum(chunks[t] - 1, 0))


def _tile_index_map(t, k, chunks):
  del k, chunks
  return t, 0, 0


def _step_index_map(t, k, chunks):
  del chunks
  return t, 0, k


def _forward_kernel(chunks_ref, params_ref, feats_ref, acc_ref, trans_ref, last_ref, done_ref, *,
                    tiles_per_row: int, tiles_per_image: int):
  # Program ids are read at the top level: the interpreter cannot evaluate them inside `pl.when`.
  t, k = pl.program_id(0), pl.program_id(1)

  @pl.when(k == 0)
  def _init():
    acc_ref[...] = jnp.zeros_like(acc_ref)
    trans_ref[...] = jnp.ones_like(trans_ref)
    last_ref[...] = jnp.full_like(last_ref, -1)
    done_ref[...] = jnp.zeros_like(done_ref)

  # Skip padding chunks (by the prefetched count) and tiles whose pixels have all stopped.
  @pl.when((k < chunks_ref[t]) & (jnp.min(done_ref[...]) == 0))
  def _composite():
    pair, _ = _chunk_pairs(params_ref, t, tiles_per_row, tiles_per_image)
    done = done_ref[...] > 0                                            # [256, 1]
    keep = pair.keep & ~done
    alpha = jnp.where(keep, pair.alpha, 0.0)
    one_minus_alpha = 1.0 - alpha
    t0 = trans_ref[0]                                                   # [256, 1]
    t_before = t0 * jnp.exp(_matmul(jnp.log(one_minus_alpha), _triangle(inclusive=False)))
    t_after = t_before * one_minus_alpha
    # Exclusive stop: the pair that would take T to ≤ 1e-4 is not blended, nor is anything after it.
    inc = keep & (t_after > common.T_MIN)
    w = jnp.where(inc, alpha * t_before, 0.0)
    acc_ref[0] += lax.dot_general(feats_ref[0], w, (((1,), (1,)), ((), ())), precision=_HIGHEST,
                                  preferred_element_type=jnp.float32)   # [D, 256]
    # Included pairs are a prefix of the kept ones and T only falls: the new T is their minimum.
    trans_ref[0] = jnp.min(jnp.where(inc, t_after, t0), axis=1, keepdims=True)
    stopped = jnp.max(jnp.where(keep & ~inc, 1.0, 0.0), axis=1, keepdims=True)
    done_ref[...] = jnp.maximum(done_ref[...], stopped)
    last_in_chunk = jnp.max(jnp.where(inc, _slots(k), -1), axis=1, keepdims=True)
    last_ref[0] = jnp.maximum(last_ref[0], last_in_chunk)


def _grid_spec(n_tiles: int, kcap: int, in_specs, out_specs, scratch_shapes):
  return pltpu.PrefetchScalarGridSpec(num_scalar_prefetch=1, grid=(n_tiles, kcap // common.CHUNK),
                                      in_specs=in_specs, out_specs=out_specs,
                                      scratch_shapes=scratch_shapes)


_COMPILER_PARAMS = pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))
_STATIC = ("tiles_per_row", "tiles_per_image", "interpret")


@functools.partial(jax.jit, static_argnames=_STATIC)
def forward(params: jax.Array, feats: jax.Array, counts: jax.Array, *, tiles_per_row: int,
            tiles_per_image: int, interpret: bool | pltpu.InterpretParams = False):
  """Composites per-tile slabs front to back (gsplat classic); the contract is in `pallas_common`.

  `interpret`: False on TPU; True or a `pltpu.InterpretParams` to interpret (CPU tests). Raises
  NotImplementedError when not on TPU and not interpreting, for Kcap not a multiple of 128 and for
  non-f32 slabs.
  """
  common.check_slabs(params, feats, counts, _BACKEND)
  _check_platform(interpret)
  n_tiles, n_feats, kcap = feats.shape
  chunks = jnp.clip((counts + common.CHUNK - 1) // common.CHUNK, 0, kcap // common.CHUNK)
  pixels = common.TILE_PIXELS
  acc, t_final, last = pl.pallas_call(
      functools.partial(_forward_kernel, tiles_per_row=tiles_per_row, tiles_per_image=tiles_per_image),
      out_shape=(jax.ShapeDtypeStruct((n_tiles, n_feats, pixels), jnp.float32),
                 jax.ShapeDtypeStruct((n_tiles, pixels, 1), jnp.float32),
                 jax.ShapeDtypeStruct((n_tiles, pixels, 1), jnp.int32)),
      grid_spec=_grid_spec(
          n_tiles, kcap,
          in_specs=[pl.BlockSpec((1, common.PARAM_ROWS, common.CHUNK), _chunk_index_map),
                    pl.BlockSpec((1, n_feats, common.CHUNK), _chunk_index_map)],
          out_specs=[pl.BlockSpec((1, n_feats, pixels), _tile_index_map),
                     pl.BlockSpec((1, pixels, 1), _tile_index_map),
                     pl.BlockSpec((1, pixels, 1), _tile_index_map)],
          scratch_shapes=[pltpu.VMEM((pixels, 1), jnp.float32)]),          # done, as 0/1
      compiler_params=_COMPILER_PARAMS, interpret=interpret, name="gaussian_raster_fwd",
  )(chunks, params, feats)
  return acc, t_final[..., 0], last[..., 0]


def _backward_kernel(chunks_ref, params_ref, feats_ref, g_acc_ref, g_acc_t_ref, pixel_terms_ref,
                     last_ref, g_params_ref, g_feats_ref, trans_ref, prefix_ref, *,
                     tiles_per_row: int, tiles_per_image: int):
  # Program ids are read at the top level: the interpreter cannot evaluate them inside `pl.when`.
  t, k = pl.program_id(0), pl.program_id(1)

  @pl.when(k == 0)
  def _init():
    trans_ref[...] = jnp.ones_like(trans_ref)
    prefix_ref[...] = jnp.zeros_like(prefix_ref)

  active = k < chunks_ref[t]

  @pl.when(~active)
  def _past_last_blended():
    g_params_ref[...] = jnp.zeros_like(g_params_ref)
    g_feats_ref[...] = jnp.zeros_like(g_feats_ref)

  @pl.when(active)
  def _gradients():
    pair, (conic_a, conic_b, conic_c, opacity) = _chunk_pairs(params_ref, t, tiles_per_row,
                                                              tiles_per_image)
    inc = pair.keep & (_slots(k) <= last_ref[0])                         # saved inclusion (§3.2)
    alpha = jnp.where(inc, pair.alpha, 0.0)
    one_minus_alpha = 1.0 - alpha
    t0 = trans_ref[...]
    t_before = t0 * jnp.exp(_matmul(jnp.log(one_minus_alpha), _triangle(inclusive=False)))
    w = alpha * t_before                                                # zero unless blended
    f, g_acc_t = feats_ref[0], g_acc_t_ref[0]                           # [D, 128], [256, D]
    color_dot_g = common.color_dot([f[d:d + 1, :] for d in range(f.shape[0])],
                                   [g_acc_t[:, d:d + 1] for d in range(f.shape[0])])  # [256, 128]
    blended_dot_g = prefix_ref[...] + _matmul(w * color_dot_g, _triangle(inclusive=True))
    terms = pixel_terms_ref[0]                                          # [256, 2]
    background_term, acc_dot_g = terms[:, 0:1], terms[:, 1:2]
    v_alpha = jnp.where(inc, common.pair_v_alpha(t_before, color_dot_g, acc_dot_g - blended_dot_g,
                                                 background_term, one_minus_alpha), 0.0)
    grads = common.pair_grads(pair, v_alpha, conic_a, conic_b, conic_c, opacity)
    for row, g in enumerate(grads):
      g_params_ref[0, row:row + 1, :] = jnp.sum(g, axis=0, keepdims=True)
    g_params_ref[0, common.GRAD_ROWS:, :] = jnp.zeros(
        (common.PARAM_ROWS - common.GRAD_ROWS, common.CHUNK), jnp.float32)
    g_feats_ref[0] = _matmul(g_acc_ref[0], w)                           # [D, 128]
    trans_ref[...] = jnp.min(jnp.where(inc, t_before * one_minus_alpha, t0), axis=1, keepdims=True)
    prefix_ref[...] = blended_dot_g[:, common.CHUNK - 1:]


@functools.partial(jax.jit, static_argnames=_STATIC)
def backward(params: jax.Array, feats: jax.Array, counts: jax.Array, acc: jax.Array,
             t_final: jax.Array, last: jax.Array, g_acc: jax.Array, g_t: jax.Array, *,
             tiles_per_row: int, tiles_per_image: int,
             interpret: bool | pltpu.InterpretParams = False):
  """Per-slot gradients of the compositor; the contract is in `pallas_common`."""
  common.check_slabs(params, feats, counts, _BACKEND)
  common.check_backward_inputs(feats, acc, t_final, last, g_acc, g_t, _BACKEND)
  _check_platform(interpret)
  del counts  # `last` bounds the work: nothing after a pixel's last blended pair gets gradient
  n_tiles, n_feats, kcap = feats.shape
  pixels = common.TILE_PIXELS
  chunks = jnp.clip((jnp.max(last, axis=1) + common.CHUNK) // common.CHUNK, 0, kcap // common.CHUNK)
  # Per-pixel inputs as [256, x] columns (see the module doc): g_T·T_final and acc·g_acc.
  pixel_terms = jnp.stack([g_t * t_final, jnp.sum(acc * g_acc, axis=1)], axis=-1)
  tile_block = lambda width: pl.BlockSpec((1, pixels, width), _tile_index_map)
  g_params, g_feats = pl.pallas_call(
      functools.partial(_backward_kernel, tiles_per_row=tiles_per_row,
                        tiles_per_image=tiles_per_image),
      out_shape=(jax.ShapeDtypeStruct(params.shape, jnp.float32),
                 jax.ShapeDtypeStruct(feats.shape, jnp.float32)),
      grid_spec=_grid_spec(
          n_tiles, kcap,
          in_specs=[pl.BlockSpec((1, common.PARAM_ROWS, common.CHUNK), _chunk_index_map),
                    pl.BlockSpec((1, n_feats, common.CHUNK), _chunk_index_map),
                    pl.BlockSpec((1, n_feats, pixels), _tile_index_map),
                    tile_block(n_feats), tile_block(2), tile_block(1)],
          out_specs=[pl.BlockSpec((1, common.PARAM_ROWS, common.CHUNK), _step_index_map),
                     pl.BlockSpec((1, n_feats, common.CHUNK), _step_index_map)],
          scratch_shapes=[pltpu.VMEM((pixels, 1), jnp.float32),            # T before the chunk
                          pltpu.VMEM((pixels, 1), jnp.float32)]),          # Σ w_j (c_j·g) so far
      compiler_params=_COMPILER_PARAMS, interpret=interpret, name="gaussian_raster_bwd",
  )(chunks, params, feats, g_acc, jnp.swapaxes(g_acc, 1, 2), pixel_terms, last[..., None])
  return g_params, g_feats
