"""MP4 export: pixel conversion, frame count, size, fps and codec read back with imageio."""
import os

import imageio.v3 as iio
import numpy as np
import pytest

from flashworld_jax.export import video


def test_frames_from_renders_truncates():
  rgb = np.array([-1.5, -1.0, 0.0, 0.5, 0.999, 1.0, 2.0], np.float32)
  rgb = np.broadcast_to(rgb[:, None, None, None], (7, 1, 1, 3))
  frames = video.frames_from_renders(rgb)
  assert frames.dtype == np.uint8
  # ⌊(x + 1)/2·255⌋: 0 → 127 (not 128), 0.5 → 191, 0.999 → 254.
  np.testing.assert_array_equal(frames[:, 0, 0, 0], [0, 0, 127, 191, 254, 255, 255])
  chw = np.random.default_rng(0).uniform(-1, 1, (2, 3, 4, 6)).astype(np.float32)
  expected = np.floor((chw.astype(np.float64) + 1) / 2 * 255).astype(np.uint8).transpose(0, 2, 3, 1)
  np.testing.assert_array_equal(video.frames_from_renders(chw, channel_axis=1), expected)
  with pytest.raises(ValueError, match="rgb"):
    video.frames_from_renders(chw)


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")   # imageio's ffmpeg reader
def test_write_mp4_frame_count_size_and_content(tmp_path):
  t, h, w = 11, 48, 80
  yy, xx = np.mgrid[0:h, 0:w]
  frames = np.stack([np.stack([(xx * 3 + 20 * i) % 256, yy * 5, np.full_like(xx, 128)], axis=-1)
                     for i in range(t)]).astype(np.uint8)
  path = str(tmp_path / "video.mp4")
  video.write_mp4(path, frames, fps=15)
  assert sorted(os.listdir(tmp_path)) == ["video.mp4"]            # no temporary left behind
  assert video.count_frames(path) == t
  meta = iio.immeta(path, plugin="FFMPEG")
  assert meta["codec"] == "h264" and meta["fps"] == 15 and tuple(meta["size"]) == (w, h)
  back = iio.imread(path, plugin="FFMPEG")
  assert back.shape == (t, h, w, 3)
  # Lossy yuv420p at CRF 10: smooth content comes back close.
  assert np.abs(back.astype(np.int32) - frames).mean() < 4


def test_write_mp4_rejects_bad_input(tmp_path):
  path = str(tmp_path / "v.mp4")
  with pytest.raises(ValueError, match="even"):
    video.write_mp4(path, np.zeros((2, 33, 32, 3), np.uint8))
  with pytest.raises(ValueError, match="uint8"):
    video.write_mp4(path, np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="fps"):
    video.write_mp4(path, np.zeros((2, 32, 32, 3), np.uint8), fps=0)
  assert not os.listdir(tmp_path)
