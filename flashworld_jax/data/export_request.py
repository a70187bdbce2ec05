r"""Writes a held-out scene of a built split as a generation request and its ground-truth views.

  python -m flashworld_jax.data.export_request --data=data/synthetic-validation:validation \
      --index=0 --num_views=4 --output=examples/held-out-scene

`<output>/<name>.json` (`<name>`: the output folder's name, so that generate names the scene after
it) is a request in the original's schema (formats.md §1): the scene's first
frame as `image_prompt` (image_index 0), its caption as `text_prompt` and the cameras of
`--num_views` frames at stride 1 in the records' world and pixels. They are the frames of the
evaluation's scene `--index` (`train.evaluation.load_scenes`), so `generate` on this request and
`evaluate` on that split see the same inputs. `<output>/ground_truth/NNN.png` holds each view's true
image: `generate --ground_truth=<output>/ground_truth` scores its renders against them.
"""
from __future__ import annotations

import os

from absl import app, flags
import numpy as np

from flashworld_jax import cli
from flashworld_jax.data import clips, records, sampling
from flashworld_jax.io import atomic, images
from flashworld_jax.io import request as request_lib

GROUND_TRUTH = "ground_truth"


class ExportError(ValueError):
  """Bad flags or data; reported as one line, exit status 1."""


def ground_truth_name(view: int) -> str:
  return f"{view:03d}.png"


def scene_request(record: dict, index: int, num_views: int) -> tuple[dict, np.ndarray]:
  """(request dict, images [V, H, W, 3] uint8) of the evaluation's scene `index` of a split."""
  clip_id = record["clip_id"].decode("utf-8")
  height, width = np.asarray(record["images"]).shape[1:3]
  spec = sampling.SampleSpec(num_input_views=num_views, num_novel_views=0, height=height,
                             width=width)
  frames = sampling.choose_frames(len(record["cameras"]), spec, np.random.default_rng(index), clip_id)
  views = np.asarray(record["images"])[frames]
  cams = np.asarray(record["cameras"], np.float64)[frames]
  caption = record["caption"].decode("utf-8") if record["has_caption"] else ""
  request = {
      "image_prompt": images.encode_png_data_uri(views[0]),
      "text_prompt": caption,
      "resolution": [num_views, int(height), int(width)],
      "image_index": 0,
      # Record cameras hold intrinsics as fractions of the image size; requests hold pixels.
      "cameras": [{"quaternion": c[:4].tolist(), "position": c[4:7].tolist(), "fx": c[7] * width,
                   "fy": c[8] * height, "cx": c[9] * width, "cy": c[10] * height} for c in cams],
      "seed": 0,
  }
  return request, views


def export(data_dir: str, split: str, index: int, num_views: int, output: str) -> str:
  """Writes the request and its ground truth; returns the request's path."""
  data = records.open_split(data_dir, split)
  if index >= len(data):
    raise ExportError(f"--index={index}: {data_dir}:{split} has {len(data)} records")
  try:
    request, views = scene_request(data[index], index, num_views)
  except clips.DataError as e:
    raise ExportError(f"--num_views={num_views}: {e}") from None
  with atomic.atomic_directory(output) as tmp:
    name = os.path.basename(os.path.normpath(output))
    request_lib.save_request(request_lib.load_request(request, name=name),
                             os.path.join(tmp, f"{name}.json"))
    os.makedirs(os.path.join(tmp, GROUND_TRUTH))
    for view, image in enumerate(views):
      with open(os.path.join(tmp, GROUND_TRUTH, ground_truth_name(view)), "wb") as f:
        f.write(images.encode_png(image))
  return os.path.join(output, f"{name}.json")


def define_flags() -> None:
  """Defined when run as a command only (generate has a --num_views of its own)."""
  flags.DEFINE_string("data", None, "A built dataset folder and split: <folder>:<split>.")
  flags.DEFINE_integer("index", 0, "The scene: record index in the split.", lower_bound=0)
  flags.DEFINE_integer("num_views", 8, "Views of the request (frames at stride 1).", lower_bound=1)
  flags.DEFINE_string("output", None, "Folder to write (replaced atomically).")


def main(argv):
  fv = flags.FLAGS
  try:
    if len(argv) > 1:
      raise ExportError(f"unexpected arguments {argv[1:]}")
    if not fv.data or ":" not in fv.data:
      raise ExportError(f"--data={fv.data}: expected <dataset folder>:<split>")
    if not fv.output:
      raise ExportError("--output: expected the folder to write")
    folder, split = fv.data.rsplit(":", 1)
    print(export(folder, split, fv.index, fv.num_views, fv.output))
  except (ExportError, ValueError, FileNotFoundError) as e:
    cli.exit_with_error(str(e))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
