"""From a request to the model's camera inputs, in REF order; the examples through normalisation."""
import json
import os

import jax
import numpy as np
import pytest

from flashworld_jax.geometry import cameras as C, rays as R
from flashworld_jax.io.prepare import prepare_cameras, with_num_views
from flashworld_jax.io.request import load_request, request_to_dict
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


def _same_camera(a, b):
  """Two camera vectors within 1e-6, the quaternion up to its sign (the same rotation)."""
  np.testing.assert_allclose(a[:4] * np.sign(a[:4] @ b[:4]), b[:4], atol=1e-6)
  np.testing.assert_allclose(a[4:], b[4:], atol=1e-6)


@pytest.mark.parametrize("num_views,image_index", [(8, 3), (12, 5)])
def test_fewer_views_keep_the_image_on_its_camera(examples_dir, num_views, image_index):
  with open(os.path.join(examples_dir, "paved-plaza.json")) as f:
    data = {**json.load(f), "image_index": 10}
  req = load_request(data)
  _, own = prepare_cameras(req)
  fewer = with_num_views(req, num_views)
  assert (fewer.num_views, fewer.image_index, len(fewer.cameras)) == (num_views, image_index,
                                                                      num_views)
  _, cams = prepare_cameras(fewer)
  assert cams.shape == (num_views, 11)
  _same_camera(cams[image_index], own[10])
  _same_camera(cams[0], own[0])
  _same_camera(cams[-1], own[-1])
  # Written back, the request describes the run: n views, their cameras, the image's new index.
  saved = load_request(request_to_dict(fewer))
  assert saved.image_index == image_index and saved.num_views == num_views
  np.testing.assert_array_equal(prepare_cameras(saved)[1], cams)


def test_view_override_goes_through_the_requests_own_views(request_dict):
  # 3 cameras for 4 views: the image's camera (view 1) is itself resampled, and stays so.
  req = load_request(request_dict)
  _, own = prepare_cameras(req)
  more = with_num_views(req, 7)
  _, cams = prepare_cameras(more)
  assert more.image_index == 2 and cams.shape == (7, 11)
  _same_camera(cams[2], own[1])


def test_view_override_without_image_only_changes_n(request_dict):
  req = load_request({**request_dict, "image_prompt": None})
  more = with_num_views(req, 6)
  assert more.cameras == req.cameras and more.image_index == req.image_index
  assert prepare_cameras(more)[1].shape == (6, 11)
  with pytest.raises(ValueError, match=r"num_views must be in \[1, 1024\], got 0"):
    with_num_views(req, 0)
