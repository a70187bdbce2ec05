"""XLA tile compositor (kernels/gaussian_raster/reference.py via api.composite) vs a float64 torch
oracle on identical per-tile inputs: outputs, `last`, and gradients (rasterizer.md §3, §6)."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from kernels.gaussian_raster import api, reference

TILES_X, TILES_Y = 3, 2
N_TILES = TILES_X * TILES_Y


def random_slabs(seed: int, kcap: int = 192, n_feats: int = 4, n_images: int = 1):
  """Random per-tile lists: means around the tile, random SPD 2D covariances (+0.3 blur)."""
  rng = np.random.default_rng(seed)
  n_tiles = N_TILES * n_images
  params = np.zeros((n_tiles, 8, kcap), np.float32)
  counts = rng.integers(0, kcap + 1, n_tiles).astype(np.int32)
  counts[0] = kcap
  for t in range(n_tiles):
    local = t % N_TILES
    x0, y0 = (local % TILES_X) * 16, (local // TILES_X) * 16
    n = counts[t]
    l = rng.normal(size=(n, 2, 2)) * rng.uniform(0.5, 4.0, (n, 1, 1))
    cov = l @ l.transpose(0, 2, 1) + 0.3 * np.eye(2)
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
    params[t, 0, :n] = x0 + rng.uniform(-6, 22, n)
    params[t, 1, :n] = y0 + rng.uniform(-6, 22, n)
    params[t, 2, :n] = cov[:, 1, 1] / det
    params[t, 3, :n] = -cov[:, 0, 1] / det
    params[t, 4, :n] = cov[:, 0, 0] / det
    params[t, 5, :n] = rng.uniform(0.05, 1.0, n)
  feats = rng.uniform(0, 1, (n_tiles, n_feats, kcap)).astype(np.float32)
  return params, feats, counts


def torch_tile(params, feats, count, tile, torch):
  """float64 oracle for one tile: (acc [D,256], T_final [256], last [256])."""
  from oracle import composite_dense
  local = tile % N_TILES
  x0, y0 = (local % TILES_X) * 16, (local // TILES_X) * 16
  shift = torch.tensor([x0, y0], dtype=params.dtype)
  means = params[0:2, :count].T - shift
  conics = params[2:5, :count].T
  acc, t_final = composite_dense(means, conics, params[5, :count], feats[:, :count].T, 16, 16)
  return acc.reshape(256, -1).T, t_final.reshape(256)


def oracle_blends(params, count, tile):
  """Sequential float64 loop of §2.6 (the literal rule): which pixels blend each pair, [count, 256]."""
  local = tile % N_TILES
  x0, y0 = (local % TILES_X) * 16, (local // TILES_X) * 16
  p = np.arange(256)
  px, py = x0 + p % 16 + 0.5, y0 + p // 16 + 0.5
  trans, blends = np.ones(256), np.zeros((count, 256), bool)
  done = np.zeros(256, bool)
  for i in range(count):
    mx, my, a, b, c, o = params[:6, i].astype(np.float64)
    dx, dy = mx - px, my - py
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = np.minimum(0.999, o * np.exp(-sigma))
    kept = (sigma >= 0) & (alpha >= 1 / 255) & ~done
    stop = kept & (trans * (1 - alpha) <= 1e-4)
    done |= stop
    blends[i] = kept & ~stop
    trans = np.where(blends[i], trans * (1 - alpha), trans)
  return blends


def oracle_last(params, count, tile):
  """The index of the last blended pair per pixel (−1: none)."""
  blends = oracle_blends(params, count, tile)
  return np.where(blends.any(0), count - 1 - np.argmax(blends[::-1], axis=0), -1)


@pytest.mark.oracle
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_forward_and_gradients_match_torch(seed):
  torch = pytest.importorskip("torch")
  pytest.importorskip("gsplat")
  params, feats, counts = random_slabs(seed)
  rng = np.random.default_rng(seed + 7)
  r_acc = rng.normal(size=(N_TILES, feats.shape[1], 256)).astype(np.float32)
  r_t = rng.normal(size=(N_TILES, 256)).astype(np.float32)

  def loss(p, f):
    acc, t_final = api.composite(p, f, jnp.asarray(counts), tiles_per_row=TILES_X,
                                 tiles_per_image=N_TILES, backend="xla")
    return jnp.sum(acc * r_acc) + jnp.sum(t_final * r_t), (acc, t_final)

  (_, (acc, t_final)), (g_p, g_f) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      jnp.asarray(params), jnp.asarray(feats))
  _, _, last = reference.forward(jnp.asarray(params), jnp.asarray(feats), jnp.asarray(counts),
                                 tiles_per_row=TILES_X, tiles_per_image=N_TILES)

  tp = torch.tensor(params, dtype=torch.float64, requires_grad=True)
  tf = torch.tensor(feats, dtype=torch.float64, requires_grad=True)
  total, ref_acc, ref_t = 0.0, [], []
  for t in range(N_TILES):
    a, tt = torch_tile(tp[t], tf[t], int(counts[t]), t, torch)
    total = total + (a * torch.tensor(r_acc[t], dtype=torch.float64)).sum() + (
        tt * torch.tensor(r_t[t], dtype=torch.float64)).sum()
    ref_acc.append(a)
    ref_t.append(tt)
  total.backward()

  np.testing.assert_allclose(acc, torch.stack(ref_acc).detach().numpy(), atol=1e-5, rtol=0)
  np.testing.assert_allclose(t_final, torch.stack(ref_t).detach().numpy(), atol=1e-5, rtol=0)
  for t in range(N_TILES):
    np.testing.assert_array_equal(last[t], oracle_last(params[t], counts[t], t))

  def rel_l2(ours, ref):
    return np.linalg.norm(np.asarray(ours) - ref) / np.linalg.norm(ref)

  ref_gp = tp.grad.numpy()
  for row in range(6):  # mean_x, mean_y, conic a, b, c, opacity
    assert rel_l2(g_p[:, row], ref_gp[:, row]) < 1e-5, row
  assert rel_l2(g_f, tf.grad.numpy()) < 1e-5
  np.testing.assert_array_equal(np.asarray(g_p[:, 6:]), 0.0)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_recorded_entries_are_the_blended_positions(seed):
  """Per 8×8 sub-tile, the recording forward lists, in order, exactly the list positions that at
  least one of its pixels blended (§2.6 literal rule, float64): all the backward visits."""
  params, feats, counts = random_slabs(seed)
  rows, ids = reference._slab_lists(jnp.asarray(params), jnp.asarray(feats))
  *_, entries, n_entries = reference.forward_lists_with_entries(
      rows, ids, jnp.asarray(counts), tiles_per_row=TILES_X, tiles_per_image=N_TILES)
  kpad = entries.shape[-1]
  assert kpad >= params.shape[2]
  dropped = 0
  for t in range(N_TILES):
    blends = oracle_blends(params[t], counts[t], t).reshape(-1, 2, 8, 2, 8)   # [i, sy, qy, sx, qx]
    by_subtile = blends.transpose(0, 1, 3, 2, 4).reshape(-1, 4, 64).any(-1)   # [i, sy·2 + sx]
    for sub in range(4):
      want = np.nonzero(by_subtile[:, sub])[0]
      assert int(n_entries[t, sub]) == len(want), (t, sub)
      np.testing.assert_array_equal(entries[t, sub, :len(want)], want)
      np.testing.assert_array_equal(entries[t, sub, len(want):], kpad)
      dropped += int(want[-1]) + 1 - len(want) if len(want) else 0
  assert dropped > 100   # positions up to the last blended one that no pixel blended


def flat_tile(opacities):
  """One tile whose Gaussians cover it uniformly (conic 0, so α = opacity at every pixel)."""
  k = len(opacities)
  kcap = -(-k // 128) * 128
  params = np.zeros((1, 8, kcap), np.float32)
  params[0, :2, :k] = 8.0
  params[0, 5, :k] = opacities
  feats = np.ones((1, 1, kcap), np.float32)
  return jnp.asarray(params), jnp.asarray(feats), jnp.asarray([k], jnp.int32)


@pytest.mark.parametrize("stop_index", [5 * reference.CHUNK + 3, 8 * reference.CHUNK - 1,
                                        8 * reference.CHUNK, 8 * reference.CHUNK + 1])
def test_exclusive_stop_mid_chunk_and_at_chunk_boundaries(stop_index):
  # 0.5^13 = 1.2e-4 > 1e-4 ≥ 0.5^14: 13 halvings blend, the 14th pair stops and is not blended.
  # Skipped pairs (opacity 0) before them place the stop mid-chunk, on the last / first position of
  # a chunk; pairs after it (incl. the next chunks) must not blend: `done` is carried across chunks.
  opac = np.zeros(stop_index + 80, np.float32)
  opac[stop_index - 13: stop_index + 1] = 0.5
  opac[stop_index + 1:] = 0.9
  acc, t_final, last = reference.forward(*flat_tile(opac), tiles_per_row=1, tiles_per_image=1)
  np.testing.assert_array_equal(last, stop_index - 1)
  np.testing.assert_allclose(t_final, 0.5 ** 13, rtol=1e-6)
  np.testing.assert_allclose(acc, 1 - 0.5 ** 13, rtol=1e-6)


def test_alpha_cap_and_threshold():
  # α is capped at 0.999 and pairs below 1/255 are skipped (T unchanged).
  acc, t_final, last = reference.forward(*flat_tile(np.array([1.0 / 256, 1.0], np.float32)),
                                         tiles_per_row=1, tiles_per_image=1)
  np.testing.assert_allclose(t_final, 0.001, rtol=1e-4)  # 1 - f32(0.999)
  np.testing.assert_array_equal(last, 1)


def test_composite_validates_and_dispatches():
  params, feats, counts = flat_tile(np.full(3, 0.5, np.float32))
  with pytest.raises(ValueError, match="backend"):
    api.composite(params, feats, counts, tiles_per_row=1, tiles_per_image=1, backend="cuda")
  with pytest.raises(ValueError, match="feats"):
    api.composite(params, feats[:, :, :-1], counts, tiles_per_row=1, tiles_per_image=1)
  ref = api.composite(params, feats, counts, tiles_per_row=1, tiles_per_image=1, backend="xla")
  # "auto" is XLA on CPU; the Pallas backends run in interpret mode or fall through to XLA.
  for backend in ("auto", "pallas_tpu", "pallas_gpu"):
    out = api.composite(params, feats, counts, tiles_per_row=1, tiles_per_image=1, backend=backend,
                        interpret=True)
    np.testing.assert_allclose(out[0], ref[0], atol=1e-6)


def stressed_conics(rng: np.random.Generator, n: int) -> np.ndarray:
  """n random 2D conics [n, 2, 2]: covariance eigenvalues from the 0.3 blur up to 2e3 (condition
  numbers to ~7e3), at random angles."""
  angle = rng.uniform(0, np.pi, n)
  rot = np.stack([np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)], -1).reshape(-1, 2, 2)
  eig = np.exp(rng.uniform(np.log(0.3), np.log(2e3), (n, 2)))
  return rot @ (np.eye(2) / eig[:, None, :]) @ rot.transpose(0, 2, 1)


def stressed_slabs(seed: int, kcap: int = 256):
  """Lists that stress the sub-tile culling: covariance eigenvalues from the 0.3 blur up to 2e3
  (condition numbers to ~7e3), opacities down to just under 1/255, means up to 40 px outside."""
  rng = np.random.default_rng(seed)
  params = np.zeros((N_TILES, 8, kcap), np.float32)
  counts = np.full(N_TILES, kcap, np.int32)
  counts[1] = 37
  for t in range(N_TILES):
    x0, y0 = (t % TILES_X) * 16, (t // TILES_X) * 16
    conic = stressed_conics(rng, kcap)
    params[t, 0] = x0 + rng.uniform(-40, 56, kcap)
    params[t, 1] = y0 + rng.uniform(-40, 56, kcap)
    params[t, 2], params[t, 3], params[t, 4] = conic[:, 0, 0], conic[:, 0, 1], conic[:, 1, 1]
    params[t, 5] = np.exp(rng.uniform(np.log(1 / 300), 0, kcap))
  feats = rng.uniform(0, 1, (N_TILES, 3, kcap)).astype(np.float32)
  return jnp.asarray(params), jnp.asarray(feats), jnp.asarray(counts)


@pytest.mark.parametrize("shape", [(3, 4, 1), (2, 4, 100), (5, 1024)])
def test_running_count_matches_cumsum(shape):
  flags = np.random.default_rng(sum(shape)).random(shape) < 0.4
  counts = reference._running_count(jnp.asarray(flags))
  assert counts.dtype == jnp.int32
  np.testing.assert_array_equal(counts, np.cumsum(flags, axis=-1))


def test_reach_bounds_every_pixel_a_pair_can_blend():
  params, _, counts = stressed_slabs(0)
  hx, hy = reference._reach(*(params[:, row] for row in range(2, 6)))
  # Every pixel of a 128×128 window around each Gaussian where the kernel's own float32 arithmetic
  # gives α ≥ 1/255 lies inside the reach box.
  grid = jnp.arange(-64, 64, dtype=jnp.float32) + 0.5
  px, py = [g.reshape(1, -1) for g in jnp.meshgrid(grid, grid)]
  for t in range(N_TILES):
    p = params[t].T                                       # [Kcap, 8]
    centre_x, centre_y = jnp.floor(p[:, :1]), jnp.floor(p[:, 1:2])
    dx, dy, _, _, keep = reference._pair_alpha(p, centre_x + px, centre_y + py)
    inside = (jnp.abs(dx) <= hx[t, :, None]) & (jnp.abs(dy) <= hy[t, :, None])
    assert bool(jnp.all(inside | ~keep)), t
    assert 0.2 < float(jnp.mean(keep)) / float(jnp.mean(inside)) <= 1.0   # the boxes are also tight


def grazing_gaussians(n: int, seed: int, origin: tuple[int, int]):
  """Gaussians [n, 8] that reach α just above or below 1/255 at a pixel centre of the 16×16 tile at
  `origin` (the worst case for a reach test): `stressed_conics`, opacities from just over 1/255,
  means placed along a random direction so that σ at the pixel is s·(1 ± τ), s = ln(255·o), τ from
  1e-7 to 1e-2."""
  rng = np.random.default_rng(seed)
  conic = stressed_conics(rng, n)
  opacity = np.exp(rng.uniform(np.log(1 / 255 * (1 + 1e-6)), 0, n))
  opacity[: n // 8] = 1 / 255 * (1 + rng.uniform(1e-7, 1e-4, n // 8))
  pixel = rng.integers(0, 16, (n, 2)) + 0.5
  u = rng.normal(size=(n, 2))
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  tau = np.exp(rng.uniform(np.log(1e-7), np.log(1e-2), n)) * rng.choice([-1.0, 1.0], n)
  s = np.log(255 * opacity) * (1 + tau)
  quad = np.einsum("ni,nij,nj->n", u, conic, u)
  mean = pixel + u * np.sqrt(2 * s / quad)[:, None]
  params = np.zeros((n, 8), np.float32)
  params[:, :2], params[:, 5] = mean + np.asarray(origin), opacity
  params[:, 2], params[:, 3], params[:, 4] = conic[:, 0, 0], conic[:, 0, 1], conic[:, 1, 1]
  return jnp.asarray(params)


@pytest.mark.parametrize("source", ["stressed", "grazing"])
def test_subtile_reach_bounds_every_pixel_a_pair_can_blend(source):
  """A (Gaussian, 8×8 sub-tile) pair that `_subtile_reach` drops has α < 1/255 at all 64 pixels of
  the sub-tile in the kernel's own float32 arithmetic; and the ellipse test drops pairs that the
  box test keeps."""
  if source == "stressed":
    params, _, _ = stressed_slabs(0)
    gaussians = [params[t].T for t in range(N_TILES)]
    origins = [((t % TILES_X) * 16, (t // TILES_X) * 16) for t in range(N_TILES)]
  else:
    # Far from the image origin too, where the kernel's dx, dy round to ~2^-10 px.
    origins = [(0, 0), (4096, 1024), (16384, 8192)]
    gaussians = [grazing_gaussians(4096, seed, origin) for seed, origin in enumerate(origins)]
  n_reach = n_box = n_blends = 0
  for p, (x0, y0) in zip(gaussians, origins):
    reach = reference._subtile_reach(p[:, 0] - x0, p[:, 1] - y0, p[:, 2], p[:, 3], p[:, 4], p[:, 5])
    px, py = reference._subtile_pixels(jnp.full(4, x0), jnp.full(4, y0), jnp.arange(4))  # [4, 64]
    *_, keep = reference._pair_alpha(p[:, None, :], px, py)                        # [K, 4, 64]
    blends = jnp.any(keep, axis=-1)
    assert bool(jnp.all(reach | ~blends)), int(jnp.sum(blends & ~reach))
    hx, hy = reference._reach(p[:, 2], p[:, 3], p[:, 4], p[:, 5])
    centre_x, centre_y = p[:, 0, None] - x0, p[:, 1, None] - y0
    first = jnp.asarray([0.5, 8.5])
    box_x = (centre_x + hx[:, None] >= first) & (centre_x - hx[:, None] <= first + 7)
    box_y = (centre_y + hy[:, None] >= first) & (centre_y - hy[:, None] <= first + 7)
    n_box += int(jnp.sum(box_y[:, :, None] & box_x[:, None, :]))
    n_reach += int(jnp.sum(reach))
    n_blends += int(jnp.sum(blends))
  assert n_blends > 100 and n_reach < 0.95 * n_box


def reference_forward_backward(params, feats, counts, seed):
  """(acc, t_final, last), (g_params, g_feats) of the XLA reference for random cotangents."""
  g_acc = jax.random.normal(jax.random.key(seed), (N_TILES, feats.shape[1], 256))
  g_t = jax.random.normal(jax.random.key(seed + 1), (N_TILES, 256))
  out = reference.forward(params, feats, counts, tiles_per_row=TILES_X, tiles_per_image=N_TILES)
  return out, reference.backward(params, feats, counts, *out, g_acc, g_t, tiles_per_row=TILES_X,
                                 tiles_per_image=N_TILES)


def assert_same_compositing(ours, ref):
  """Images, T_final and `last` bit for bit; gradients within float32 summation-order rounding."""
  (acc, t_final, last), (g_params, g_feats) = ours
  (acc_ref, t_ref, last_ref), (g_params_ref, g_feats_ref) = ref
  np.testing.assert_array_equal(acc, acc_ref)
  np.testing.assert_array_equal(t_final, t_ref)
  np.testing.assert_array_equal(last, last_ref)
  np.testing.assert_allclose(g_params, g_params_ref, rtol=1e-5,
                             atol=1e-6 * float(jnp.max(jnp.abs(g_params_ref))))
  np.testing.assert_allclose(g_feats, g_feats_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_subtile_culling_changes_nothing(seed, monkeypatch):
  """Culled 8×8 sub-tile lists give the images, `last` and gradients of the whole tile lists."""
  params, feats, counts = stressed_slabs(seed)
  culled = reference_forward_backward(params, feats, counts, seed)
  hx, _ = reference._reach(*(params[:, row] for row in range(2, 6)))
  assert float(jnp.mean(jnp.isfinite(hx) & (hx < 24))) > 0.3   # culling is active in this scene
  monkeypatch.setattr(reference, "_reach", lambda a, b, c, o: (jnp.full(a.shape, jnp.inf),) * 2)
  assert_same_compositing(culled, reference_forward_backward(params, feats, counts, seed))


def test_list_blocks_and_groups_change_nothing(monkeypatch):
  """Sub-lists built lazily block by block (blocks of 40 positions while they fit in the group's
  longest list, then tail blocks of 8 up to its end, stopped sub-tiles skipping the rest), tiles run
  in three groups of two sorted by work, and backward lanes in three groups of 10 (6 of them
  padding), give the images, `last` and gradients of one block and one group over the whole lists."""
  params, feats, counts = stressed_slabs(3)
  counts = counts.at[3].set(100)   # grouped with tile 1 (37): 2 blocks of 40, then 3 tail blocks
  # Tile 0 saturates at slots 40-42: three wide, nearly opaque Gaussians over its centre.
  wide = jnp.array([8.0, 8.0, 1e-4, 0.0, 1e-4, 0.99, 0.0, 0.0])
  params = params.at[0, :, 40:43].set(jnp.broadcast_to(wide[:, None], (8, 3)))

  def run(max_block, tail_block, subtiles_per_group, backward_lanes):
    monkeypatch.setattr(reference, "MAX_BLOCK", max_block)
    monkeypatch.setattr(reference, "TAIL_BLOCK", tail_block)
    monkeypatch.setattr(reference, "SUBTILES_PER_GROUP", subtiles_per_group)
    monkeypatch.setattr(reference, "BACKWARD_LANES", backward_lanes)
    return reference_forward_backward(params, feats, counts, 3)

  def plan(extent):
    return [tuple(int(x) for x in blocks) for blocks in reference._block_plan(256, jnp.int32(extent))]

  assert plan(256) == [(0, 256, 1), (256, 256, 0)] and plan(0) == [(0, 256, 0), (0, 256, 0)]
  with monkeypatch.context() as patch:
    patch.setattr(reference, "MAX_BLOCK", 40)
    patch.setattr(reference, "TAIL_BLOCK", 8)
    assert plan(256) == [(0, 40, 6), (240, 8, 2)] and plan(17) == [(0, 40, 1), (40, 8, 0)]
    assert reference._padded_capacity(256) == 256 and reference._padded_capacity(250) == 256
  blocked = run(40, 8, 2 * reference.SUBTILES, 10)
  last = blocked[0][2]
  assert int(jnp.max(last[0])) == 41 and int(jnp.min(last[2:])) >= 40   # stopped, and many blocks
  assert int(jnp.max(last[2:])) >= 248                                    # into the last tail block
  one_group = N_TILES * reference.SUBTILES
  assert_same_compositing(blocked, run(256, 256, one_group, one_group))


@pytest.mark.parametrize("backend", ["xla", "pallas_tpu"])
def test_composite_lists_matches_slabs_through_the_gather(backend):
  # Per-Gaussian rows + tile lists (Gaussians shared between tiles, padding as −1) give the slab
  # path's images, and gradients w.r.t. the rows equal those of `composite` through the gather.
  params, _, _ = stressed_slabs(2, kcap=128)
  n_gauss = 300
  rng = np.random.default_rng(5)
  rows = np.zeros((n_gauss + 1, 11), np.float32)
  rows[:n_gauss, :8] = np.asarray(params).transpose(0, 2, 1).reshape(-1, 8)[:n_gauss]
  rows[:n_gauss, 8:] = rng.uniform(0, 1, (n_gauss, 3))
  ids = np.full((N_TILES, 128), -1, np.int32)
  counts = rng.integers(0, 129, N_TILES).astype(np.int32)
  for t in range(N_TILES):
    ids[t, :counts[t]] = np.sort(rng.choice(n_gauss, counts[t], replace=False))
  rows, ids, counts = jnp.asarray(rows), jnp.asarray(ids), jnp.asarray(counts)
  g_acc = jax.random.normal(jax.random.key(3), (N_TILES, 3, 256))
  layout = dict(tiles_per_row=TILES_X, tiles_per_image=N_TILES)

  def via_lists(r):
    acc, t = api.composite_lists(r, ids, counts, backend=backend, interpret=True, **layout)
    return jnp.sum(acc * g_acc) + jnp.sum(t), (acc, t)

  def via_slabs(r):
    slabs = jnp.moveaxis(r.T[:, jnp.where(ids < 0, n_gauss, ids)], 0, 1)
    acc, t = api.composite(slabs[:, :8], slabs[:, 8:], counts, backend="xla", **layout)
    return jnp.sum(acc * g_acc) + jnp.sum(t), (acc, t)

  (_, out), grad = jax.value_and_grad(via_lists, has_aux=True)(rows)
  (_, want), want_grad = jax.value_and_grad(via_slabs, has_aux=True)(rows)
  for got, ref in zip(out, want):
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
  scale = float(jnp.max(jnp.abs(want_grad)))
  np.testing.assert_allclose(grad, want_grad, atol=1e-5 * scale, rtol=1e-5)
  np.testing.assert_array_equal(grad[-1], 0.0)          # the padding row
  np.testing.assert_array_equal(grad[:, 6:8], 0.0)
