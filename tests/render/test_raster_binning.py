"""Tile binning: per-tile lists identical to gsplat's `_isect_tiles` order; counts and overflow."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from flashworld_jax.render import binning, projection
from flashworld_jax.render.binning import RasterCapacity
from raster_scenes import cameras, scene

W, H = 72, 40   # not multiples of 16: 5 × 3 tiles


def projected(n, seed, n_cameras=2):
  s = scene(n, seed, scale_range=(0.01, 0.2))
  s["means"][1::2, 2] = s["means"][0::2, 2]   # exact depth ties (camera 0 is the identity)
  viewmats, Ks = cameras(n_cameras, W, H)
  covars = projection.quat_scale_to_covar(jnp.asarray(s["quats"]), jnp.asarray(s["scales"]))
  proj = jax.vmap(lambda v, k: projection.project(
      jnp.asarray(s["means"]), covars, jnp.asarray(s["opacities"]), v, k, W, H, near_plane=0.01,
      far_plane=1e10, radius_clip=0.0, eps2d=0.3))(jnp.asarray(viewmats), jnp.asarray(Ks))
  return proj


@pytest.mark.oracle
@pytest.mark.parametrize("packed_keys", [True, False])
def test_lists_match_gsplat_isect_tiles_exactly(packed_keys, monkeypatch):
  torch = pytest.importorskip("torch")
  gs = pytest.importorskip("gsplat.cuda._torch_impl")
  if not packed_keys:   # the two-operand sort used when (tile, depth rank) exceeds int32
    monkeypatch.setattr(binning, "PACKED_KEY_LIMIT", 0)
  proj = projected(100, 0)
  tiles_x, tiles_y = binning.tile_grid(W, H)
  lists = binning.bin_gaussians(proj.means2d, proj.radii, proj.depths, W, H,
                                RasterCapacity(max_isects=4096, tile_capacity=128))
  assert not bool(lists.overflow)
  _, isect_ids, flatten_ids = gs._isect_tiles(
      torch.tensor(np.asarray(proj.means2d)), torch.tensor(np.asarray(proj.radii)),
      torch.tensor(np.asarray(proj.depths)), 16, tiles_x, tiles_y, sort=True)
  n_tiles = tiles_x * tiles_y
  tile_bits = n_tiles.bit_length()
  image = (isect_ids >> (32 + tile_bits)).numpy()
  tile = ((isect_ids >> 32) & ((1 << tile_bits) - 1)).numpy()
  key = image * n_tiles + tile
  # torch.sort is not stable; gsplat's CUDA radix sort is: equal keys keep the lower flat id first.
  canonical = np.lexsort((flatten_ids.numpy(), isect_ids.numpy()))
  key, flatten_ids = key[canonical], flatten_ids[canonical]
  assert int(lists.n_isects) == len(flatten_ids) > 200
  ids, counts = np.asarray(lists.ids), np.asarray(lists.counts)
  for t in range(2 * n_tiles):
    expected = flatten_ids.numpy()[key == t]
    np.testing.assert_array_equal(ids[t, :counts[t]], expected, err_msg=f"tile {t}")
    assert np.all(ids[t, counts[t]:] == -1)
  np.testing.assert_array_equal(np.asarray(lists.tile_counts).reshape(-1),
                                np.bincount(key, minlength=2 * n_tiles))


def test_counts_and_overflow_flags():
  proj = projected(300, 1)
  full = binning.bin_gaussians(proj.means2d, proj.radii, proj.depths, W, H, RasterCapacity(8192, 512))
  n_isects, max_count = int(full.n_isects), int(full.max_tile_count)
  assert not bool(full.overflow) and n_isects == int(np.asarray(full.tile_counts).sum())
  assert max_count == int(np.asarray(full.tile_counts).max())
  few_isects = binning.bin_gaussians(proj.means2d, proj.radii, proj.depths, W, H,
                                     RasterCapacity(n_isects - 1, 512))
  short_tiles = binning.bin_gaussians(proj.means2d, proj.radii, proj.depths, W, H,
                                      RasterCapacity(8192, max_count - 1))
  for lists in (few_isects, short_tiles):
    assert bool(lists.overflow)
    assert int(lists.n_isects) == n_isects and int(lists.max_tile_count) == max_count


def test_capacity_rounding():
  cap = RasterCapacity.from_counts(1000, 130, headroom=1.0)
  assert cap == RasterCapacity(1024, 256)
  assert RasterCapacity.from_counts(0, 0) == RasterCapacity(1024, 128)
  with pytest.raises(ValueError, match="headroom"):
    RasterCapacity.from_counts(10, 10, headroom=0.5)


@pytest.mark.parametrize("longest_run", [1, 2, binning.MAX_DEPTH_TIES, binning.MAX_DEPTH_TIES + 7])
def test_depth_order_is_the_stable_sort(longest_run):
  # Runs of equal depth keys up to MAX_DEPTH_TIES are ranked in index order; longer runs take the
  # stable sort. Either way the order is numpy's stable argsort, per camera.
  rng = np.random.default_rng(longest_run)
  depths = rng.uniform(2, 4, (3, 500)).astype(np.float32)
  for cam in range(3):
    for length in range(2, longest_run + 1):
      members = rng.choice(500, length, replace=False)
      depths[cam, members] = depths[cam, members[0]]
  bits = jax.lax.bitcast_convert_type(jnp.asarray(depths), jnp.int32)
  order = jax.jit(binning._depth_order)(bits)
  np.testing.assert_array_equal(order, np.argsort(depths, axis=1, kind="stable"))
