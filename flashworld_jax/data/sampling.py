"""Training samples from records: clip sampling, camera normalisation, conditioning and its dropout.

Pure functions of (record, numpy Generator), so a Grain `random_map` makes them deterministic per
element. A multi-view sample holds `num_input_views` frames in trajectory order, spaced by a random
stride, then `num_novel_views` other frames of the same clip from within the inputs' span (from the
whole clip when the span is too short). Cameras are normalised to the first input view (spec §7.2);
novel views share that frame and scale.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from flashworld_jax.data import clips as clips_lib
from flashworld_jax.geometry import cameras as cameras_lib

KIND_MULTIVIEW, KIND_OOD_IMAGE, KIND_OOD_TEXT = 0, 1, 2
NO_IMAGE = -1


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  """Static shapes and conditioning probabilities of training samples (spec §13.2 defaults)."""
  num_input_views: int
  num_novel_views: int
  height: int
  width: int
  min_frame_stride: int = 1
  max_frame_stride: int = 1
  p_image_condition: float = 0.5
  p_drop_text: float = 0.1
  p_drop_image: float = 0.1
  caption_prefix: str = "[Static] "

  def __post_init__(self):
    if self.num_input_views < 1 or self.num_novel_views < 0:
      raise ValueError(f"num_input_views ≥ 1 and num_novel_views ≥ 0 expected, got "
                       f"{self.num_input_views}, {self.num_novel_views}")
    if not 1 <= self.min_frame_stride <= self.max_frame_stride:
      raise ValueError(f"frame strides must satisfy 1 ≤ min ≤ max, got {self.min_frame_stride}, "
                       f"{self.max_frame_stride}")
    for name in ("p_image_condition", "p_drop_text", "p_drop_image"):
      if not 0.0 <= getattr(self, name) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

  @property
  def num_views(self) -> int:
    return self.num_input_views + self.num_novel_views


def choose_frames(num_frames: int, spec: SampleSpec, rng: np.random.Generator,
                  clip_id: str) -> np.ndarray:
  """Frame indices [num_views]: inputs at a random stride, then novel frames not among them."""
  if num_frames < spec.num_views:
    raise clips_lib.DataError(clip_id, f"the clip has {num_frames} frames, a sample needs "
                              f"{spec.num_views} ({spec.num_input_views} input + "
                              f"{spec.num_novel_views} novel)")
  longest = (num_frames - 1) // max(spec.num_input_views - 1, 1)
  stride = int(rng.integers(spec.min_frame_stride, max(spec.min_frame_stride,
                                                       min(spec.max_frame_stride, longest)) + 1))
  span = (spec.num_input_views - 1) * stride + 1
  start = int(rng.integers(0, num_frames - span + 1))
  inputs = start + stride * np.arange(spec.num_input_views)
  within = np.setdiff1d(np.arange(start, start + span), inputs)
  pool = within if len(within) >= spec.num_novel_views else np.setdiff1d(np.arange(num_frames),
                                                                          inputs)
  novel = np.sort(rng.choice(pool, spec.num_novel_views, replace=False))
  return np.concatenate([inputs, novel]).astype(np.int64)


def normalize(cameras: np.ndarray, num_input_views: int) -> tuple[np.ndarray, np.float32]:
  """Cameras [V, 11] in the frame of input view 0, scaled by the inputs' largest distance (§7.2).

  Runs on the host CPU device: data threads must not queue work on the accelerators.
  """
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    _, ref_c2w, s_norm = cameras_lib.normalize_cameras(cameras[:num_input_views])
    normalized, _, _ = cameras_lib.normalize_cameras(cameras, ref_c2w, s_norm)
  return np.asarray(normalized, np.float32), np.float32(s_norm)


def conditioning(caption: str | None, spec: SampleSpec, rng: np.random.Generator,
                 image_allowed: bool = True, text_allowed: bool = True) -> tuple[str, int]:
  """(text given to the encoder, conditioning view or NO_IMAGE), with the spec's dropout."""
  with_image = image_allowed and rng.uniform() < spec.p_image_condition
  if with_image and rng.uniform() < spec.p_drop_image:
    with_image = False
  text = ""
  if text_allowed and caption and rng.uniform() >= spec.p_drop_text:
    text = spec.caption_prefix + caption
  index = int(rng.integers(spec.num_input_views)) if with_image else NO_IMAGE
  return text, index


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def multiview_sample(record: dict, spec: SampleSpec, rng: np.random.Generator) -> dict:
  """A training sample from a multi-view record (see the module doc)."""
  frames = choose_frames(len(record["cameras"]), spec, rng, _text(record["clip_id"]))
  return sample_at_frames(record, frames, spec, rng)


def sample_at_frames(record: dict, frames: np.ndarray, spec: SampleSpec,
                     rng: np.random.Generator) -> dict:
  """The sample of a record's `frames` (inputs, then novel views; e.g. from `choose_frames`)."""
  clip_id = _text(record["clip_id"])
  images = np.asarray(record["images"])[frames]
  cameras = np.asarray(record["cameras"], np.float64)[frames]
  if images.shape[1:3] != (spec.height, spec.width):
    images, cameras = clips_lib.crop_resize_frames(images, cameras, spec.height, spec.width)
  cameras, s_norm = normalize(cameras, spec.num_input_views)
  caption = _text(record["caption"]) if record["has_caption"] else None
  text, condition_index = conditioning(caption, spec, rng)
  return {"images": images, "cameras": cameras, "view_mask": np.ones(spec.num_views, bool),
          "condition_index": np.int32(condition_index), "text": text, "s_norm": s_norm,
          "kind": np.int32(KIND_MULTIVIEW), "clip_id": clip_id}
