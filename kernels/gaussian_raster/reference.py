"""Pure-JAX tile compositor: the CPU/XLA backend and the reference for the Pallas kernels.

Backend contract (rasterizer.md §4.5, shared with pallas_tpu.py / pallas_gpu.py):
  params f32[n_tiles, 8, Kcap]  rows (mean_x, mean_y, conic_a, conic_b, conic_c, opacity, 0, 0),
                                padding slots have opacity 0
  feats  f32[n_tiles, D, Kcap]
  counts i32[n_tiles]           valid slots per tile, first and in depth order
  tile t covers x0 = ((t % tiles_per_image) % tiles_per_row)·16, y0 = ((t % tiles_per_image) //
  tiles_per_row)·16; its pixel p = ly·16 + lx is sampled at (x0 + lx + 0.5, y0 + ly + 0.5).
  forward  -> acc f32[n_tiles, D, 256], t_final f32[n_tiles, 256], last i32[n_tiles, 256]
  backward -> g_params f32[n_tiles, 8, Kcap], g_feats f32[n_tiles, D, Kcap] (the slab contract
              carries no entries: `backward` re-runs the recording forward to get them)

Design (CPU-tuned; it differs from the cumprod chunks of §4.3, which measured 1.7-6× slower here):
- Sub-tile culling. Each 16×16 tile is composited as four 8×8 sub-tiles, each with the sub-list of
  the tile's slots whose α ≥ 1/255 region (the ellipse σ ≤ ln(255·o), widened for float32
  rounding) reaches it: its bounding box must overlap the sub-tile and the ellipse itself must meet
  it. A dropped pair has α < 1/255 at every pixel of the sub-tile, so it would be skipped there
  anyway: images, `last` and gradients are those of the full lists, at about 40 % of the pairs
  (random 100k-Gaussian scene: 75M → 29M; the box test alone keeps 39M).
- Sub-lists are built lazily, a block of tile-list positions at a time, and only for sub-tiles that
  still have a pixel going: saturated sub-tiles never pay for the rest of their lists (FlashWorld-like
  scenes stop after ~13 % of them on average). Blocks follow each group's longest list, not the
  capacity: long blocks while they fit, then short tail blocks, so that none is mostly padding.
- Forward, tiles run in groups sorted by list length: a group runs as long as its longest sub-list,
  so like tiles together waste less.
- Every sub-tile of a group advances through its sub-list in lockstep, one list position at a time,
  with the literal front-to-back recurrence of §2.6 (T·(1−α), the exclusive stop, a `done` flag).
  Each loop iteration gathers CHUNK positions and unrolls them; α of the chunk is computed in one
  pass behind an optimization barrier, because XLA:CPU has no multi-output fusion and would
  otherwise re-evaluate the exponentials in every consumer of the recurrence. XLA's CPU cumprod is
  an O(n²) reduce-window, which is what made the chunked form slow.
- The forward under differentiation also records each sub-tile's entries: the list positions that
  at least one of its pixels blended (a bit per chunk position out of the `last` update, OR-reduced
  over the pixels, appended per chunk). The backward visits only those, about 85 % of the culled
  sub-lists up to the last blended slot, and needs no culling or blocks of its own; its lanes are
  sub-tiles from any tiles, grouped by entry count (random 100k-Gaussian scene at 128 lanes: 376 →
  260 loop iterations, backward −33 %, for +10 % on the recording forward; 138 at BACKWARD_LANES).
- The backward recomputes in forward order from the saved T_final, acc and `last` (§3.2): inclusion
  is `kept ∧ slot ≤ last`, never re-derived from T; it carries T and the prefix Σ wⱼ(cⱼ·g) and
  scatter-adds each entry's gradient into its Gaussian's row. Its order-free per-pair terms (e^-σ,
  c·g) are one pass over the whole chunk, also behind a barrier.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

TILE_SIZE = 16
TILE_PIXELS = TILE_SIZE * TILE_SIZE
SUBTILE = 8              # sub-tile side in pixels; divides TILE_SIZE
SUBTILES = (TILE_SIZE // SUBTILE) ** 2
SUBTILE_PIXELS = SUBTILE * SUBTILE
CHUNK = 8                # list positions per loop iteration (unrolled); divides the block size
SUBTILES_PER_GROUP = 128  # sub-tiles in lockstep: larger amortises loop overhead, smaller exits earlier
# The backward's lanes come sorted by their known work, so more of them waste little (vs 128: 100k
# scene −3…7 %, FlashWorld-like −13 %; 512 no better).
BACKWARD_LANES = 256
# Tile-list positions whose sub-lists are built together, once reached: lockstep sub-tiles all take the
# longest sub-list of a block, so long blocks waste less (1024 vs 256: 16 % fewer pair evaluations at
# 100k), while lists that saturate early want short ones.
MAX_BLOCK = 1024
# Positions per block past a group's last full MAX_BLOCK block: its longest list often ends soon after,
# and the rest of a whole MAX_BLOCK would be padding, built for nothing.
TAIL_BLOCK = 256
ALPHA_THRESHOLD = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
PARAM_ROWS = 8           # mean_x, mean_y, conic_a, conic_b, conic_c, opacity, 0, 0
GRAD_ROWS = 6            # mean_x, mean_y, conic a, b, c, opacity: rows 6 and 7 carry no gradient


def _check(params: jax.Array, feats: jax.Array, counts: jax.Array) -> None:
  n_tiles, rows, kcap = params.shape
  if rows != PARAM_ROWS or feats.shape[0] != n_tiles or feats.shape[2] != kcap:
    raise NotImplementedError(f"reference: params {params.shape} / feats {feats.shape} do not fit "
                              f"[n_tiles, 8, Kcap] / [n_tiles, D, Kcap]")
  if counts.shape != (n_tiles,):
    raise NotImplementedError(f"reference: counts {counts.shape}, expected ({n_tiles},)")


def _tile_origin(tile_ids: jax.Array, tiles_per_row: int, tiles_per_image: int):
  local = tile_ids % tiles_per_image
  return (local % tiles_per_row) * TILE_SIZE, (local // tiles_per_row) * TILE_SIZE


def _blend_level(a: jax.Array, b: jax.Array, c: jax.Array, opacity: jax.Array):
  """(s, widen): α = o·e^-σ ≥ 1/255 needs σ ≤ s = ln(255·o); float32 rounding of σ grows with the
  conic's condition number κ, which the reach tests cover by widening lengths by 1 + 1e-3 + 1e-6·κ."""
  det = a * c - b * b
  half_trace = 0.5 * (a + c)
  spread = jnp.sqrt(jnp.maximum(half_trace * half_trace - det, 0.0))
  kappa = (half_trace + spread) / jnp.maximum(half_trace - spread, 1e-30)
  return jnp.log(jnp.maximum(opacity, 1e-30) * 255.0), 1.0 + 1e-3 + 1e-6 * kappa


def _reach(a: jax.Array, b: jax.Array, c: jax.Array, opacity: jax.Array):
  """Half-extents (hx, hy), in pixels, of the region where a Gaussian with conic (a, b, c) and this
  opacity can reach α ≥ 1/255; any shape.

  Outside the ellipse σ = ½dᵀQd ≤ s, s = ln(255·o), α = o·e^-σ < 1/255; its bounding box has
  half-widths √(2s·c/det) and √(2s·a/det). float32 rounding of σ grows with the conic's condition
  number κ, hence the relative widening; the +1 px covers rounding at the pixel-centre comparison.
  Degenerate or non-finite conics reach everywhere; Gaussians that never reach 1/255 get −1.
  """
  det = a * c - b * b
  s, widen = _blend_level(a, b, c, opacity)
  hx = jnp.sqrt(jnp.maximum(2.0 * s * c / det, 0.0)) * widen + 1.0
  hy = jnp.sqrt(jnp.maximum(2.0 * s * a / det, 0.0)) * widen + 1.0
  bounded = (det > 0) & jnp.isfinite(hx) & jnp.isfinite(hy)
  never = s < 0
  hx = jnp.where(never, -1.0, jnp.where(bounded, hx, jnp.inf))
  hy = jnp.where(never, -1.0, jnp.where(bounded, hy, jnp.inf))
  return hx, hy


def _subtile_reach(local_x: jax.Array, local_y: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array,
                   opacity: jax.Array) -> jax.Array:
  """Whether a Gaussian at (local_x, local_y) from its tile's origin can reach α ≥ 1/255 in each 8×8
  sub-tile: [..., SUBTILES] bool, sub-tile sy·2 + sx; any shape.

  Two conservative tests. The `_reach` box must overlap the sub-tile's pixel centres. And, for bounded
  ellipses, σ ≤ s·widen² must hold somewhere on the rectangle that hulls those centres (grown by
  more than the float32 rounding of dx, dy): the minimum of the convex σ there is 0 with the centre
  inside, else it lies on an edge, where σ is a parabola in one variable. The second test drops a
  quarter of the pairs the box keeps (random 100k-Gaussian scene: 616k → 452k sub-list entries).
  """
  hx, hy = _reach(a, b, c, opacity)
  first = jnp.arange(0, TILE_SIZE, SUBTILE, dtype=jnp.float32) + 0.5      # first pixel centre per side
  last = first + (SUBTILE - 1)

  def overlaps(centre, half):   # [..., sides]
    return ((centre + half)[..., None] >= first) & ((centre - half)[..., None] <= last)

  box = overlaps(local_y, hy)[..., :, None] & overlaps(local_x, hx)[..., None, :]   # [..., sy, sx]
  s, widen = (x[..., None, None] for x in _blend_level(a, b, c, opacity))
  a, b, c = a[..., None, None], b[..., None, None], c[..., None, None]
  mx, my = local_x[..., None, None], local_y[..., None, None]
  # dx, dy round by a few 2^-24 × |coordinate| here and in the kernel: 1/64 px covers images up to
  # 2^16 px, the relative term means far outside.
  grow = 1.0 / 64.0 + 1e-6 * jnp.maximum(jnp.abs(mx), jnp.abs(my))
  lo_x, hi_x = first - grow, last + grow                  # [..., 1, sx]
  lo_y, hi_y = jnp.swapaxes(lo_x, -1, -2), jnp.swapaxes(hi_x, -1, -2)   # [..., sy, 1]

  def edge_min(fixed, free_lo, free_hi, fixed_coeff, free_coeff):
    """min over e ∈ [free_lo, free_hi] of ½·fixed_coeff·fixed² + b·fixed·e + ½·free_coeff·e²."""
    e = jnp.clip(-b * fixed / free_coeff, free_lo, free_hi)
    return 0.5 * (fixed_coeff * fixed * fixed + free_coeff * e * e) + b * fixed * e

  edges = ([edge_min(mx - x, my - hi_y, my - lo_y, a, c) for x in (lo_x, hi_x)]
           + [edge_min(my - y, mx - hi_x, mx - lo_x, c, a) for y in (lo_y, hi_y)])
  inside = (mx >= lo_x) & (mx <= hi_x) & (my >= lo_y) & (my <= hi_y)
  # The 1e-5 covers float32 rounding of exp and log for opacities just above 1/255.
  meets = inside | (functools.reduce(jnp.minimum, edges) <= s * widen * widen + 1e-5)
  bounded = jnp.isfinite(hx)[..., None, None]
  return (box & (meets | ~bounded)).reshape(*local_x.shape, SUBTILES)


def _block_sublists(block_rows: jax.Array, needed: jax.Array, x0: jax.Array, y0: jax.Array,
                    start: jax.Array):
  """Sub-lists of one block of L tile-list positions, start… , of a group of B tiles.

  block_rows [B, L + 1, 8+D] the block's rows (the last one zero), needed [B, SUBTILES]: the last
  tile-list position each sub-tile still needs (−1: none; stopped sub-tiles skip the rest of their
  lists), tile origins x0, y0 [B]. Returns the increasing block positions that can reach each
  sub-tile, [B, SUBTILES, L] int32 padded with L (the zero row), and their number.
  """
  n_tiles, size = block_rows.shape[0], block_rows.shape[1] - 1
  p = block_rows[:, :size]
  local_x = p[..., 0] - x0[:, None].astype(jnp.float32)
  local_y = p[..., 1] - y0[:, None].astype(jnp.float32)
  local = jnp.arange(size, dtype=jnp.int32)
  reach = _subtile_reach(local_x, local_y, p[..., 2], p[..., 3], p[..., 4], p[..., 5])
  reach = reach.transpose(0, 2, 1) & (start + local <= needed[..., None])
  rank = _running_count(reach) - 1
  rows = n_tiles * SUBTILES
  target = jnp.where(reach, rank + jnp.arange(rows, dtype=jnp.int32).reshape(n_tiles, SUBTILES, 1) * size,
                     rows * size)
  slots = jnp.full((rows * size,), size, jnp.int32).at[target.reshape(-1)].set(
      jnp.broadcast_to(local, reach.shape).reshape(-1), mode="drop")
  return slots.reshape(n_tiles, SUBTILES, size), rank[..., -1] + 1


def _running_count(flags: jax.Array, piece: int = 32) -> jax.Array:
  """Inclusive running count of True along the last axis, int32.

  Within pieces of 32 as a product with a triangular matrix, then the pieces' offsets: exact (counts
  ≤ 32 per product) and faster on XLA:CPU than `cumsum`, a reduce-window there (a [128, 1024]
  sub-list build: 2.0 → 1.4 ms).
  """
  *lead, size = flags.shape
  padded = _round_up(size, piece)
  x = jnp.pad(flags, [(0, 0)] * len(lead) + [(0, padded - size)]).astype(jnp.float32)
  x = x.reshape(*lead, padded // piece, piece)
  within = jnp.matmul(x, jnp.triu(jnp.ones((piece, piece), jnp.float32)),
                      precision=jax.lax.Precision.HIGHEST).astype(jnp.int32)
  totals = within[..., -1]
  offsets = jnp.cumsum(totals, axis=-1) - totals
  return (within + offsets[..., None]).reshape(*lead, padded)[..., :size]


class _Blocks(NamedTuple):
  """Blocks of tile-list positions: `count` blocks of `size` (static) from position `first`."""
  first: jax.Array | int
  size: int
  count: jax.Array


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _block_sizes(kcap: int) -> tuple[int, int]:
  """Static (full, tail) block sizes for lists of capacity kcap: multiples of CHUNK, full ones a
  multiple of tail ones (so that `_padded_capacity` holds every block)."""
  if kcap <= MAX_BLOCK:   # one block holds a whole list
    full = _round_up(kcap, CHUNK)
    return full, full
  if MAX_BLOCK % TAIL_BLOCK or TAIL_BLOCK % CHUNK:
    raise ValueError(f"reference: MAX_BLOCK={MAX_BLOCK}, TAIL_BLOCK={TAIL_BLOCK}, CHUNK={CHUNK}: "
                     "expected MAX_BLOCK a multiple of TAIL_BLOCK, a multiple of CHUNK")
  return MAX_BLOCK, TAIL_BLOCK


def _block_plan(kcap: int, extent: jax.Array) -> tuple[_Blocks, _Blocks]:
  """Blocks covering list positions [0, extent) of lists of capacity kcap: a full block, more while
  they fit, then tail blocks (fewer, longer blocks suit the loops; tail blocks save building
  sub-lists over padding)."""
  full, tail = _block_sizes(kcap)
  n_full = jnp.where(extent > 0, jnp.maximum(extent // full, 1), 0)
  first_tail = n_full * full
  n_tail = (jnp.maximum(extent - first_tail, 0) + tail - 1) // tail
  return _Blocks(0, full, n_full), _Blocks(first_tail, tail, n_tail)


def _padded_capacity(kcap: int) -> int:
  """List length that every block of `_block_plan` fits in."""
  return _round_up(kcap, _block_sizes(kcap)[1])


def _block_rows(rows: jax.Array, ids: jax.Array, start: jax.Array, size: int) -> jax.Array:
  """The rows [B, size + 1, R] of the tile-list block at `start`, the last one from the zero row that
  ends `rows`."""
  block_ids = jax.lax.dynamic_slice_in_dim(ids, start, size, axis=1)
  return rows[jnp.pad(block_ids, ((0, 0), (0, 1)), constant_values=rows.shape[0] - 1)]


def _subtile_pixels(x0: jax.Array, y0: jax.Array, quadrant: jax.Array):
  """Pixel centres (px, py), each f32[M, SUBTILE_PIXELS], of sub-tile `quadrant` (sy·2 + sx) of the
  tile at origin (x0, y0), per lane [M]."""
  per_side = TILE_SIZE // SUBTILE
  q = jnp.arange(SUBTILE_PIXELS)
  px = x0[:, None] + (quadrant % per_side * SUBTILE)[:, None] + (q % SUBTILE)[None, :]
  py = y0[:, None] + (quadrant // per_side * SUBTILE)[:, None] + (q // SUBTILE)[None, :]
  return px.astype(jnp.float32) + 0.5, py.astype(jnp.float32) + 0.5


def _to_tiles(x: jax.Array) -> jax.Array:
  """[B·SUBTILES, ..., SUBTILE_PIXELS] sub-tile pixels → [B, ..., 256] tile pixels (ly·16 + lx)."""
  per_side = TILE_SIZE // SUBTILE
  mid = x.shape[1:-1]
  x = x.reshape((-1, per_side, per_side) + mid + (SUBTILE, SUBTILE))   # B, sy, sx, ..., qy, qx
  n = x.ndim
  x = x.transpose((0,) + tuple(range(3, n - 2)) + (1, n - 2, 2, n - 1))  # B, ..., sy, qy, sx, qx
  return x.reshape((-1,) + mid + (TILE_PIXELS,))


def _to_subtiles(x: jax.Array) -> jax.Array:
  """Inverse of `_to_tiles`: [B, ..., 256] → [B·SUBTILES, ..., SUBTILE_PIXELS]."""
  per_side = TILE_SIZE // SUBTILE
  mid = x.shape[1:-1]
  x = x.reshape((-1,) + mid + (per_side, SUBTILE, per_side, SUBTILE))   # B, ..., sy, qy, sx, qx
  n = x.ndim
  x = x.transpose((0, n - 4, n - 2) + tuple(range(1, n - 4)) + (n - 3, n - 1))
  return x.reshape((-1,) + mid + (SUBTILE_PIXELS,))


def _pair_alpha(p: jax.Array, px: jax.Array, py: jax.Array):
  """Gaussians p [..., M, rows] against their pixels [M, P]: dx, dy, e^-σ, α, keep [..., M, P]."""
  dx = p[..., 0, None] - px
  dy = p[..., 1, None] - py
  sigma = 0.5 * (p[..., 2, None] * dx * dx + p[..., 4, None] * dy * dy) + p[..., 3, None] * dx * dy
  gauss = jnp.exp(-sigma)
  alpha = jnp.minimum(ALPHA_MAX, p[..., 5, None] * gauss)
  keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)
  return dx, dy, gauss, alpha, keep


def _gather_chunk(block_rows: jax.Array, slots: jax.Array, step: jax.Array):
  """Block positions [CHUNK, M] at sub-list positions step·CHUNK… and their rows [CHUNK, M, R]."""
  idx = jax.lax.dynamic_slice_in_dim(slots, step * CHUNK, CHUNK, axis=2).transpose(2, 0, 1)
  chunk = block_rows[jnp.arange(block_rows.shape[0])[None, :, None], idx]
  return idx.reshape(CHUNK, -1), chunk.reshape(CHUNK, -1, block_rows.shape[2])


def _append_entries(entries: jax.Array, n_entries: jax.Array, hits: jax.Array, positions: jax.Array):
  """Appends to each lane's entries [M, K] (n_entries [M] used) the chunk's tile-list positions
  [CHUNK, M] whose bit j is set in hits [M]."""
  bit = jnp.arange(CHUNK, dtype=jnp.int32)[:, None]
  below = jax.lax.population_count(hits & ((1 << bit) - 1))      # flagged positions before j
  cols = jnp.where((hits >> bit) & 1 > 0, n_entries + below, entries.shape[1])   # else dropped
  entries = entries.at[jnp.arange(entries.shape[0])[None, :], cols].set(positions, mode="drop")
  return entries, n_entries + jax.lax.population_count(hits)


def _forward_group(rows, ids, counts, tile_ids, *, tiles_per_row, tiles_per_image, record):
  """rows [G+1, 8+D] (the last one zero), ids [B, Kpad] into rows, counts [B], tile ids [B]. With
  `record`, also each sub-tile's blended positions (see `forward_lists_with_entries`)."""
  n_tiles, kpad = ids.shape
  n_feats = rows.shape[1] - PARAM_ROWS
  x0, y0 = _tile_origin(tile_ids, tiles_per_row, tiles_per_image)
  px, py = _subtile_pixels(jnp.repeat(x0, SUBTILES), jnp.repeat(y0, SUBTILES),
                           jnp.tile(jnp.arange(SUBTILES), n_tiles))
  n_sub = px.shape[0]

  # `trans` carries the transmittance with its sign as the `done` flag (negative once the pixel has
  # stopped): one state array fewer for XLA to recompute the unrolled chain for. A going pixel has
  # T > T_MIN and a stopped one T < 0, so `T·(1−α) > T_MIN` alone says "blend, or skip with α = 0"
  # and its negation "stop here, or stopped before": the §2.6 tests at a third of the operations,
  # which matters because XLA recomputes this chain in each of the three state updates.
  # Recording, `code` is last·2^CHUNK plus a bit per chunk position the pixel blended: both come out
  # of one pass over the chain (XLA:CPU has no multi-output fusion). Otherwise it is `last`.
  shift = CHUNK if record else 0
  def step(block_rows, slots, start, carry):
    position, trans, code, acc, *blended = carry
    idx, chunk = _gather_chunk(block_rows, slots, position)
    positions = start + idx                                                  # [CHUNK, M]
    # α of the whole chunk in one pass (0 where skipped); the barrier keeps XLA from re-evaluating
    # the exponentials inside every consumer of the recurrence below.
    alphas = []
    for j in range(CHUNK):
      _, _, _, alpha, keep = _pair_alpha(chunk[j], px, py)
      alphas.append(jnp.where(keep, alpha, 0.0))
    alphas = jax.lax.optimization_barrier(jnp.stack(alphas))               # [CHUNK, M, P]
    last, bits = code >> shift, 0
    for j in range(CHUNK):
      alpha = alphas[j]
      t_next = trans * (1.0 - alpha)
      goes = t_next > T_MIN
      acc = acc + jnp.where(goes, alpha * trans, 0.0)[:, None, :] * chunk[j, :, PARAM_ROWS:, None]
      blends = goes & (alpha > 0)
      last = jnp.where(blends, positions[j, :, None], last)
      if record:
        bits = bits | jnp.where(blends, 1 << j, 0)
      trans = jnp.where(goes, t_next, -jnp.abs(trans))
    code = last * (1 << shift) + bits
    if record:   # the barrier keeps the pixel reduction from re-running the chain
      code = jax.lax.optimization_barrier(code)
      hits = jnp.bitwise_or.reduce(code & ((1 << CHUNK) - 1), axis=1)
      blended = _append_entries(*blended, hits, positions)
    return position + 1, trans, code, acc, *blended

  def needed(trans):   # a sub-tile needs the rest of its list while any of its pixels goes on
    going = jnp.any(trans > 0, axis=1).reshape(-1, SUBTILES)
    return jnp.where(going, counts[:, None] - 1, -1)

  def run_blocks(blocks, state):
    def block_step(carry):
      block, state = carry
      start = blocks.first + block * blocks.size
      block_rows = _block_rows(rows, ids, start, blocks.size)
      slots, sizes = _block_sublists(block_rows, needed(state[0]), x0, y0, start)
      n_steps = (jnp.max(sizes, initial=0) + CHUNK - 1) // CHUNK
      state = jax.lax.while_loop(lambda c: (c[0] < n_steps) & jnp.any(c[1] > 0),
                                 functools.partial(step, block_rows, slots, start),
                                 (jnp.int32(0), *state))
      return block + 1, state[1:]

    def not_finished(carry):
      block, state = carry
      return (block < blocks.count) & jnp.any(needed(state[0]) >= blocks.first + block * blocks.size)

    return jax.lax.while_loop(not_finished, block_step, (jnp.int32(0), state))[1]

  pixels = (n_sub, SUBTILE_PIXELS)
  state = (jnp.ones(pixels, jnp.float32), jnp.full(pixels, -1 << shift, jnp.int32),
           jnp.zeros((n_sub, n_feats, SUBTILE_PIXELS), jnp.float32))
  if record:
    state += (jnp.full((n_sub, kpad), kpad, jnp.int32), jnp.zeros((n_sub,), jnp.int32))
  for blocks in _block_plan(kpad, jnp.max(counts, initial=0)):
    state = run_blocks(blocks, state)
  trans, code, acc, *blended = state
  out = (_to_tiles(acc), _to_tiles(jnp.abs(trans)), _to_tiles(code >> shift))
  if record:
    entries, n_entries = blended
    out += (entries.reshape(n_tiles, SUBTILES, kpad), n_entries.reshape(n_tiles, SUBTILES))
  return out


def _backward_group(rows, ids, g_rows, group, *, tiles_per_row, tiles_per_image):
  """Adds the gradients of one group of M sub-tiles to g_rows [G+1, 6+D]. ids [n_tiles, K+1] into
  rows (column K: the zero row); group = (tile indices, quadrants, entries [M, K] padded with K,
  their number, acc [M, D, P], t_final, last, g_acc [M, D, P], g_t), one lane per sub-tile."""
  tiles, quadrant, entries, n_entries, acc, t_final, last, g_acc, g_t = group
  n_feats = acc.shape[1]
  x0, y0 = _tile_origin(tiles, tiles_per_row, tiles_per_image)
  px, py = _subtile_pixels(x0, y0, quadrant)
  acc_dot_g = jnp.sum(acc * g_acc, axis=1)                 # [M, P]
  background_term = g_t * t_final                          # [M, P]

  def step(i, carry):
    trans, behind, g_rows = carry
    positions = jax.lax.dynamic_slice_in_dim(entries, i * CHUNK, CHUNK, axis=1).T   # [CHUNK, M]
    gids = ids[tiles[None, :], positions]
    chunk = rows[gids]                                                             # [CHUNK, M, R]
    # Order-free per-pair terms of the whole chunk in one pass ([CHUNK, M, P]): e^-σ where the pair
    # was blended (0 elsewhere, so that α and every gradient term vanish there too) and c·g, summed
    # term by term: a reduce over the feature axis would be a separate loop per list position.
    _, _, gauss, _, keep = _pair_alpha(chunk, px, py)
    inc = keep & (positions[..., None] <= last)
    color_dot_g = sum(g_acc[:, d] * chunk[..., PARAM_ROWS + d, None] for d in range(n_feats))
    gauss, color_dot_g = jax.lax.optimization_barrier((jnp.where(inc, gauss, 0.0), color_dot_g))
    alpha = jnp.minimum(ALPHA_MAX, chunk[..., 5, None] * gauss)
    # The recurrence in forward order: T before each pair and the prefix Σ_{j≤i} w_j (c_j·g).
    v_alphas, weights = [], []
    for j in range(CHUNK):
      w = alpha[j] * trans
      behind = behind + w * color_dot_g[j]
      # Finite where the pair was not blended (α = 0), and then scaled by its e^-σ = 0 below.
      v_alphas.append(trans * color_dot_g[j] - (acc_dot_g - behind + background_term) / (1.0 - alpha[j]))
      weights.append(w)
      trans = trans * (1.0 - alpha[j])
    v_alpha, w = jax.lax.optimization_barrier((jnp.stack(v_alphas), jnp.stack(weights)))
    # Reductions over each sub-tile's pixels, for all chunk positions at once.
    p = chunk.transpose(0, 2, 1)[..., None]                   # [CHUNK, R, M, 1]
    dx, dy = p[:, 0] - px, p[:, 1] - py
    o_gauss = p[:, 5] * gauss
    unclamped = o_gauss <= ALPHA_MAX
    v_sigma = jnp.where(unclamped, -o_gauss * v_alpha, 0.0)
    sums = jnp.sum(jnp.stack([v_sigma * dx, v_sigma * dy, v_sigma * dx * dx, v_sigma * dx * dy,
                              v_sigma * dy * dy, jnp.where(unclamped, gauss * v_alpha, 0.0)]), axis=-1)
    sum_dx, sum_dy, sum_dxx, sum_dxy, sum_dyy, g_opacity = sums          # each [CHUNK, M]
    a, b, c = p[:, 2, :, 0], p[:, 3, :, 0], p[:, 4, :, 0]
    # ∂σ/∂mean = (a·dx + b·dy, b·dx + c·dy): the conic is applied after the pixel sums.
    g_params = jnp.stack([a * sum_dx + b * sum_dy, b * sum_dx + c * sum_dy, 0.5 * sum_dxx, sum_dxy,
                          0.5 * sum_dyy, g_opacity], axis=-1)            # [CHUNK, M, 6]
    g_feats = jnp.einsum("kmp,mdp->kmd", w, g_acc, precision=jax.lax.Precision.HIGHEST)
    # Padding entries point at the zero row, which collects (zero) gradients harmlessly.
    return trans, behind, g_rows.at[gids].add(jnp.concatenate([g_params, g_feats], axis=-1))

  pixels = (acc.shape[0], SUBTILE_PIXELS)
  n_steps = (jnp.max(n_entries, initial=0) + CHUNK - 1) // CHUNK
  carry = (jnp.ones(pixels, jnp.float32), jnp.zeros(pixels, jnp.float32), g_rows)
  return jax.lax.fori_loop(0, n_steps, step, carry)[2]


def _group_layout(n_tiles: int) -> tuple[int, int]:
  group = max(1, min(SUBTILES_PER_GROUP // SUBTILES, n_tiles))
  return -(-n_tiles // group), group


def _grouped(x: jax.Array, n_groups: int, group: int) -> jax.Array:
  """Pads the leading tile axis to n_groups·group and splits it into [n_groups, group, ...]."""
  x = jnp.pad(x, [(0, n_groups * group - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
  return x.reshape((n_groups, group) + x.shape[1:])


def _zero_padded(ids: jax.Array, zero_row: int, width: int) -> jax.Array:
  """Tile lists [n_tiles, width] with padding (−1 or past Kcap) pointing at the zero row."""
  ids = jnp.where(ids < 0, zero_row, ids)
  return jnp.pad(ids, ((0, 0), (0, width - ids.shape[1])), constant_values=zero_row)


def _grouped_lists(rows, ids, counts):
  """Groups of tiles in decreasing order of list length (a group runs as long as its longest
  sub-list: like tiles together waste less): (ids padded to Kpad with the zero row, counts, tile
  ids), each [n_groups, group, ...]. Kpad covers the blocks of `_block_plan`."""
  n_tiles, kcap = ids.shape
  ids = _zero_padded(ids, rows.shape[0] - 1, _padded_capacity(kcap))
  n_groups, group = _group_layout(n_tiles)
  order = jnp.argsort(-counts, stable=True).astype(jnp.int32)
  return tuple(_grouped(x, n_groups, group) for x in (ids[order], counts[order], order))


def _forward_lists(rows, ids, counts, *, tiles_per_row, tiles_per_image, record):
  n_tiles, kcap = ids.shape
  if kcap >= 1 << (31 - CHUNK):
    raise ValueError(f"reference: tile lists of {kcap} slots, expected fewer than 2^{31 - CHUNK}")
  fn = functools.partial(_forward_group, rows, tiles_per_row=tiles_per_row,
                         tiles_per_image=tiles_per_image, record=record)
  groups = _grouped_lists(rows, ids, counts)
  out = jax.lax.map(lambda x: fn(*x), groups)
  unsort = jnp.argsort(groups[-1].reshape(-1)[:n_tiles])
  return jax.tree.map(lambda y: y.reshape((-1,) + y.shape[2:])[unsort], out)


def forward_lists(rows: jax.Array, ids: jax.Array, counts: jax.Array, *, tiles_per_row: int,
                  tiles_per_image: int):
  """Compositing straight from per-Gaussian rows, gathered lazily (the XLA path of rasterization).

  rows f32[G+1, 8+D]: (mean_x, mean_y, conic_a, conic_b, conic_c, opacity, 0, 0, features…) per
  Gaussian, the last row zero; ids i32[n_tiles, Kcap] per-tile lists into rows (padding: G or −1);
  counts i32[n_tiles]. Returns (acc, t_final, last) as `forward`; `last` indexes the tile lists.
  """
  return _forward_lists(rows, ids, counts, tiles_per_row=tiles_per_row,
                        tiles_per_image=tiles_per_image, record=False)


def forward_lists_with_entries(rows: jax.Array, ids: jax.Array, counts: jax.Array, *,
                               tiles_per_row: int, tiles_per_image: int):
  """`forward_lists`, plus what `backward_lists` visits: per 8×8 sub-tile, the tile-list positions
  that at least one of its pixels blended, increasing, entries i32[n_tiles, SUBTILES, Kpad] padded
  with Kpad, and their number n_entries i32[n_tiles, SUBTILES]."""
  return _forward_lists(rows, ids, counts, tiles_per_row=tiles_per_row,
                        tiles_per_image=tiles_per_image, record=True)


def backward_lists(rows: jax.Array, ids: jax.Array, acc: jax.Array, t_final: jax.Array,
                   last: jax.Array, entries: jax.Array, n_entries: jax.Array, g_acc: jax.Array,
                   g_t: jax.Array, *, tiles_per_row: int, tiles_per_image: int) -> jax.Array:
  """Gradient w.r.t. rows [G+1, 8+D] (columns 6 and 7 zero) for cotangents g_acc, g_t, from the
  outputs of `forward_lists_with_entries`: only the blended entries are visited."""
  n_tiles = ids.shape[0]
  n_sub, kpad = n_tiles * SUBTILES, entries.shape[-1]
  ids = _zero_padded(ids, rows.shape[0] - 1, kpad + 1)   # entries' padding Kpad: the zero row
  n_entries = n_entries.reshape(n_sub)
  # Sub-tiles run in groups of like work (a group runs as long as its longest entry list), one
  # lane each; padding lanes have no entries and zero cotangents.
  group = max(1, min(BACKWARD_LANES, n_sub))
  n_groups = -(-n_sub // group)
  order = jnp.argsort(-n_entries, stable=True).astype(jnp.int32)
  lanes = jnp.pad(order, (0, n_groups * group - n_sub), constant_values=n_sub).reshape(n_groups, group)

  def subtiles(x):   # per tile [n_tiles, (D,) 256] → per sub-tile [n_sub, (D,) P]
    return _to_subtiles(x) if x.ndim == 3 else _to_subtiles(x[:, None])[:, 0]

  def lanes_of(x, fill=0):   # per sub-tile [n_sub, …] → [n_groups, group, …]
    return jnp.take(x, lanes, axis=0, mode="fill", fill_value=fill)

  groups = (jnp.minimum(lanes // SUBTILES, n_tiles - 1), lanes % SUBTILES,
            lanes_of(entries.reshape(n_sub, kpad), kpad), lanes_of(n_entries),
            lanes_of(subtiles(acc)), lanes_of(subtiles(t_final)), lanes_of(subtiles(last), -1),
            lanes_of(subtiles(g_acc)), lanes_of(subtiles(g_t)))
  fn = functools.partial(_backward_group, rows, ids, tiles_per_row=tiles_per_row,
                         tiles_per_image=tiles_per_image)
  g_rows = jnp.zeros((rows.shape[0], rows.shape[1] - PARAM_ROWS + GRAD_ROWS), jnp.float32)
  g_rows, _ = jax.lax.scan(lambda g, grp: (fn(g, grp), None), g_rows, groups)
  return jnp.concatenate([g_rows[:, :GRAD_ROWS],
                          jnp.zeros((rows.shape[0], PARAM_ROWS - GRAD_ROWS), jnp.float32),
                          g_rows[:, GRAD_ROWS:]], axis=1)


def _slab_lists(params: jax.Array, feats: jax.Array):
  """The slab contract as rows (one per slot, then a zero row) and per-tile ids."""
  n_tiles, _, kcap = params.shape
  rows = jnp.concatenate([params, feats], axis=1).transpose(0, 2, 1).reshape(n_tiles * kcap, -1)
  rows = jnp.pad(rows, ((0, 1), (0, 0)))
  return rows, jnp.arange(n_tiles * kcap, dtype=jnp.int32).reshape(n_tiles, kcap)


def forward(params: jax.Array, feats: jax.Array, counts: jax.Array, *, tiles_per_row: int,
            tiles_per_image: int, interpret: bool = False):
  """(acc [n_tiles, D, 256], t_final [n_tiles, 256], last [n_tiles, 256]); see the module doc."""
  del interpret  # XLA needs no interpreter
  _check(params, feats, counts)
  return forward_lists(*_slab_lists(params, feats), counts, tiles_per_row=tiles_per_row,
                       tiles_per_image=tiles_per_image)


def backward(params: jax.Array, feats: jax.Array, counts: jax.Array, acc: jax.Array,
             t_final: jax.Array, last: jax.Array, g_acc: jax.Array, g_t: jax.Array, *,
             tiles_per_row: int, tiles_per_image: int, interpret: bool = False):
  """(g_params [n_tiles, 8, Kcap], g_feats [n_tiles, D, Kcap]) for cotangents g_acc, g_t."""
  del interpret
  _check(params, feats, counts)
  n_tiles, _, kcap = params.shape
  rows, ids = _slab_lists(params, feats)
  # The slab contract carries no entries: one more forward re-derives them.
  *_, entries, n_entries = forward_lists_with_entries(rows, ids, counts, tiles_per_row=tiles_per_row,
                                                      tiles_per_image=tiles_per_image)
  g_rows = backward_lists(rows, ids, acc, t_final, last, entries, n_entries, g_acc, g_t,
                          tiles_per_row=tiles_per_row, tiles_per_image=tiles_per_image)
  g_slabs = g_rows[:-1].reshape(n_tiles, kcap, -1).transpose(0, 2, 1)
  return g_slabs[:, :PARAM_ROWS], g_slabs[:, PARAM_ROWS:]
