"""Centre crop and intrinsics (REF, spec §7.6)."""
import numpy as np
import pytest

from flashworld_jax.geometry import crop


def test_crop_box_matches_the_rule():
  # Wider source: the height fits (s = H/h), the width is cropped.
  box = crop.center_crop_box(1000, 500, 704, 480)
  assert box == crop.CropBox(0.96, 133, 0, 733, 500)
  # Taller source: the width fits (s = W/w).
  box = crop.center_crop_box(704, 1000, 704, 480)
  assert box == crop.CropBox(1.0, 0, 260, 704, 480)
  # Same size: nothing changes; ties pick W/w.
  assert crop.center_crop_box(704, 480, 704, 480) == crop.CropBox(1.0, 0, 0, 704, 480)
  assert crop.center_crop_box(352, 240, 704, 480) == crop.CropBox(2.0, 0, 0, 352, 240)


def test_principal_point_follows_the_image_content():
  # A horizontal ramp: pixel value = source column. After crop + resize, the target column whose
  # content is the source principal point must be where crop_intrinsics puts c_x.
  src_w, src_h, dst_w, dst_h = 240, 64, 64, 32
  columns = np.arange(src_w, dtype=np.float64)
  ramp = np.broadcast_to((columns * 255 / (src_w - 1))[None, :, None], (src_h, src_w, 3))
  image = np.round(ramp).astype(np.uint8)
  box = crop.center_crop_box(src_w, src_h, dst_w, dst_h)
  cx_src = 131.0  # pixel-edge coordinate in the source
  _, _, cx, _ = crop.crop_intrinsics(100.0, 100.0, cx_src, 32.0, box)
  out = crop.center_crop_image(image, dst_h, dst_w)
  # Content of the target at edge coordinate cx, read back as a source edge coordinate.
  values = (out[dst_h // 2, :, 0] + 1) / 2 * (src_w - 1)  # source column index at pixel centres
  read_back = np.interp(cx - 0.5, np.arange(dst_w), values) + 0.5
  assert abs(read_back - cx_src) < 1.0  # one source pixel (REF's integer offsets, 8-bit ramp)
  assert (box.scale, box.offset_x) == (0.5, 56)
  assert cx == pytest.approx((cx_src - 56) * 0.5)


def test_crop_intrinsics_formula():
  box = crop.CropBox(0.96, 133, 0, 733, 500)
  assert crop.crop_intrinsics(500.0, 510.0, 500.0, 250.0, box) == pytest.approx(
      (480.0, 489.6, (500 - 133) * 0.96, 240.0))


def test_center_crop_image_output():
  image = np.full((100, 300, 3), (0, 128, 255), np.uint8)
  out = crop.center_crop_image(image, 32, 64)
  assert out.shape == (32, 64, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, np.broadcast_to([-1, 128 / 255 * 2 - 1, 1], out.shape), atol=1e-6)
  with pytest.raises(ValueError, match=r"image_uint8 must be a uint8 array \[h, w, 3\]"):
    crop.center_crop_image(np.zeros((4, 4, 4), np.uint8), 32, 64)
  with pytest.raises(ValueError, match="dst_w must be a positive int, got 0"):
    crop.center_crop_box(10, 10, 0, 10)
