"""Pose conventions against float64 numpy derivations of formats.md §7.5, and the pose checks."""
import numpy as np
import pytest

from flashworld_jax.data import camera_conventions as conventions
from flashworld_jax.data.clips import DataError

TOL = 1e-12
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def quaternion_rotation(q):
  w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
  return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                   [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                   [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def random_cameras(n, seed=0):
  rng = np.random.default_rng(seed)
  quat = rng.normal(size=(n, 4))
  quat /= np.linalg.norm(quat, axis=1, keepdims=True)
  quat *= np.where(quat[:, :1] < 0, -1.0, 1.0)
  intrinsics = rng.uniform([0.5, 0.7, 0.4, 0.4], [1.2, 1.6, 0.6, 0.6], size=(n, 4))
  return np.concatenate([quat, rng.normal(size=(n, 3)) * 2, intrinsics], axis=1)


def opengl_c2w(cams):
  c2w = np.tile(np.eye(4), (len(cams), 1, 1))
  c2w[:, :3, :3] = [quaternion_rotation(q) for q in cams[:, :4]]
  c2w[:, :3, 3] = cams[:, 4:7]
  return c2w


def opencv_w2c(cams):
  return np.linalg.inv(opengl_c2w(cams) @ GL_TO_CV)


def names(n):
  return [f"img{i}.png" for i in range(n)]


@pytest.mark.parametrize("n", [1, 6, 8, 9])  # padded frame counts 8, 8, 8, 16
def test_writing_directions_match_numpy(n):
  cams = random_cameras(n)
  np.testing.assert_allclose(conventions.cameras_to_opengl_c2w(cams), opengl_c2w(cams), atol=TOL)
  rotation, translation = conventions.cameras_to_opencv_w2c(cams)
  np.testing.assert_allclose(rotation, opencv_w2c(cams)[:, :3, :3], atol=TOL)
  np.testing.assert_allclose(translation, opencv_w2c(cams)[:, :3, 3], atol=TOL)
  qvec, tvec = conventions.cameras_to_colmap(cams)
  assert np.all(qvec[:, 0] >= 0)
  np.testing.assert_allclose([quaternion_rotation(q) for q in qvec], rotation, atol=TOL)
  np.testing.assert_allclose(np.linalg.norm(qvec, axis=1), 1.0, atol=TOL)
  np.testing.assert_allclose(tvec, translation, atol=TOL)


@pytest.mark.parametrize("n", [1, 6, 9])
def test_reading_directions_match_numpy(n):
  cams = random_cameras(n)
  intrinsics = cams[:, 7:]
  got = conventions.opengl_c2w_to_cameras(opengl_c2w(cams), intrinsics, "t.json", names(n))
  np.testing.assert_allclose(got, cams, atol=TOL)
  w2c = opencv_w2c(cams)
  got = conventions.opencv_w2c_to_cameras(w2c[:, :3, :3], w2c[:, :3, 3], intrinsics, "c.txt",
                                          names(n))
  np.testing.assert_allclose(got, cams, atol=TOL)
  qvec, tvec = conventions.cameras_to_colmap(cams)
  got = conventions.colmap_to_cameras(qvec, tvec, intrinsics, "images.txt", names(n))
  np.testing.assert_allclose(got, cams, atol=TOL)


def test_identity_camera_in_each_convention():
  """An OpenGL camera at the origin looks down −z; in OpenCV axes it looks down its own +z."""
  cams = np.array([[1.0, 0, 0, 0, 0, 0, 0, 1.0, 1.0, 0.5, 0.5]])
  rotation, translation = conventions.cameras_to_opencv_w2c(cams)
  np.testing.assert_allclose(rotation[0], np.diag([1.0, -1.0, -1.0]), atol=TOL)
  np.testing.assert_allclose(rotation[0] @ [0.0, 0.0, -1.0], [0.0, 0.0, 1.0], atol=TOL)
  qvec, _ = conventions.cameras_to_colmap(cams)
  np.testing.assert_allclose(np.abs(qvec[0]), [0.0, 1.0, 0.0, 0.0], atol=TOL)


def corrupted_c2w(edit):
  c2w = opengl_c2w(random_cameras(4))
  edit(c2w)
  return c2w


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m[2, 1].__setitem__(3, np.inf), "frame 2 (img2.png): the pose has non-finite"),
    (lambda m: m[1, 0].__setitem__(0, np.nan), "frame 1 (img1.png): the pose has non-finite"),
    (lambda m: m[3, :3].__setitem__(slice(None), 0.0), "frame 3 (img3.png): the rotation block"),
    (lambda m: m[0, :3, :3].__imul__(1.01), "max|RᵀR − I| = 0.0201"),
    (lambda m: m[1, :3, 0].__imul__(-1.0), "det = -1"),
    (lambda m: m[2, 3].__setitem__(0, 0.5), "frame 2 (img2.png): the bottom row of the 4×4 pose"),
], ids=["inf", "nan", "singular", "scaled", "reflection", "bottom row"])
def test_bad_poses_name_the_file_and_frame(edit, fragment):
  with pytest.raises(DataError) as error:
    conventions.opengl_c2w_to_cameras(corrupted_c2w(edit), random_cameras(4)[:, 7:], "t.json",
                                      names(4))
  assert error.value.path == "t.json" and error.value.reason == "invalid pose"
  assert fragment in error.value.problem


@pytest.mark.parametrize("scale, fragment", [
    (2.0, "frame 1 (img1.png): quaternion"), (0.0, "has norm 0"), (np.nan, "has norm nan")])
def test_non_unit_quaternions(scale, fragment):
  qvec, tvec = conventions.cameras_to_colmap(random_cameras(3))
  qvec[1] *= scale
  with pytest.raises(DataError, match="expected a unit quaternion") as error:
    conventions.colmap_to_cameras(qvec, tvec, random_cameras(3)[:, 7:], "images.bin", names(3))
  assert fragment in error.value.problem


@pytest.mark.parametrize("column, value", [(0, 0.0), (1, -0.5), (2, np.nan)])
def test_bad_intrinsics(column, value):
  cams = random_cameras(3)
  w2c = opencv_w2c(cams)
  intrinsics = cams[:, 7:].copy()
  intrinsics[2, column] = value
  with pytest.raises(DataError, match="frame 2 .img2.png.: normalised intrinsics .* expected "
                     "finite values with positive focal lengths") as error:
    conventions.opencv_w2c_to_cameras(w2c[:, :3, :3], w2c[:, :3, 3], intrinsics, "c.txt", names(3))
  assert error.value.reason == "invalid intrinsics"
