"""Normalised → world frame: positions, covariances, quaternions, SH colours, OpenCV flip (float64)."""
import numpy as np
import pytest

from flashworld_jax.export import world_frame

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)


def sh_colour(sh: np.ndarray, d: np.ndarray) -> np.ndarray:
  """Oracle: degree-2 3DGS SH colour of coefficient-major sh [N, 27] at unit directions d [N, 3]."""
  c = sh.reshape(-1, 9, 3)
  x, y, z = d[:, :1], d[:, 1:2], d[:, 2:]
  return (SH_C0 * c[:, 0] - SH_C1 * y * c[:, 1] + SH_C1 * z * c[:, 2] - SH_C1 * x * c[:, 3]
          + SH_C2[0] * x * y * c[:, 4] + SH_C2[1] * y * z * c[:, 5]
          + SH_C2[2] * (2 * z * z - x * x - y * y) * c[:, 6] + SH_C2[3] * x * z * c[:, 7]
          + SH_C2[4] * (x * x - y * y) * c[:, 8])


def rotation_matrix(q):
  w, x, y, z = q / np.linalg.norm(q)
  return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                   [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                   [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def covariance(g: np.ndarray) -> np.ndarray:
  r = np.stack([rotation_matrix(q) for q in g[:, 7:11]])
  s2 = g[:, 4:7] ** 2
  return np.einsum("nij,nj,nkj->nik", r, s2, r)


@pytest.fixture
def ref_c2w():
  c2w = np.eye(4)
  c2w[:3, :3] = rotation_matrix(np.array([0.3, -0.5, 0.7, 0.2]))
  c2w[:3, 3] = [1.5, -2.0, 0.25]
  return c2w


def test_positions_scales_and_covariances(make_gaussians, ref_c2w):
  g = make_gaussians(64, dtype=np.float64)
  s_norm = 2.75
  out = world_frame.gaussians_to_world(g, ref_c2w, s_norm)
  assert out.dtype == np.float64 and out.shape == g.shape
  hom = np.concatenate([s_norm * g[:, :3], np.ones((64, 1))], axis=1)
  np.testing.assert_allclose(out[:, :3], (hom @ ref_c2w.T)[:, :3], rtol=0, atol=1e-12)
  np.testing.assert_allclose(out[:, 4:7], s_norm * g[:, 4:7], rtol=1e-15)
  np.testing.assert_array_equal(out[:, 3], g[:, 3])
  np.testing.assert_array_equal(out[:, 11:14], g[:, 11:14])     # DC is view-independent
  r = ref_c2w[:3, :3]
  expected_cov = s_norm ** 2 * np.einsum("ij,njk,lk->nil", r, covariance(g), r)
  np.testing.assert_allclose(covariance(out), expected_cov, rtol=0, atol=1e-11)
  # The rotation itself (not only the covariance): R(q_w) = R_ref·R(q).
  for q, q_w in zip(g[:8, 7:11], out[:8, 7:11]):
    np.testing.assert_allclose(rotation_matrix(q_w), r @ rotation_matrix(q), rtol=0, atol=1e-12)


def test_sh_colour_seen_from_a_camera_is_unchanged(make_gaussians, ref_c2w):
  g = make_gaussians(200, dtype=np.float64, sh_range=1.0)
  s_norm = 0.8
  out = world_frame.gaussians_to_world(g, ref_c2w, s_norm)
  rng = np.random.default_rng(3)
  camera_n = rng.normal(size=(200, 3)) * 5                     # camera centres, normalised frame
  camera_w = s_norm * camera_n @ ref_c2w[:3, :3].T + ref_c2w[:3, 3]
  d_n = g[:, :3] - camera_n
  d_w = out[:, :3] - camera_w
  d_n /= np.linalg.norm(d_n, axis=1, keepdims=True)
  d_w /= np.linalg.norm(d_w, axis=1, keepdims=True)
  np.testing.assert_allclose(sh_colour(out[:, 11:], d_w), sh_colour(g[:, 11:], d_n),
                             rtol=0, atol=1e-12)
  # Not vacuous: without rotating the SH bands the colours differ.
  assert np.abs(sh_colour(g[:, 11:], d_w) - sh_colour(g[:, 11:], d_n)).max() > 0.1


def test_float32_input_stays_float32(make_gaussians, ref_c2w):
  g = make_gaussians(16)
  out = world_frame.gaussians_to_world(g, ref_c2w, 1.3)
  ref = world_frame.gaussians_to_world(g.astype(np.float64), ref_c2w, 1.3)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)


def test_quaternion_from_matrix_all_branches():
  rng = np.random.default_rng(1)
  quats = np.concatenate([rng.normal(size=(50, 4)),
                          [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1e-9, 1, 1, 0]]])
  for q in quats:
    r = rotation_matrix(q)
    q_back = world_frame.quaternion_from_matrix(r)
    assert q_back[0] >= 0
    np.testing.assert_allclose(rotation_matrix(q_back), r, rtol=0, atol=1e-12)


def test_opencv_world_matches_sign_rules(make_gaussians):
  """formats.md §3/§4: (x, −y, −z); q ← (0, 1, 0, 0) ⊗ q; SH 1..8 × (−1, −1, 1, −1, 1, 1, −1, 1)."""
  g = make_gaussians(32, dtype=np.float64)
  out = world_frame.to_opencv_world(g)
  np.testing.assert_allclose(out[:, :3], g[:, :3] * [1, -1, -1], rtol=0, atol=1e-12)
  w, x, y, z = g[:, 7:11].T
  np.testing.assert_allclose(out[:, 7:11], np.stack([-x, w, -z, y], axis=1), rtol=0, atol=1e-12)
  signs = np.repeat([1, -1, -1, 1, -1, 1, 1, -1, 1], 3)
  np.testing.assert_allclose(out[:, 11:], g[:, 11:] * signs, rtol=0, atol=1e-12)
  # Its own inverse (q and −q are the same rotation).
  back = world_frame.to_opencv_world(out)
  np.testing.assert_allclose(back[:, :7], g[:, :7], rtol=0, atol=1e-12)
  np.testing.assert_allclose(back[:, 11:], g[:, 11:], rtol=0, atol=1e-12)
  np.testing.assert_allclose(np.abs(np.sum(back[:, 7:11] * g[:, 7:11], axis=1)), 1, atol=1e-12)


def test_degenerate_trajectory_warns(make_gaussians, monkeypatch):
  warnings = []
  monkeypatch.setattr(world_frame.logging, "warning", lambda *a: warnings.append(a))
  world_frame.gaussians_to_world(make_gaussians(4), np.eye(4), 1.0)
  assert not warnings
  out = world_frame.gaussians_to_world(make_gaussians(4), np.eye(4), 0.01)
  assert len(warnings) == 1 and "degenerate" in warnings[0][0]
  np.testing.assert_allclose(out[:, :3], 0.01 * make_gaussians(4)[:, :3], rtol=1e-6)


@pytest.mark.parametrize("args, match", [
    (dict(gaussians=np.zeros((3, 37))), "gaussians"),
    (dict(ref_c2w=np.eye(3)), "ref_c2w"),
    (dict(ref_c2w=np.diag([1.0, 1.0, -1.0, 1.0])), "rotation"),
    (dict(ref_c2w=np.diag([2.0, 1.0, 1.0, 1.0])), "rotation"),
    (dict(s_norm=0.0), "s_norm"),
    (dict(s_norm=float("nan")), "s_norm"),
])
def test_invalid_arguments(args, match):
  kwargs = dict(gaussians=np.zeros((3, 38)), ref_c2w=np.eye(4), s_norm=1.0) | args
  with pytest.raises(ValueError, match=match):
    world_frame.gaussians_to_world(**kwargs)
