"""Camera vectors, rigid transforms and normalisation vs float64 numpy derivations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flashworld_jax.geometry import cameras as C
from np_geometry import c2w as np_c2w, random_cameras

cameras_to_c2w = jax.jit(C.cameras_to_c2w)
c2w_to_cameras = jax.jit(C.c2w_to_cameras)
invert_rigid = jax.jit(C.invert_rigid)
world_to_camera_opencv = jax.jit(C.world_to_camera_opencv)
normalize_cameras = jax.jit(C.normalize_cameras)
TOL = 1e-5  # float32 on values of a few units


@pytest.fixture
def cams():
  return random_cameras(np.random.default_rng(0), 6)


def test_c2w_matches_numpy(cams):
  out = cameras_to_c2w(np.float32(cams))
  np.testing.assert_allclose(out, np.stack([np_c2w(c) for c in cams]), atol=TOL)


def test_c2w_to_cameras_round_trip(cams):
  m = cameras_to_c2w(np.float32(cams))
  back = c2w_to_cameras(m, np.float32(cams[:, 7:]))
  np.testing.assert_allclose(cameras_to_c2w(back), m, atol=TOL)
  np.testing.assert_allclose(back[:, 4:], cams[:, 4:], atol=TOL)
  np.testing.assert_allclose(np.linalg.norm(back[:, :4], axis=-1), 1.0, atol=2e-6)
  assert np.all(np.asarray(back[:, 0]) >= 0)


def test_invert_rigid_vs_numpy_inverse(cams):
  m = cameras_to_c2w(np.float32(cams))
  np.testing.assert_allclose(invert_rigid(m), np.linalg.inv(np.asarray(m, np.float64)), atol=TOL)
  np.testing.assert_allclose(invert_rigid(m) @ m, np.broadcast_to(np.eye(4), m.shape), atol=TOL)


def test_opengl_opencv_flip_is_an_involution_and_views_look_down_plus_z(cams):
  m = cameras_to_c2w(np.float32(cams))
  np.testing.assert_array_equal(C.opencv_to_opengl(C.opengl_to_opencv(m)), m)
  # A point 2 units in front of an OpenGL camera (along its −z) sits at OpenCV camera z = +2.
  viewmats = world_to_camera_opencv(np.float32(cams))
  ahead = np.stack([np_c2w(c)[:3, :3] @ [0.3, -0.2, -2.0] + c[4:7] for c in cams])
  in_camera = np.einsum("nij,nj->ni", viewmats[:, :3, :3], ahead) + viewmats[:, :3, 3]
  np.testing.assert_allclose(in_camera, np.broadcast_to([0.3, 0.2, 2.0], in_camera.shape), atol=TOL)


def test_intrinsics_matrix_in_pixels(cams):
  k = np.asarray(C.intrinsics_matrix(np.float32(cams), 48, 64), np.float64)
  expected = np.zeros((len(cams), 3, 3))
  expected[:, 0, 0], expected[:, 0, 2] = cams[:, 7] * 64, cams[:, 9] * 64
  expected[:, 1, 1], expected[:, 1, 2] = cams[:, 8] * 48, cams[:, 10] * 48
  expected[:, 2, 2] = 1
  np.testing.assert_allclose(k, expected, rtol=1e-6)


def test_normalize_cameras_vs_numpy_derivation(cams):
  cams_n, ref_c2w, s_norm = normalize_cameras(np.float32(cams))
  ref = np_c2w(cams[0])
  relative = np.stack([np.linalg.inv(ref) @ np_c2w(c) for c in cams])
  t_norm = np.linalg.norm(relative[:, :3, 3], axis=-1).max()
  np.testing.assert_allclose(s_norm, t_norm + 0.01, rtol=1e-6)
  np.testing.assert_allclose(ref_c2w, ref, atol=TOL)
  np.testing.assert_allclose(cams_n[:, 4:7], relative[:, :3, 3] / (t_norm + 0.01), atol=TOL)
  np.testing.assert_allclose(cameras_to_c2w(cams_n)[:, :3, :3], relative[:, :3, :3], atol=TOL)
  np.testing.assert_array_equal(cams_n[:, 7:], np.float32(cams[:, 7:]))
  # View 0 is the identity pose; every camera lies inside the unit ball; quaternions are unit, w ≥ 0.
  np.testing.assert_allclose(cams_n[0, :7], [1, 0, 0, 0, 0, 0, 0], atol=2e-6)
  assert float(jnp.linalg.norm(cams_n[:, 4:7], axis=-1).max()) < 1
  np.testing.assert_allclose(np.linalg.norm(cams_n[:, :4], axis=-1), 1.0, atol=2e-6)
  assert np.all(np.asarray(cams_n[:, 0]) >= 0)


def test_denormalize_undoes_normalize(cams):
  cams_n, ref_c2w, s_norm = normalize_cameras(np.float32(cams))
  world = C.denormalize_c2w(cameras_to_c2w(cams_n), ref_c2w, s_norm)
  np.testing.assert_allclose(world, cameras_to_c2w(np.float32(cams)), atol=2e-5)
  centres = C.denormalize_points(cams_n[:, 4:7], ref_c2w, s_norm)
  np.testing.assert_allclose(centres, cams[:, 4:7], atol=2e-5)


def test_normalize_with_a_given_reference_and_batches(cams):
  cams_n, ref_c2w, s_norm = normalize_cameras(np.float32(cams))
  # Other cameras (e.g. the video trajectory) normalised into the same frame.
  again, _, _ = normalize_cameras(np.float32(cams[2:]), ref_c2w, s_norm)
  np.testing.assert_allclose(again, cams_n[2:], atol=TOL)
  batched, refs, norms = normalize_cameras(np.float32(np.stack([cams, cams[::-1]])))
  assert batched.shape == (2, 6, 11) and refs.shape == (2, 4, 4) and norms.shape == (2,)
  np.testing.assert_allclose(batched[0], cams_n, atol=TOL)
  np.testing.assert_allclose(batched[1], normalize_cameras(np.float32(cams[::-1]))[0], atol=TOL)
  with pytest.raises(ValueError, match="ref_c2w and s_norm must be given together"):
    C.normalize_cameras(np.float32(cams), ref_c2w)


def test_normalize_degenerate_trajectory_uses_the_epsilon(cams):
  same_centre = cams.copy()
  same_centre[:, 4:7] = cams[0, 4:7]
  cams_n, _, s_norm = normalize_cameras(np.float32(same_centre))
  np.testing.assert_allclose(s_norm, 0.01, rtol=1e-6)
  np.testing.assert_allclose(cams_n[:, 4:7], 0.0, atol=1e-3)


def test_bad_shapes_raise_clear_errors():
  with pytest.raises(ValueError, match=r"cams must have shape \[\.\.\., 11\], got \(4, 7\)"):
    C.cameras_to_c2w(np.zeros((4, 7)))
  with pytest.raises(ValueError, match="c2w must have shape"):
    C.c2w_to_cameras(np.zeros((4, 3)), np.zeros(4))
