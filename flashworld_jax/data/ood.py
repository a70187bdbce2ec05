"""Out-of-distribution samples for distillation (spec §13.4): a single image or a bare prompt, paired at
load time with a trajectory drawn from the multi-view data or from the templates.

An OOD sample has the multi-view sample's fields and shapes: `images` holds only the conditioning
image (at a uniform input view; zeros elsewhere) and `view_mask` says no other view has ground truth.
The condition is never dropped: it is the point of these samples.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from flashworld_jax.data import clips as clips_lib
from flashworld_jax.data import records, sampling
from flashworld_jax.data.sampling import SampleSpec
from flashworld_jax.data.sources import single_images
from flashworld_jax.geometry import trajectories

_TEMPLATE_STRIDE = 3          # template paths are drawn densely; inputs every 3rd, novel between


@dataclasses.dataclass(frozen=True)
class OODSources:
  """Single images (a path or a uint8 [H, W, 3] array, optional caption) and prompts; either may be
  empty, not both."""
  images: Sequence[tuple[str | np.ndarray, str | None]] = ()
  prompts: Sequence[str] = ()
  p_template_trajectory: float = 0.5

  def __post_init__(self):
    if not self.images and not self.prompts:
      raise ValueError("OODSources needs single images or prompts (both are empty)")
    if not 0.0 <= self.p_template_trajectory <= 1.0:
      raise ValueError(f"p_template_trajectory must be in [0, 1], got {self.p_template_trajectory}")


def load_sources(images_dir: str | None = None, prompts: str | None = None,
                 image_captions: str | None = None, p_template_trajectory: float = 0.5,
                 skip_bad_images: bool = False) -> OODSources:
  """OODSources from an image folder (captions from same-stem .txt files or a JSONL side file) and a
  prompt file or folder of them (`data.sources.single_images`)."""
  images = []
  if images_dir:
    report = single_images.read_image_folder(images_dir, captions=image_captions,
                                             skip_bad_images=skip_bad_images)
    images = [(record.path, record.caption) for record in report.images]
  texts = [record.text for record in single_images.read_prompts(prompts)] if prompts else []
  return OODSources(images=images, prompts=texts, p_template_trajectory=p_template_trajectory)


def from_multiview(data_dir: str, split: str, p_template_trajectory: float = 0.5) -> OODSources:
  """Every clip's middle frame as a single image with its caption, and the captions as prompts: the
  OOD set of a run without image or prompt collections (e.g. the synthetic scenes)."""
  data = records.open_split(data_dir, split)
  images, prompts = [], []
  for i in range(len(data)):
    record = data[i]
    caption = record["caption"].decode("utf-8") if record["has_caption"] else None
    images.append((np.asarray(record["images"][len(record["images"]) // 2]), caption))
    if caption:
      prompts.append(caption)
  return OODSources(images=images, prompts=prompts, p_template_trajectory=p_template_trajectory)


def _template_cameras(spec: SampleSpec, rng: np.random.Generator) -> np.ndarray:
  """Cameras [num_views, 11] on a random template path (orbit, dolly, pan or arc)."""
  name = str(rng.choice(trajectories.TRAJECTORY_NAMES))
  dense = (spec.num_input_views - 1) * _TEMPLATE_STRIDE + 1
  sweep = {"orbit": rng.uniform(90, 360), "arc": rng.uniform(45, 120),
           "pan": rng.uniform(30, 75), "dolly": 0.0}[name]
  path = np.asarray(trajectories.make_trajectory(
      name, max(dense, spec.num_views), spec.height, spec.width,
      fov_degrees=float(rng.uniform(45, 65)), scale=float(rng.uniform(1.0, 3.0)),
      sweep_degrees=float(sweep)), np.float64)
  fixed = dataclasses.replace(spec, min_frame_stride=_TEMPLATE_STRIDE,
                              max_frame_stride=_TEMPLATE_STRIDE)
  return path[sampling.choose_frames(len(path), fixed, rng, f"template {name}")]


def _dataset_cameras(trajectory_records, spec: SampleSpec, rng: np.random.Generator) -> np.ndarray:
  record = trajectory_records[int(rng.integers(len(trajectory_records)))]
  clip_id = record["clip_id"].decode("utf-8") if isinstance(record["clip_id"], bytes) else ""
  frames = sampling.choose_frames(len(record["cameras"]), spec, rng, clip_id)
  return np.asarray(record["cameras"], np.float64)[frames]


def ood_sample(sources: OODSources, trajectory_records, spec: SampleSpec,
               rng: np.random.Generator) -> dict:
  """One OOD sample: an image (with its caption, if any) or a prompt, on a sampled trajectory."""
  use_template = trajectory_records is None or rng.uniform() < sources.p_template_trajectory
  cameras = (_template_cameras(spec, rng) if use_template
             else _dataset_cameras(trajectory_records, spec, rng))
  cameras, s_norm = sampling.normalize(cameras, spec.num_input_views)
  images = np.zeros((spec.num_views, spec.height, spec.width, 3), np.uint8)
  view_mask = np.zeros(spec.num_views, bool)
  with_image = bool(sources.images) and (not sources.prompts or rng.uniform() < 0.5)
  if with_image:
    path, caption = sources.images[int(rng.integers(len(sources.images)))]
    index = int(rng.integers(spec.num_input_views))
    frame = (clips_lib.read_image(path) if isinstance(path, str) else path)[None]
    images[index] = clips_lib.crop_resize_frames(frame, np.zeros((1, 11)), spec.height,
                                                 spec.width)[0][0]
    view_mask[index] = True
    text, kind = (spec.caption_prefix + caption if caption else ""), sampling.KIND_OOD_IMAGE
  else:
    index, kind = sampling.NO_IMAGE, sampling.KIND_OOD_TEXT
    text = spec.caption_prefix + sources.prompts[int(rng.integers(len(sources.prompts)))]
  return {"images": images, "cameras": cameras, "view_mask": view_mask,
          "condition_index": np.int32(index), "text": text, "s_norm": s_norm,
          "kind": np.int32(kind), "clip_id": "ood"}
