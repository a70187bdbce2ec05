"""MP4 export of rendered frames (formats.md §6): H.264 through imageio-ffmpeg, written atomically."""
from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import imageio_ffmpeg
import numpy as np

from flashworld_jax.io.atomic import atomic_path

QUALITY = 8           # imageio's 0-10 scale (REF); libx264 CRF = int((1 − 8/10)·51) = 10
DEFAULT_FPS = 15


@contextlib.contextmanager
def _ffmpeg_subprocess() -> Iterator[None]:
  # ffmpeg is exec'd right after the fork, so JAX's fork-with-threads warning does not apply.
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)
    yield


def frames_from_renders(rgb, *, channel_axis: int = -1) -> np.ndarray:
  """Renders in [−1, 1] → uint8 frames ⌊(clamp(rgb, −1, 1) + 1)/2·255⌋ (REF truncates), channels last.

  Args:
    rgb: [..., H, W, 3] (or channels on `channel_axis`, e.g. 1 for [T, 3, H, W]) float renders.
    channel_axis: axis holding the 3 colour channels; it is moved to the end.
  """
  x = np.moveaxis(np.asarray(rgb, dtype=np.float32), channel_axis, -1)
  if x.shape[-1] != 3:
    raise ValueError(f"rgb: shape {np.shape(rgb)} has {x.shape[-1]} entries on channel_axis "
                     f"{channel_axis}, expected 3")
  return np.floor((np.clip(x, -1.0, 1.0) + 1.0) / 2.0 * 255.0).astype(np.uint8)


def write_mp4(path: str, frames: np.ndarray, fps: float = DEFAULT_FPS) -> None:
  """Writes uint8 frames [T, H, W, 3] as an H.264 yuv420p MP4 (quality 8, no resizing), atomically."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
    raise ValueError(f"frames: got {frames.dtype} {frames.shape}, expected uint8 [T ≥ 1, H, W, 3]")
  _, height, width, _ = frames.shape
  if height % 2 or width % 2:
    raise ValueError(f"frames: size {height}×{width}; yuv420p H.264 needs an even height and width")
  if not np.isfinite(fps) or fps <= 0:
    raise ValueError(f"fps: got {fps!r}, expected a positive number")
  with atomic_path(path) as tmp:
    # The temporary name has no .mp4 suffix, so the container is named explicitly.
    writer = imageio_ffmpeg.write_frames(
        tmp, (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=QUALITY,
        macro_block_size=1, output_params=["-f", "mp4"])
    with _ffmpeg_subprocess():
      writer.send(None)   # starts ffmpeg
    try:
      for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    finally:
      writer.close()
    # write_frames does not report ffmpeg's exit status; an empty file means it failed.
    if os.path.getsize(tmp) == 0:
      raise OSError(f"ffmpeg produced no output for {path!r}")


def count_frames(path: str) -> int:
  """Number of video frames in `path` (decodes the stream; exact)."""
  with _ffmpeg_subprocess():
    return imageio_ffmpeg.count_frames_and_secs(path)[0]
