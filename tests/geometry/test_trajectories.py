"""Trajectory resampling (REF `sample_from_dense_cameras`) and the predefined trajectories."""
import math

import jax
import numpy as np
import pytest

from flashworld_jax.geometry import cameras as C, trajectories as T
from np_geometry import axis_angle_quat, random_cameras, slerp

resample = jax.jit(T.resample_cameras, static_argnums=1)


def _unit_knots(n):
  cams = random_cameras(np.random.default_rng(5), n)
  cams[:, :4] /= np.linalg.norm(cams[:, :4], axis=-1, keepdims=True)
  return cams


def test_resampling_at_the_knots_returns_the_knots():
  knots = _unit_knots(5)
  out = resample(np.float32(knots), 5)
  # Knots pass through up to the sign of the quaternion (slerp flips onto the previous hemisphere).
  signs = np.sign(np.sum(np.asarray(out[:, :4]) * knots[:, :4], axis=-1, keepdims=True))
  np.testing.assert_allclose(out[:, :4] * signs, knots[:, :4], atol=2e-6)
  np.testing.assert_allclose(out[:, 4:], knots[:, 4:], atol=2e-6)
  # The video rule: (n − 1)·fps + 1 samples pass through every generation view.
  fps = 3
  dense = resample(np.float32(knots), 4 * fps + 1)
  np.testing.assert_allclose(np.abs(np.sum(dense[::fps, :4] * knots[:, :4], -1)), 1.0, atol=2e-6)
  np.testing.assert_allclose(dense[::fps, 4:], knots[:, 4:], atol=2e-6)


def test_midpoints_are_slerp_and_lerp():
  knots = _unit_knots(3)
  out = np.asarray(resample(np.float32(knots), 5), np.float64)
  for k, (i, f) in enumerate([(0, 0.5), (1, 0.5)]):
    mid = out[2 * k + 1]
    q = slerp(knots[i, :4], knots[i + 1, :4], f)
    # The reference's slerp returns either sign of the same rotation; compare up to sign.
    np.testing.assert_allclose(mid[:4] * np.sign(mid[:4] @ q), q, atol=3e-6)
    np.testing.assert_allclose(mid[4:], (knots[i, 4:] + knots[i + 1, 4:]) / 2, atol=2e-6)


def test_uneven_resampling_position():
  # 3 knots to 4 samples: t = 1/3 → s = 2/3 between knots 0 and 1; t = 2/3 → s = 4/3, f = 1/3.
  knots = _unit_knots(3)
  out = np.asarray(resample(np.float32(knots), 4), np.float64)
  np.testing.assert_allclose(out[1, 4:], knots[0, 4:] + (knots[1, 4:] - knots[0, 4:]) * 2 / 3,
                             atol=3e-6)
  np.testing.assert_allclose(out[2, 4:], knots[1, 4:] + (knots[2, 4:] - knots[1, 4:]) / 3, atol=3e-6)


def test_single_camera_is_replicated_and_bad_n_rejected():
  cam = np.float32(random_cameras(np.random.default_rng(6), 1))
  np.testing.assert_array_equal(T.resample_cameras(cam, 4), np.repeat(cam, 4, axis=0))
  with pytest.raises(ValueError, match="n must be a positive int, got 0"):
    T.resample_cameras(cam, 0)
  with pytest.raises(ValueError, match=r"cams must have shape \[N, 11\]"):
    T.resample_cameras(cam[0], 3)


@pytest.mark.parametrize("num_cams,n,keep,expected_index", [
    (24, 8, 10, 3), (24, 12, 10, 5), (24, 24, 10, 10), (24, 48, 10, 20),
    (24, 8, 1, 1), (24, 8, 22, 6),  # round to 0 or 7 would drop an end: kept off the ends
    (24, 8, 0, 0), (24, 8, 23, 7), (5, 3, 2, 1), (24, 2, 10, 0), (24, 1, 10, 0)])
def test_resampling_through_a_camera_keeps_it_and_both_ends(num_cams, n, keep, expected_index):
  knots = np.float32(_unit_knots(num_cams))
  out, index = T.resample_through(knots, n, keep)
  out = np.asarray(out)
  assert out.shape == (n, 11) and index == expected_index
  np.testing.assert_array_equal(out[index], knots[keep])
  if n >= 3:
    for end in (0, -1):
      np.testing.assert_allclose(np.abs(np.sum(out[end, :4] * knots[end, :4])), 1.0, atol=2e-6)
      np.testing.assert_allclose(out[end, 4:], knots[end, 4:], atol=2e-6)
  # Each side is the plain resampling of its own cameras.
  before = np.asarray(T.resample_cameras(knots[:keep + 1], index + 1))
  np.testing.assert_allclose(out[:index], before[:-1], atol=1e-7)


def test_resampling_through_the_first_camera_is_plain_resampling():
  knots = np.float32(_unit_knots(6))
  out, index = T.resample_through(knots, 4, 0)
  assert index == 0
  np.testing.assert_allclose(out, T.resample_cameras(knots, 4), atol=1e-7)


def test_resampling_through_rejects_a_camera_outside():
  with pytest.raises(ValueError, match=r"keep_index must be an int in \[0, 3\), got 3"):
    T.resample_through(np.float32(_unit_knots(3)), 4, 3)


@pytest.mark.parametrize("name", T.TRAJECTORY_NAMES)
def test_predefined_trajectories_are_valid(name):
  cams = np.asarray(T.make_trajectory(name, 7, 480, 704, fov_degrees=60.0), np.float64)
  assert cams.shape == (7, 11) and np.all(np.isfinite(cams))
  np.testing.assert_allclose(np.linalg.norm(cams[:, :4], axis=-1), 1.0, atol=2e-6)
  np.testing.assert_allclose(cams[0, :7], [1, 0, 0, 0, 0, 0, 0], atol=2e-6)
  focal = 0.5 * 480 / math.tan(math.radians(30))
  np.testing.assert_allclose(cams[:, 7:], np.tile([focal / 704, focal / 480, 0.5, 0.5], (7, 1)),
                             rtol=1e-6)
  extent = np.linalg.norm(cams[:, 4:7], axis=-1).max()
  assert extent < 10 and (name == "pan" or extent > 0.5)
  # Consecutive views differ (the trajectory moves) but not wildly.
  moves = np.linalg.norm(np.diff(cams[:, 4:7], axis=0), axis=-1)
  turns = 2 * np.arccos(np.clip(np.abs(np.sum(cams[1:, :4] * cams[:-1, :4], -1)), 0, 1))
  assert np.all(moves + turns > 1e-3)
  assert np.all(moves < 2.0) and np.all(turns < np.pi / 3)


def test_orbit_and_arc_look_at_their_centre_and_dolly_moves_forward():
  for name in ("orbit", "arc"):
    cams = T.make_trajectory(name, 6, 480, 704, scale=3.0)
    c2w = np.asarray(jax.jit(C.cameras_to_c2w)(cams), np.float64)
    forward = -c2w[:, :3, 2]
    to_centre = np.array([0, 0, -3.0]) - c2w[:, :3, 3]
    np.testing.assert_allclose(forward, to_centre / np.linalg.norm(to_centre, axis=-1)[:, None],
                               atol=2e-6)
  dolly = np.asarray(T.make_trajectory("dolly", 3, 480, 704, scale=2.0))
  np.testing.assert_allclose(dolly[:, 4:7], [[0, 0, 0], [0, 0, -1], [0, 0, -2]], atol=1e-6)
  pan = np.asarray(T.make_trajectory("pan", 2, 480, 704, sweep_degrees=40.0))
  np.testing.assert_allclose(pan[1, :4], axis_angle_quat((0, 1, 0), math.radians(40)), atol=2e-6)


def test_bad_trajectory_arguments():
  with pytest.raises(ValueError, match="name must be one of"):
    T.make_trajectory("spiral", 4, 480, 704)
  with pytest.raises(ValueError, match="fov_degrees must be in"):
    T.make_trajectory("orbit", 4, 480, 704, fov_degrees=180.0)
