"""Pallas compositor kernels (TPU and GPU lowerings) in interpret mode against independent oracles.

Oracles: a dense per-tile cumprod compositor written here from the rules (rasterizer.md §5.3, all slots
of a tile at once) with `jax.grad` for the gradients, and the chunked XLA backend reference.py.
Tolerances (rasterizer.md §6): forward max |Δ| ≤ 1e-5, `last` exactly equal, gradients rel-L2 ≤ 1e-5
per parameter row. Kernel backwards are fed the kernel's own forward outputs, as the custom_vjp does.
No accelerator is needed: besides the interpreters, both kernels are lowered for "tpu" / "cuda" through
`jax.export`, which runs the Pallas → Mosaic / Mosaic GPU lowering on CPU.
"""
from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.gaussian_raster import reference

BACKENDS = ("pallas_tpu", "pallas_gpu")
TILES_PER_ROW, TILES_PER_IMAGE = 2, 4          # 32×32 images
KCAP = 256                                     # two chunks of 128: grids of n_tiles × 2 steps
FWD_TOL = 1e-5
GRAD_TOL = 1e-5


def _backend(name: str):
  return importlib.import_module(f"kernels.gaussian_raster.{name}")


def _layout():
  return dict(tiles_per_row=TILES_PER_ROW, tiles_per_image=TILES_PER_IMAGE)


def _tile_origin(t: int) -> tuple[int, int]:
  local = t % TILES_PER_IMAGE
  return (local % TILES_PER_ROW) * 16, (local // TILES_PER_ROW) * 16


def random_slabs(seed: int, counts, n_feats: int, opacity_range=(0.05, 1.0)):
  """Gaussians scattered around each tile (some far outside), anisotropic conics, opacities up to 1
  (so some α hit the 0.999 cap). Padding slots get opacity 0 but garbage means and conics."""
  rng = np.random.default_rng(seed)
  n_tiles = len(counts)
  params = rng.uniform(-50, 50, (n_tiles, 8, KCAP)).astype(np.float32)
  params[:, 5:] = 0.0
  for t, count in enumerate(counts):
    x0, y0 = _tile_origin(t)
    std = rng.uniform(1.0, 8.0, (count, 2))
    rho = rng.uniform(-0.8, 0.8, count)
    cov = np.stack([std[:, 0] ** 2, rho * std[:, 0] * std[:, 1], std[:, 1] ** 2])
    det = cov[0] * cov[2] - cov[1] ** 2
    params[t, 0, :count] = x0 + rng.uniform(-12, 28, count)
    params[t, 1, :count] = y0 + rng.uniform(-12, 28, count)
    params[t, 2:5, :count] = np.stack([cov[2], -cov[1], cov[0]]) / det
    params[t, 5, :count] = np.minimum(rng.uniform(*opacity_range, count), 1.0)
  feats = rng.normal(size=(n_tiles, n_feats, KCAP)).astype(np.float32)
  return jnp.asarray(params), jnp.asarray(feats), jnp.asarray(np.asarray(counts, np.int32))


def random_cotangents(seed: int, n_tiles: int, n_feats: int):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(n_tiles, n_feats, 256)).astype(np.float32)),
          jnp.asarray(rng.normal(size=(n_tiles, 256)).astype(np.float32)))


def running_product(x: jax.Array) -> jax.Array:
  """cumprod along the last axis as a sequential scan: the same products, but its gradient compiles in
  ~1 s where jnp.cumprod's takes ~10 s on CPU."""
  def step(carry, x_i):
    carry = carry * x_i
    return carry, carry
  _, products = jax.lax.scan(step, jnp.ones(x.shape[:-1], x.dtype), jnp.moveaxis(x, -1, 0))
  return jnp.moveaxis(products, 0, -1)


def dense_composite(params: jax.Array, feats: jax.Array):
  """§5.3 on [256 px, Kcap] per tile: T_after = cumprod(1−α), inc = kept ∧ T_after > 1e-4."""
  n_tiles, _, kcap = params.shape
  origins = np.array([_tile_origin(t) for t in range(n_tiles)], np.float32)
  pixel = np.arange(256)
  px = jnp.asarray(origins[:, :1] + pixel % 16 + 0.5)[:, :, None]              # [n, 256, 1]
  py = jnp.asarray(origins[:, 1:] + pixel // 16 + 0.5)[:, :, None]
  mx, my, ca, cb, cc, op = (params[:, r, None, :] for r in range(6))          # [n, 1, K]
  dx, dy = mx - px, my - py
  sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
  # σ < 0 pairs are skipped; clamping them first keeps garbage padding from exp-overflowing into NaN
  # gradients (the where-of-inf trap).
  alpha = jnp.minimum(0.999, op * jnp.exp(-jnp.where(sigma >= 0, sigma, 0.0)))
  keep = (sigma >= 0) & (alpha >= np.float32(1) / np.float32(255))
  alpha = jnp.where(keep, alpha, 0.0)
  t_after = running_product(1.0 - alpha)
  inc = keep & (t_after > 1e-4)
  t_before = jnp.concatenate([jnp.ones_like(t_after[..., :1]), t_after[..., :-1]], axis=-1)
  w = jnp.where(inc, alpha * t_before, 0.0)
  acc = jnp.einsum("npk,ndk->ndp", w, feats, precision=jax.lax.Precision.HIGHEST)
  t_final = jnp.prod(jnp.where(inc, 1.0 - alpha, 1.0), axis=-1)
  last = jnp.max(jnp.where(inc, jnp.arange(kcap), -1), axis=-1).astype(jnp.int32)
  return acc, t_final, last


@jax.jit
def dense_gradients(params, feats, g_acc, g_t):
  def loss(params, feats):
    acc, t_final, _ = dense_composite(params, feats)
    return jnp.sum(acc * g_acc) + jnp.sum(t_final * g_t)
  return jax.grad(loss, argnums=(0, 1))(params, feats)


def rel_l2(x, y) -> float:
  return float(jnp.linalg.norm(x - y) / jnp.maximum(jnp.linalg.norm(y), 1e-30))


def assert_forward_close(got, want, tol=FWD_TOL):
  acc, t_final, last = got
  np.testing.assert_array_equal(np.asarray(last), np.asarray(want[2]))
  assert float(jnp.max(jnp.abs(acc - want[0]))) <= tol
  assert float(jnp.max(jnp.abs(t_final - want[1]))) <= tol


def assert_gradients_close(got, want, tol=GRAD_TOL):
  (g_params, g_feats), (w_params, w_feats) = got, want
  for row in range(6):
    assert rel_l2(g_params[:, row], w_params[:, row]) <= tol, f"g_params row {row}"
  assert not np.any(np.asarray(g_params[:, 6:]))
  assert rel_l2(g_feats, w_feats) <= tol


def run_backend(name: str, params, feats, counts, g_acc, g_t, interpret=True):
  module = _backend(name)
  fwd = module.forward(params, feats, counts, interpret=interpret, **_layout())
  grads = module.backward(params, feats, counts, *fwd, g_acc, g_t, interpret=interpret, **_layout())
  return fwd, grads


RANDOM_COUNTS = (0, 1, 37, 128, 200, 256, 129, 255)   # empty, partial, exactly one chunk, full Kcap


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_feats", (pytest.param(1, marks=pytest.mark.slow),
                                     pytest.param(3, marks=pytest.mark.slow), 4))
def test_random_tiles_match_dense_oracle(backend, n_feats):
  params, feats, counts = random_slabs(n_feats, RANDOM_COUNTS, n_feats)
  g_acc, g_t = random_cotangents(10 + n_feats, len(RANDOM_COUNTS), n_feats)
  fwd, grads = run_backend(backend, params, feats, counts, g_acc, g_t)
  want = dense_composite(params, feats)
  assert_forward_close(fwd, want)
  assert np.all(np.asarray(fwd[2][0]) == -1) and np.all(np.asarray(fwd[1][0]) == 1.0)  # empty tile
  assert_gradients_close(grads, dense_gradients(params, feats, g_acc, g_t))


def _stop_slabs():
  """Conic 0 makes σ = 0 at every pixel, so α = opacity everywhere and each tile's stop is exact.

  tile 0: α = 0.5 stops at slot 13 (0.5^14 ≤ 1e-4), mid-chunk; later α = 0.05 pairs would still pass
          T·(1−α) > 1e-4 on their own, so they test that nothing is blended after an exclusive stop.
  tile 1: 128 pairs leave T = 1.5e-4, slot 128 (the first of chunk 1) stops: a stop exactly at a chunk
          boundary, again followed by α = 0.05 pairs.
  tile 2: the stop at slot 127 (the last of chunk 0) and α = 0.05 pairs in chunk 1: `done` must be
          carried across chunks.
  tile 3: saturated, α = 0.999 (opacity 1 is capped): slot 1 stops (1e-3·1e-3 ≤ 1e-4).
  """
  opacity = np.zeros((4, KCAP), np.float32)
  opacity[0, :14] = 0.5
  opacity[0, 14:60] = 0.05
  ramp = 1.0 - 1.5e-4 ** (1 / 128)
  opacity[1, :128] = ramp
  opacity[1, 128] = 0.5
  opacity[1, 129:200] = 0.05
  opacity[2, :127] = 1.0 - 1.5e-4 ** (1 / 127)
  opacity[2, 127] = 0.5
  opacity[2, 128:256] = 0.05
  opacity[3, :] = 1.0
  counts = np.array([60, 200, 256, 256], np.int32)
  rng = np.random.default_rng(3)
  params = np.zeros((4, 8, KCAP), np.float32)
  params[:, 0] = rng.uniform(0, 32, (4, KCAP))
  params[:, 1] = rng.uniform(0, 32, (4, KCAP))
  params[:, 5] = opacity
  feats = rng.normal(size=(4, 3, KCAP)).astype(np.float32)
  return jnp.asarray(params), jnp.asarray(feats), jnp.asarray(counts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exclusive_stop_mid_chunk_and_at_chunk_boundaries(backend):
  params, feats, counts = _stop_slabs()
  g_acc, g_t = random_cotangents(7, 4, 3)
  fwd, grads = run_backend(backend, params, feats, counts, g_acc, g_t)
  expected_last = np.repeat(np.array([12, 127, 126, 0], np.int32)[:, None], 256, axis=1)
  np.testing.assert_array_equal(np.asarray(fwd[2]), expected_last)
  assert np.all(np.asarray(fwd[1]) > 1e-4)              # the stopping pair is never blended
  assert_forward_close(fwd, dense_composite(params, feats))
  assert_gradients_close(grads, dense_gradients(params, feats, g_acc, g_t))


@pytest.mark.parametrize("backend", BACKENDS)
def test_saturated_random_tiles(backend):
  counts = (256, 256, 180, 256)
  params, feats, counts = random_slabs(5, counts, 3, opacity_range=(0.6, 1.3))
  g_acc, g_t = random_cotangents(8, 4, 3)
  fwd, grads = run_backend(backend, params, feats, counts, g_acc, g_t)
  assert float(jnp.mean(fwd[1] <= 1e-3)) > 0.5          # most pixels saturate and stop early
  assert_forward_close(fwd, dense_composite(params, feats))
  assert_gradients_close(grads, dense_gradients(params, feats, g_acc, g_t))


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_xla_reference(backend):
  params, feats, counts = random_slabs(11, RANDOM_COUNTS, 3)
  g_acc, g_t = random_cotangents(12, len(RANDOM_COUNTS), 3)
  fwd, grads = run_backend(backend, params, feats, counts, g_acc, g_t)
  want = reference.forward(params, feats, counts, **_layout())
  assert_forward_close(fwd, want)
  want_grads = reference.backward(params, feats, counts, *want, g_acc, g_t, **_layout())
  assert_gradients_close(grads, want_grads)


def test_tpu_kernels_under_tpu_interpreter():
  """Mosaic TPU semantics: races, out-of-bounds reads and reads of uninitialised (NaN) memory."""
  from jax.experimental.pallas import tpu as pltpu
  strict = pltpu.InterpretParams(detect_races=True, out_of_bounds_reads="raise",
                                 uninitialized_memory="nan")
  params, feats, counts = random_slabs(13, (200, 90), 3)
  g_acc, g_t = random_cotangents(14, 2, 3)
  try:
    fwd, grads = run_backend("pallas_tpu", params, feats, counts, g_acc, g_t, interpret=strict)
    jax.block_until_ready((fwd, grads))
  except Exception:
    pltpu.reset_tpu_interpret_mode_state()
    raise
  assert_forward_close(fwd, dense_composite(params, feats))
  assert_gradients_close(grads, dense_gradients(params, feats, g_acc, g_t))


def test_gpu_forward_kernel_under_mosaic_gpu_interpreter():
  """The real plgpu.kernel + emit_pipeline forward (not just its chunk body) in the Mosaic GPU
  interpreter, with race detection. That interpreter is not public API in jax 0.10.2, so this skips
  when it moves. The backward cannot run there: the interpreter rejects the predicated shared → global
  copies that emit_pipeline uses for outputs that change with the chunk ("predicate not supported")."""
  interpret_gpu = pytest.importorskip("jax._src.pallas.mosaic_gpu.interpret.interpret_pallas_call")
  gpu_params = pytest.importorskip("jax._src.pallas.mosaic_gpu.interpret.params")
  params, feats, counts = random_slabs(15, (200, 90), 3)
  try:
    fwd = jax.block_until_ready(_backend("pallas_gpu").forward(
        params, feats, counts, interpret=gpu_params.InterpretGPUParams(detect_races=True),
        **_layout()))
  except Exception:
    interpret_gpu.reset_gpu_interpret_mode_state()
    raise
  assert_forward_close(fwd, dense_composite(params, feats))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_inputs_raise(backend):
  module = _backend(backend)
  params, feats, counts = random_slabs(0, (10, 20), 2)
  with pytest.raises(NotImplementedError, match="needs a"):
    module.forward(params, feats, counts, interpret=False, **_layout())
  with pytest.raises(NotImplementedError, match="Kcap=192"):
    module.forward(params[..., :192], feats[..., :192], counts, interpret=True, **_layout())
  with pytest.raises(NotImplementedError, match="dtype"):
    module.forward(params.astype(jnp.bfloat16), feats, counts, interpret=True, **_layout())
  with pytest.raises(ValueError, match="counts"):
    module.forward(params, feats, counts[:1], interpret=True, **_layout())
  fwd = reference.forward(params, feats, counts, **_layout())
  g_acc, g_t = random_cotangents(1, 2, 2)
  with pytest.raises(ValueError, match="g_t"):
    module.backward(params, feats, counts, *fwd, g_acc, g_t[:, :128], interpret=True, **_layout())


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_through_api_custom_vjp(backend):
  """The kernels plugged into api.composite's custom_vjp: jax.grad equals the XLA backend's."""
  from kernels.gaussian_raster import api
  params, feats, counts = random_slabs(11, RANDOM_COUNTS, 3)
  g_acc, g_t = random_cotangents(12, len(RANDOM_COUNTS), 3)

  def loss(params, feats, backend, interpret):
    acc, t_final = api.composite(params, feats, counts, backend=backend, interpret=interpret,
                                 **_layout())
    return jnp.sum(acc * g_acc) + jnp.sum(t_final * g_t)

  got = jax.grad(loss, argnums=(0, 1))(params, feats, backend, True)
  assert_gradients_close(got, jax.grad(loss, argnums=(0, 1))(params, feats, "xla", False))


def _export_for(module, platform: str, n_feats: int):
  """Lowers forward and backward for `platform` on this CPU machine through jax.export: the Pallas →
  Mosaic (TPU) / Mosaic GPU lowering runs in Python and rejects unsupported ops, layouts and shapes.
  Mosaic's own compiler passes run on the device only, so this is a necessary check, not a sufficient
  one."""
  from jax import export
  n_tiles = 4
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  slabs = (f32(n_tiles, 8, KCAP), f32(n_tiles, n_feats, KCAP), i32(n_tiles))
  saved = (f32(n_tiles, n_feats, 256), f32(n_tiles, 256), i32(n_tiles, 256))
  cotangents = (f32(n_tiles, n_feats, 256), f32(n_tiles, 256))
  fwd = jax.jit(lambda *a: module.forward(*a, **_layout()))
  bwd = jax.jit(lambda *a: module.backward(*a, **_layout()))
  for fn, args in ((fwd, slabs), (bwd, slabs + saved + cotangents)):
    assert export.export(fn, platforms=[platform])(*args).mlir_module()


@pytest.mark.parametrize("n_feats", (1, 4))
def test_gpu_kernels_lower_to_mosaic_gpu(monkeypatch, n_feats):
  module = _backend("pallas_gpu")
  monkeypatch.setattr(module, "_check_platform", lambda interpret: None)   # lowering only, no GPU
  _export_for(module, "cuda", n_feats)


@pytest.mark.parametrize("n_feats", (1, 4))
def test_tpu_kernels_lower_to_mosaic(monkeypatch, n_feats):
  # The Mosaic lowering asks the (absent) device for its TPU generation: pretend to be a v5e. This
  # reaches into jax._src, so it skips rather than fails when a JAX upgrade moves it.
  tpu_info = pytest.importorskip("jax._src.pallas.mosaic.tpu_info")
  if not hasattr(tpu_info, "get_tpu_info_for_chip") or not hasattr(tpu_info, "ChipVersion"):
    pytest.skip("this JAX has no tpu_info.get_tpu_info_for_chip")
  monkeypatch.setattr(tpu_info, "get_tpu_info",
                      lambda: tpu_info.get_tpu_info_for_chip(tpu_info.ChipVersion.TPU_V5E, 1))
  module = _backend("pallas_tpu")
  monkeypatch.setattr(module, "_check_platform", lambda interpret: None)
  _export_for(module, "tpu", n_feats)
