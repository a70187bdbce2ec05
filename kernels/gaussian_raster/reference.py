"""Pure-JAX tile compositor: the CPU/XLA backend and the reference for the Pallas kernels.

Backend contract (rasterizer.md §4.5, shared with pallas_tpu.py / pallas_gpu.py):
  params f32[n_tiles, 8, Kcap]  rows (mean_x, mean_y, conic_a, conic_b, conic_c, opacity, 0, 0),
                                padding slots have opacity 0
  feats  f32[n_tiles, D, Kcap]
  counts i32[n_tiles]           valid slots per tile, first and in depth order
  tile t covers x0 = ((t % tiles_per_image) % tiles_per_row)·16, y0 = ((t % tiles_per_image) //
  tiles_per_row)·16; its pixel p = ly·16 + lx is sampled at (x0 + lx + 0.5, y0 + ly + 0.5).
  forward  -> acc f32[n_tiles, D, 256], t_final f32[n_tiles, 256], last i32[n_tiles, 256]
  backward -> g_params f32[n_tiles, 8, Kcap], g_feats f32[n_tiles, D, Kcap]

Design (CPU-tuned; it differs from the cumprod chunks of §4.3, which measured 1.7-6× slower
here): every tile of a group advances through its list in lockstep, one list position at a time, with
the literal front-to-back recurrence of §2.6 (T·(1−α), the exclusive stop, a `done` flag). Each loop
iteration processes CHUNK positions unrolled, so XLA fuses them into one pass over the [tiles, 256]
pixel state; a group stops once all its lists are exhausted or all its pixels have stopped. XLA's
CPU cumprod is an O(n²) reduce-window, which is what made the chunked form slow. The backward
recomputes in forward order from the saved T_final, acc and `last` (§3.2): inclusion is
`kept ∧ index ≤ last`, never re-derived from T; it carries T and the prefix Σ wⱼ(cⱼ·g).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

TILE_SIZE = 16
TILE_PIXELS = TILE_SIZE * TILE_SIZE
CHUNK = 8                # list positions per loop iteration (unrolled); divides every Kcap used
TILES_PER_GROUP = 8      # tiles in lockstep: larger amortises loop overhead, smaller exits earlier
ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4


def _check(params: jax.Array, feats: jax.Array, counts: jax.Array) -> None:
  n_tiles, rows, kcap = params.shape
  if rows != 8 or kcap % CHUNK or feats.shape[0] != n_tiles or feats.shape[2] != kcap:
    raise NotImplementedError(f"reference: params {params.shape} / feats {feats.shape} do not fit "
                              f"[n_tiles, 8, Kcap] / [n_tiles, D, Kcap] with Kcap % {CHUNK} == 0")
  if counts.shape != (n_tiles,):
    raise NotImplementedError(f"reference: counts {counts.shape}, expected ({n_tiles},)")


def _pixel_centres(tile_ids: jax.Array, tiles_per_row: int, tiles_per_image: int):
  """Pixel centres (px, py), each f32[B, 256], of the tiles `tile_ids` [B]."""
  local = tile_ids % tiles_per_image
  x0 = (local % tiles_per_row) * TILE_SIZE
  y0 = (local // tiles_per_row) * TILE_SIZE
  p = jnp.arange(TILE_PIXELS)
  px = (x0[:, None] + p[None, :] % TILE_SIZE).astype(jnp.float32) + 0.5
  py = (y0[:, None] + p[None, :] // TILE_SIZE).astype(jnp.float32) + 0.5
  return px, py


def _pair_alpha(p: jax.Array, px: jax.Array, py: jax.Array):
  """For one list position p [B, 8] against the pixels [B, 256]: dx, dy, e^-σ, α, keep."""
  dx = p[:, 0, None] - px
  dy = p[:, 1, None] - py
  sigma = 0.5 * (p[:, 2, None] * dx * dx + p[:, 4, None] * dy * dy) + p[:, 3, None] * dx * dy
  gauss = jnp.exp(-sigma)
  alpha = jnp.minimum(ALPHA_MAX, p[:, 5, None] * gauss)
  keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
  return dx, dy, gauss, alpha, keep


def _forward_group(params_t, feats_t, counts, tile_ids, tiles_per_row, tiles_per_image):
  """params_t [Kcap, B, 8], feats_t [Kcap, B, D] (list position leading), counts [B]."""
  kcap, n_tiles, n_feats = feats_t.shape
  px, py = _pixel_centres(tile_ids, tiles_per_row, tiles_per_image)
  n_steps = (jnp.max(counts, initial=0) + CHUNK - 1) // CHUNK

  def not_finished(carry):
    step, _, done, _, _ = carry
    return (step < n_steps) & ~jnp.all(done)

  def body(carry):
    step, trans, done, last, acc = carry
    p_chunk = jax.lax.dynamic_slice_in_dim(params_t, step * CHUNK, CHUNK)
    f_chunk = jax.lax.dynamic_slice_in_dim(feats_t, step * CHUNK, CHUNK)
    for j in range(CHUNK):
      _, _, _, alpha, keep = _pair_alpha(p_chunk[j], px, py)
      keep &= ~done
      t_next = trans * (1.0 - alpha)
      stop = keep & (t_next <= T_MIN)
      blend = keep & ~stop
      w = jnp.where(blend, alpha * trans, 0.0)
      acc = acc + w[:, None, :] * f_chunk[j][:, :, None]
      trans = jnp.where(blend, t_next, trans)
      done |= stop
      last = jnp.where(blend, step * CHUNK + j, last)
    return step + 1, trans, done, last, acc

  carry = (jnp.int32(0), jnp.ones((n_tiles, TILE_PIXELS), jnp.float32),
           jnp.zeros((n_tiles, TILE_PIXELS), bool), jnp.full((n_tiles, TILE_PIXELS), -1, jnp.int32),
           jnp.zeros((n_tiles, n_feats, TILE_PIXELS), jnp.float32))
  _, trans, _, last, acc = jax.lax.while_loop(not_finished, body, carry)
  return acc, trans, last


def _backward_group(params_t, feats_t, acc, t_final, last, g_acc, g_t, tile_ids, tiles_per_row,
                    tiles_per_image):
  kcap, n_tiles, n_feats = feats_t.shape
  px, py = _pixel_centres(tile_ids, tiles_per_row, tiles_per_image)
  n_steps = (jnp.max(last, initial=-1) + CHUNK) // CHUNK
  acc_dot_g = jnp.sum(acc * g_acc, axis=1)                 # [B, 256]
  background_term = g_t * t_final                          # [B, 256]

  def body(step, carry):
    trans, behind, g_params_t, g_feats_t = carry
    p_chunk = jax.lax.dynamic_slice_in_dim(params_t, step * CHUNK, CHUNK)
    f_chunk = jax.lax.dynamic_slice_in_dim(feats_t, step * CHUNK, CHUNK)
    g_p, g_f = [], []
    for j in range(CHUNK):
      p = p_chunk[j]
      dx, dy, gauss, alpha, keep = _pair_alpha(p, px, py)
      inc = keep & (step * CHUNK + j <= last)
      alpha = jnp.where(inc, alpha, 0.0)
      one_minus_alpha = 1.0 - alpha
      w = alpha * trans
      color_dot_g = jnp.sum(g_acc * f_chunk[j][:, :, None], axis=1)   # c_i · g
      behind = behind + w * color_dot_g                               # Σ_{j≤i} w_j (c_j · g)
      v_alpha = jnp.where(
          inc, trans * color_dot_g - (acc_dot_g - behind + background_term) / one_minus_alpha, 0.0)
      o_gauss = p[:, 5, None] * gauss
      unclamped = o_gauss <= ALPHA_MAX
      v_sigma = jnp.where(unclamped, -o_gauss * v_alpha, 0.0)
      # ∂σ/∂mean = (a·dx + b·dy, b·dx + c·dy): reduce v_σ·dx and v_σ·dy once, apply the conic after.
      sum_dx = jnp.sum(v_sigma * dx, axis=1)
      sum_dy = jnp.sum(v_sigma * dy, axis=1)
      zero = jnp.zeros((n_tiles,), jnp.float32)
      g_p.append(jnp.stack([
          p[:, 2] * sum_dx + p[:, 3] * sum_dy,
          p[:, 3] * sum_dx + p[:, 4] * sum_dy,
          0.5 * jnp.sum(v_sigma * dx * dx, axis=1),
          jnp.sum(v_sigma * dx * dy, axis=1),
          0.5 * jnp.sum(v_sigma * dy * dy, axis=1),
          jnp.sum(jnp.where(unclamped, gauss * v_alpha, 0.0), axis=1),
          zero, zero], axis=1))
      g_f.append(jnp.sum(g_acc * w[:, None, :], axis=2))
      trans = trans * one_minus_alpha
    g_params_t = jax.lax.dynamic_update_slice_in_dim(g_params_t, jnp.stack(g_p), step * CHUNK, 0)
    g_feats_t = jax.lax.dynamic_update_slice_in_dim(g_feats_t, jnp.stack(g_f), step * CHUNK, 0)
    return trans, behind, g_params_t, g_feats_t

  carry = (jnp.ones((n_tiles, TILE_PIXELS), jnp.float32), jnp.zeros((n_tiles, TILE_PIXELS), jnp.float32),
           jnp.zeros_like(params_t), jnp.zeros_like(feats_t))
  _, _, g_params_t, g_feats_t = jax.lax.fori_loop(0, n_steps, body, carry)
  return g_params_t, g_feats_t


def _grouped(x: jax.Array, n_groups: int, group: int, axis: int) -> jax.Array:
  """Pads the tile axis to n_groups·group and splits it: [..., n_groups·group, ...] → group-major."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, n_groups * group - x.shape[axis])
  x = jnp.pad(x, pad)
  x = x.reshape(x.shape[:axis] + (n_groups, group) + x.shape[axis + 1:])
  return jnp.moveaxis(x, axis, 0)


def _ungrouped(x: jax.Array, n_tiles: int, axis: int) -> jax.Array:
  x = jnp.moveaxis(x, 0, axis)
  return x.reshape(x.shape[:axis] + (-1,) + x.shape[axis + 2:]).take(jnp.arange(n_tiles), axis=axis)


def _group_layout(n_tiles: int) -> tuple[int, int]:
  group = max(1, min(TILES_PER_GROUP, n_tiles))
  return -(-n_tiles // group), group


def _map_tile_groups(group_fn, params, feats, per_tile, **static):
  """Runs `group_fn` over groups of tiles: slabs with list position leading (each step reads one
  contiguous [tiles, rows] slice), then the per-tile arrays and the tile ids."""
  n_tiles = params.shape[0]
  n_groups, group = _group_layout(n_tiles)
  tile_ids = jnp.arange(n_groups * group, dtype=jnp.int32)
  xs = (_grouped(params.transpose(2, 0, 1), n_groups, group, 1),
        _grouped(feats.transpose(2, 0, 1), n_groups, group, 1),
        *(_grouped(x, n_groups, group, 0) for x in (*per_tile, tile_ids)))
  fn = functools.partial(group_fn, **static)
  return jax.lax.map(lambda x: fn(*x), xs)


def forward(params: jax.Array, feats: jax.Array, counts: jax.Array, *, tiles_per_row: int,
            tiles_per_image: int, interpret: bool = False):
  """(acc [n_tiles, D, 256], t_final [n_tiles, 256], last [n_tiles, 256]); see the module doc."""
  del interpret  # XLA needs no interpreter
  _check(params, feats, counts)
  n_tiles = params.shape[0]
  acc, t_final, last = _map_tile_groups(_forward_group, params, feats, (counts,),
                                        tiles_per_row=tiles_per_row,
                                        tiles_per_image=tiles_per_image)
  return (_ungrouped(acc, n_tiles, 0), _ungrouped(t_final, n_tiles, 0),
          _ungrouped(last, n_tiles, 0))


def backward(params: jax.Array, feats: jax.Array, counts: jax.Array, acc: jax.Array,
             t_final: jax.Array, last: jax.Array, g_acc: jax.Array, g_t: jax.Array, *,
             tiles_per_row: int, tiles_per_image: int, interpret: bool = False):
  """(g_params [n_tiles, 8, Kcap], g_feats [n_tiles, D, Kcap]) for cotangents g_acc, g_t."""
  del interpret
  _check(params, feats, counts)
  n_tiles = params.shape[0]
  g_params_t, g_feats_t = _map_tile_groups(_backward_group, params, feats,
                                           (acc, t_final, last, g_acc, g_t),
                                           tiles_per_row=tiles_per_row,
                                           tiles_per_image=tiles_per_image)
  return (_ungrouped(g_params_t, n_tiles, 1).transpose(1, 2, 0),
          _ungrouped(g_feats_t, n_tiles, 1).transpose(1, 2, 0))
