"""From a request to the model's camera inputs, in REF order; the examples through normalisation."""
import os

import jax
import numpy as np
import pytest

from flashworld_jax.geometry import cameras as C, rays as R
from flashworld_jax.io.prepare import prepare_cameras
from flashworld_jax.io.request import load_request
from request_helpers import EXAMPLE_NAMES, camera


def test_intrinsics_follow_the_crop(request_dict, small_image):
  # 50×40 source onto 64×32: s = 64/50 = 1.28, window 50×25 at offset (0, 7).
  req = load_request(request_dict)
  image, cams = prepare_cameras(req)
  assert image.shape == (32, 64, 3) and image.dtype == np.float32
  assert -1 <= image.min() and image.max() <= 1
  assert cams.shape == (4, 11) and cams.dtype == np.float32
  s, ox, oy = 64 / 50, 0, 7
  knot = np.float32([1, 0, 0, 0, 0, 0, 0, 60 * s / 64, 60 * s / 32, (32 - ox) * s / 64,
                     (16 - oy) * s / 32])
  np.testing.assert_allclose(cams[0], knot, rtol=1e-6)  # resampling keeps the first knot


def test_without_image_intrinsics_are_target_pixels(request_dict):
  data = {**request_dict, "image_prompt": None, "resolution": [3, 32, 64]}
  image, cams = prepare_cameras(load_request(data))
  assert image is None
  expected = np.float32([[*c["quaternion"], *c["position"], 60 / 64, 60 / 32, 32 / 64, 16 / 32]
                         for c in data["cameras"]])
  np.testing.assert_array_equal(cams, expected)  # n equals the camera count: no resampling


def test_resampling_and_single_camera(request_dict):
  data = {**request_dict, "image_prompt": None, "resolution": [5, 32, 64]}
  _, cams = prepare_cameras(load_request(data))
  assert cams.shape == (5, 11)
  np.testing.assert_allclose(cams[2, 4:7], data["cameras"][1]["position"], atol=1e-7)
  data["cameras"] = [camera(1)]
  _, cams = prepare_cameras(load_request(data))
  np.testing.assert_array_equal(cams, np.repeat(cams[:1], 5, axis=0))


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_examples_prepare_and_normalise(examples_dir, name):
  req = load_request(os.path.join(examples_dir, name + ".json"))
  image, cams = prepare_cameras(req)
  assert image.shape == (480, 704, 3)
  # The example images are already 704×480: the crop is the identity, so are the intrinsics.
  np.testing.assert_allclose(image, req.image / 255.0 * 2 - 1, atol=1e-6)
  first = req.cameras[0]
  np.testing.assert_allclose(cams[0, 7:], [first.fx / 704, first.fy / 480, first.cx / 704,
                                           first.cy / 480], rtol=1e-6)
  cams_n, _, s_norm = jax.jit(C.normalize_cameras)(cams)
  np.testing.assert_allclose(cams_n[0, :7], [1, 0, 0, 0, 0, 0, 0], atol=1e-6)
  assert float(np.linalg.norm(cams_n[:, 4:7], axis=-1).max()) < 1 and float(s_norm) > 0.01
  ray = np.asarray(jax.jit(R.raymap, static_argnums=(1, 2))(cams_n, 480 // 16, 704 // 16))
  assert ray.shape == (24, 6, 30, 44)
  np.testing.assert_allclose(np.linalg.norm(ray[:, :3], axis=1), 1.0, atol=2e-6)
