"""Centre-crop of the conditioning image and the matching intrinsics change (REF, spec §7.6).

Host-side (Python/numpy/PIL): it runs once per request, before anything is traced.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image


class CropBox(NamedTuple):
  """The source window and the source-to-target pixel scale of a centre crop."""
  scale: float  # s: target pixels per source pixel
  offset_x: int  # left column of the window in the source
  offset_y: int  # top row of the window in the source
  width: int  # window size in source pixels
  height: int


def center_crop_box(src_w: int, src_h: int, dst_w: int, dst_h: int) -> CropBox:
  """The largest centred window of the source with the target's aspect ratio, as REF computes it.

  s = H/h if H/h > W/w else W/w; window ⌊W/s⌋ × ⌊H/s⌋ at offsets ⌊(w − new_w)/2⌋, ⌊(h − new_h)/2⌋.
  The integer floors and the use of s (rather than W/new_w) are kept for parity (error < 0.2 %).
  """
  for label, value in (("src_w", src_w), ("src_h", src_h), ("dst_w", dst_w), ("dst_h", dst_h)):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{label} must be a positive int, got {value!r}")
  scale = dst_h / src_h if dst_h / src_h > dst_w / src_w else dst_w / src_w
  new_h, new_w = int(dst_h / scale), int(dst_w / scale)
  return CropBox(scale, (src_w - new_w) // 2, (src_h - new_h) // 2, new_w, new_h)


def center_crop_image(image_uint8: np.ndarray, dst_h: int, dst_w: int) -> np.ndarray:
  """Centre-crops an RGB uint8 image [h, w, 3], resizes it bicubically (PIL) to dst_h × dst_w and maps
  it to float32 [dst_h, dst_w, 3] in [−1, 1]."""
  image_uint8 = np.asarray(image_uint8)
  if image_uint8.dtype != np.uint8 or image_uint8.ndim != 3 or image_uint8.shape[-1] != 3:
    raise ValueError("image_uint8 must be a uint8 array [h, w, 3], "
                     f"got {image_uint8.dtype} {tuple(image_uint8.shape)}")
  src_h, src_w = image_uint8.shape[:2]
  box = center_crop_box(src_w, src_h, dst_w, dst_h)
  window = (box.offset_x, box.offset_y, box.offset_x + box.width, box.offset_y + box.height)
  resized = Image.fromarray(image_uint8).crop(window).resize((dst_w, dst_h), Image.Resampling.BICUBIC)
  return np.asarray(resized, np.float32) / 255.0 * 2.0 - 1.0


def crop_intrinsics(fx: float, fy: float, cx: float, cy: float,
                    box: CropBox) -> tuple[float, float, float, float]:
  """Pixel intrinsics of the source image → pixel intrinsics of the cropped and resized target.

  Also works elementwise on numpy arrays.
  """
  return (fx * box.scale, fy * box.scale, (cx - box.offset_x) * box.scale,
          (cy - box.offset_y) * box.scale)
