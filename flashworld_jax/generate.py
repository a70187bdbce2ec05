r"""Generates 3D Gaussian-splat scenes from requests (image and/or text plus cameras).

  python -m flashworld_jax.generate --config=configs/flashworld.py:5b --checkpoint=ckpt \
      --tokenizer=Wan2.2-TI2V-5B-Diffusers/tokenizer --input=requests/ --output_dir=outputs

  python -m flashworld_jax.generate --config=configs/flashworld.py:tiny \
      --text="A quiet harbour at dawn" --trajectory=orbit --num_views=8 --resolution=128,192

Writes `<output_dir>/<request name>/`: gaussians.ply, gaussians.spz, video.mp4 (as asked), the
request as run (request.json, with its seed) and timings.json (per stage; compile apart from run).
Each folder appears only when complete, and replaces an existing one only with --overwrite; quick
runs (--text/--image) are named after the prompt's first words (or the image's file name) and take
the next free name (`a-quiet-harbour-at-dawn`, then `a-quiet-harbour-at-dawn-2`, ...).

With `--ground_truth` (a held-out scene's views, e.g. from `python -m flashworld_jax.data.export_request`)
the scene is also rendered at every request camera and scored: scores.json holds the PSNR per view, at
the image's view and over the other views, next to the trivial baseline of the image shown at every view.

Flags, the output location and every request are checked before any model work: a problem is one
line `error: ...` on stderr, exit status 1, and nothing written. `--num_views` keeps an image on its
own camera (io.prepare.with_num_views).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import sys
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags
from tqdm import tqdm

from flashworld_jax import checkpoint, cli, sharding
from flashworld_jax.export import ply, spz, video, world_frame
from flashworld_jax.geometry import crop, trajectories
from flashworld_jax.io import atomic, ground_truth, prepare, request as request_lib
from flashworld_jax.io.check_request import request_files
from flashworld_jax.models.flashworld import build_flashworld
from flashworld_jax.models.tokenizer import load_tokenizer
from flashworld_jax.sampling import conditioning, sampler as sampler_lib
from flashworld_jax.sampling.timing import Timings


_CONFIG = config_flags.DEFINE_config_file("config", "configs/flashworld.py:tiny", "Model config.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Orbax checkpoint (convert command/trainer).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "Tokenizer dir/file; default: config's.")
_INPUT = flags.DEFINE_string("input", None, "A request JSON or a folder of them.")
_TEXT = flags.DEFINE_string("text", None, "Text prompt (quick run without a request file).")
_IMAGE = flags.DEFINE_string("image", None, "Image path (quick run without a request file).")
_TRAJECTORY = flags.DEFINE_enum("trajectory", "orbit", trajectories.TRAJECTORY_NAMES,
                                "Predefined camera path for quick runs.")
_NUM_VIEWS = flags.DEFINE_integer("num_views", None, "Views (default 24; overrides a request's, "
                                  "keeping its image on its camera).", lower_bound=1,
                                  upper_bound=request_lib.MAX_VIEWS)
_RESOLUTION = flags.DEFINE(cli.ResolutionParser(), "resolution", None,
                           "H,W (default 480,704; overrides a request's).",
                           serializer=flags.ListSerializer(","))
_IMAGE_INDEX = flags.DEFINE_integer("image_index", 0, "View of --image in a quick run.",
                                    lower_bound=0)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "outputs", "Where scene folders are written.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace existing folders of the requests' "
                               "names (quick runs always take a new name).")
_PLY = flags.DEFINE_bool("ply", True, "Write gaussians.ply (standard 3DGS layout).")
_SPZ = flags.DEFINE_bool("spz", True, "Write gaussians.spz (v3).")
_VIDEO = flags.DEFINE_bool("video", True, "Write video.mp4 along the trajectory.")
_VIDEO_FPS = flags.DEFINE_integer("video_fps", 15, "Frames per view interval: (n−1)·fps+1 frames.",
                                  lower_bound=1)
_SEED = flags.DEFINE_integer("seed", None, "Sampling seed (default: the request's, else random).",
                             lower_bound=request_lib.SEED_RANGE[0],
                             upper_bound=request_lib.SEED_RANGE[1] - 1)
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype override.")
_OPACITY_THRESHOLD = flags.DEFINE_float("opacity_threshold", None,
                                        "Drop Gaussians below this opacity in PLY/SPZ.",
                                        lower_bound=0.0, upper_bound=1.0)
_GROUND_TRUTH = flags.DEFINE_string(
    "ground_truth", None, "A folder of the request's true views (000.png, ...): the scene is rendered "
    "at every camera and scored (PSNR, printed and in scores.json). One request only.")
_SAMPLER = flags.DEFINE_enum("sampler", "staged", ["staged", "fused"],
                             "staged: per-stage compiled and timed; fused: one jitted function.")

DEFAULT_NUM_VIEWS, DEFAULT_RESOLUTION = 24, (480, 704)
_QUICK_RUN_ONLY = ("trajectory", "image_index")
_NAME_CHARS = 40


class GenerateError(ValueError):
  """Bad command-line input or requests; reported as one line, exit status 1."""


def _config():
  """The --config object; ml_collections defers a missing file's error to the config's first use."""
  value = config_flags.get_config_filename(flags.FLAGS["config"])  # file[:variant]
  if not os.path.isfile(value.split(":", 1)[0]):
    raise GenerateError(f"--config={value}: no such file (expected e.g. configs/flashworld.py:5b)")
  return _CONFIG.value


def _check_run_kind() -> None:
  """Either requests or a quick run, and no flag that the run would ignore."""
  if bool(_INPUT.value) == bool(_TEXT.value or _IMAGE.value):
    raise GenerateError("give either --input (a request JSON or folder) or --text/--image")
  given = [f"--{name}" for name in _QUICK_RUN_ONLY if flags.FLAGS[name].present]
  if _INPUT.value and given:
    raise GenerateError(f"{', '.join(given)}: only for quick runs (--text/--image), not with "
                        "--input (a request sets its own cameras and image_index)")
  if not _IMAGE.value and flags.FLAGS["image_index"].present:
    raise GenerateError("--image_index: the view of --image, which is not given")


def _check_output_dir(path: str) -> None:
  """Refuses an --output_dir that cannot be, or become, a writable folder; creates nothing."""
  flag = f"--output_dir={path}"
  if not path:
    raise GenerateError(f"{flag}: expected a folder path")
  if os.path.exists(path) and not os.path.isdir(path):
    raise GenerateError(f"{flag}: expected a folder, found a file")
  nearest = os.path.abspath(path)
  while not os.path.exists(nearest):
    nearest = os.path.dirname(nearest)
  if not os.path.isdir(nearest):
    raise GenerateError(f"{flag}: cannot create a folder under the file {nearest}")
  if not os.access(nearest, os.W_OK | os.X_OK):
    raise GenerateError(f"{flag}: {nearest} is not writable")


def _check_model_files(cfg) -> str:
  """The tokenizer to load, after checking that it and --checkpoint exist; nothing is loaded."""
  if _CHECKPOINT.value is not None and not os.path.isdir(_CHECKPOINT.value):
    raise GenerateError(f"--checkpoint={_CHECKPOINT.value}: no such folder (expected an Orbax "
                        "checkpoint from `python -m flashworld_jax.convert` or the trainer)")
  spec, source = _TOKENIZER.value, f"--tokenizer={_TOKENIZER.value}"
  if spec is None:
    spec = cfg.text.tokenizer
    source = f"the {cfg.variant} config's text.tokenizer={spec!r}"
  if not spec:
    raise GenerateError(f"the {cfg.variant} text encoder needs its tokenizer: pass "
                        "--tokenizer=<Wan2.2-TI2V-5B-Diffusers/tokenizer> (a local directory)")
  if spec != "byte" and not os.path.exists(spec):
    raise GenerateError(f"{source}: no such file or folder (expected 'byte', a tokenizer folder, "
                        "a tokenizer.json or a SentencePiece .model)")
  return spec


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:_NAME_CHARS].rstrip("-")


def _quick_run_name(text: str | None, image: str | None, output_dir: str) -> str:
  """The prompt's first words, else the image's file name, else "scene"; then the first free one of
  name, name-2, name-3, ... so that a quick run never replaces an earlier one."""
  image_stem = os.path.splitext(os.path.basename(image or ""))[0]
  base = _slug(text or "") or _slug(image_stem) or "scene"
  name, count = base, 1
  while os.path.lexists(os.path.join(output_dir, name)):
    count += 1
    name = f"{base}-{count}"
  return name


def _quick_request(text, image, trajectory, num_views, resolution, image_index) -> dict:
  """A request dict for --text/--image runs: the trajectory's pixel cameras on the target grid
  (or on the original image's grid, so that the centre-crop maps them onto the target)."""
  if image and image_index >= num_views:
    raise GenerateError(f"--image_index={image_index}: expected a view in [0, {num_views}) "
                        f"({num_views} views)")
  height, width = resolution
  cams = np.asarray(trajectories.make_trajectory(trajectory, num_views, height, width), np.float64)
  scale_x, scale_y, offset_x, offset_y = width, height, 0.0, 0.0
  data = {"text_prompt": text or "", "resolution": [num_views, height, width],
          "image_prompt": os.path.abspath(image) if image else None, "image_index": image_index}
  if image:
    decoded = request_lib.load_request({**data, "cameras": [
        {"quaternion": [1, 0, 0, 0], "position": [0, 0, 0], "fx": 1, "fy": 1, "cx": 0, "cy": 0}]})
    box = crop.center_crop_box(decoded.image.shape[1], decoded.image.shape[0], width, height)
    scale_x, scale_y = width / box.scale, height / box.scale
    offset_x, offset_y = box.offset_x, box.offset_y
  data["cameras"] = [{"quaternion": c[:4].tolist(), "position": c[4:7].tolist(),
                      "fx": c[7] * scale_x, "fy": c[8] * scale_y, "cx": c[9] * scale_x + offset_x,
                      "cy": c[10] * scale_y + offset_y} for c in cams]
  return data


def _with_overrides(req: request_lib.SceneRequest) -> request_lib.SceneRequest:
  """The request with --num_views and --resolution applied (both checked when parsed)."""
  if _NUM_VIEWS.value is not None:
    req = prepare.with_num_views(req, _NUM_VIEWS.value)
  if _RESOLUTION.value is not None:
    height, width = _RESOLUTION.value
    req = dataclasses.replace(req, height=height, width=width)
  return req


def collect_requests() -> list[request_lib.SceneRequest]:
  """Every request of this run, validated, with its warnings printed; errors name the file."""
  _check_run_kind()
  if not _INPUT.value:
    num_views = _NUM_VIEWS.value if _NUM_VIEWS.value is not None else DEFAULT_NUM_VIEWS
    data = _quick_request(_TEXT.value, _IMAGE.value, _TRAJECTORY.value, num_views,
                          _RESOLUTION.value or DEFAULT_RESOLUTION, _IMAGE_INDEX.value)
    name = _quick_run_name(_TEXT.value, _IMAGE.value, _OUTPUT_DIR.value)
    return [request_lib.load_request(data, name=name)]
  requests = []
  for path, problem in request_files([_INPUT.value]):
    if problem:
      raise GenerateError(f"{path}: {problem}")
    req = request_lib.load_request(path)
    for warning in req.warnings:
      print(f"warning: {path}: {warning}", file=sys.stderr)
    requests.append(_with_overrides(req))
  return requests


def _check_no_replacement(requests: list[request_lib.SceneRequest], output_dir: str) -> None:
  if _OVERWRITE.value:
    return
  for req in requests:
    folder = os.path.join(output_dir, req.name)
    if os.path.lexists(folder):
      raise GenerateError(f"{folder} already exists (request {req.name!r}): pass --overwrite to "
                          "replace it, or choose another --output_dir")


def _apply_dtype(cfg, dtype: str | None) -> None:
  if dtype:
    for section in (cfg.dit, cfg.text, cfg.vae, cfg.gaussian_decoder):
      section.dtype = dtype


def render_video(staged: sampler_lib.StagedSampler, gaussians, frame, fps: int,
                 settings: sampler_lib.RenderSettings) -> np.ndarray:
  """Frames along the trajectory resampled to (n−1)·fps+1 cameras (white background)."""
  num_frames = (frame.cams.shape[0] - 1) * fps + 1
  cams = np.asarray(trajectories.resample_cameras(frame.cams, num_frames), np.float32)
  chunk = 8
  frames = []
  for start in tqdm(range(0, num_frames, chunk), desc="video", unit="chunk", leave=False):
    part = cams[start:start + chunk]
    padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), axis=0)])
    rgb = staged.render("export/video_render", gaussians, jnp.asarray(padded), settings)
    frames.append(video.frames_from_renders(np.asarray(rgb[:len(part)])))
  return np.concatenate(frames)


def load_ground_truth(requests: list[request_lib.SceneRequest]) -> np.ndarray | None:
  if _GROUND_TRUTH.value is None:
    return None
  if len(requests) != 1:
    raise GenerateError(f"--ground_truth: scores one request, --input holds {len(requests)}")
  req = requests[0]
  try:
    return ground_truth.load_views(_GROUND_TRUTH.value, req.num_views, req.height, req.width)
  except ground_truth.GroundTruthError as e:
    raise GenerateError(str(e)) from None


def generate_scene(model, tokenizer, req, cfg, output_dir: str, seed: int, mesh,
                   truth: np.ndarray | None = None) -> str:
  """Samples one scene and writes its folder atomically (scored against `truth`, the request's
  views, when given); returns the folder."""
  timings = Timings()
  start = time.perf_counter()
  image_key, sample_key = jax.random.split(jax.random.key(seed))
  with jax.set_mesh(mesh):
    cond, frame = conditioning.condition_on_request(model, tokenizer, req, cfg, image_key, timings)
    num_gaussians = (req.num_views * cfg.gaussian_decoder.gaussians_per_pixel
                     * (req.height // 2) * (req.width // 2))
    settings = sampler_lib.RenderSettings(
        req.height, req.width, sampler_lib.initial_capacity(cfg, num_gaussians),
        near_plane=cfg.render.near_plane, far_plane=cfg.render.far_plane,
        backend=cfg.render.backend)
    staged = sampler_lib.StagedSampler(model, cfg, settings, timings)
    if _SAMPLER.value == "fused":
      with timings.measure("sampler_fused"):
        gaussians, staged.settings, _ = sampler_lib.sample_scene(model, cond, sample_key, cfg=cfg,
                                                                 settings=settings)
        gaussians = jax.block_until_ready(gaussians)
    else:
      gaussians, _ = staged(cond, sample_key)
    frames = None
    if _VIDEO.value:
      frames = render_video(staged, gaussians, frame, _VIDEO_FPS.value, staged.settings)
    scores = None
    if truth is not None:
      renders = staged.render("export/ground_truth_render", gaussians, jnp.asarray(frame.cams))
      image_index = req.image_index if req.image is not None else None
      scores = ground_truth.scores(video.frames_from_renders(np.asarray(renders)), truth,
                                   image_index)
  folder = os.path.join(output_dir, req.name)
  with atomic.atomic_directory(folder, replace=_OVERWRITE.value) as tmp:
    with timings.measure("export/world_frame"):
      world = world_frame.gaussians_to_world(np.asarray(gaussians), frame.ref_c2w, frame.s_norm)
    if _PLY.value:
      with timings.measure("export/ply"):
        ply.write_ply(os.path.join(tmp, "gaussians.ply"), world,
                      opacity_threshold=_OPACITY_THRESHOLD.value)
    if _SPZ.value:
      with timings.measure("export/spz"):
        spz.write_spz(os.path.join(tmp, "gaussians.spz"), world,
                      opacity_threshold=_OPACITY_THRESHOLD.value)
    if frames is not None:
      with timings.measure("export/video_encode"):
        video.write_mp4(os.path.join(tmp, "video.mp4"), frames, fps=_VIDEO_FPS.value)
    request_lib.save_request(dataclasses.replace(req, seed=seed), os.path.join(tmp, "request.json"))
    report = {"request": req.name, "seed": seed, "num_gaussians": int(gaussians.shape[0]),
              "sampler": _SAMPLER.value, "backend": jax.default_backend(),
              "render_capacity": staged.settings.capacity._asdict(), **timings.as_dict(),
              "wall_seconds": time.perf_counter() - start}
    atomic.write_text(os.path.join(tmp, "timings.json"), json.dumps(report, indent=1) + "\n")
    if scores is not None:
      atomic.write_text(os.path.join(tmp, "scores.json"), json.dumps(scores, indent=1) + "\n")
  if scores is not None:
    print(_scores_line(scores), flush=True)
  return folder


def _scores_line(scores: dict) -> str:
  line = "PSNR against the ground truth:"
  if "psnr_image_view" in scores:
    line += f" {scores['psnr_image_view']:.2f} dB at the image's view;"
  if "psnr_other_views" in scores:
    line += f" {scores['psnr_other_views']:.2f} dB over the other views"
  if "baseline_image_psnr_other_views" in scores:
    line += f" (the input image shown at them: {scores['baseline_image_psnr_other_views']:.2f} dB)"
  return line


def run() -> list[str]:
  cfg = _config()
  _apply_dtype(cfg, _DTYPE.value)
  _check_output_dir(_OUTPUT_DIR.value)
  requests = collect_requests()
  _check_no_replacement(requests, _OUTPUT_DIR.value)
  truth = load_ground_truth(requests)
  tokenizer_spec = _check_model_files(cfg)
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)  # everything checked: the model work starts
  tokenizer = load_tokenizer(tokenizer_spec)
  mesh = sharding.single_device_mesh()
  model, _ = build_flashworld(cfg, mesh, _CHECKPOINT.value, seed=cfg.seed)
  folders = []
  for i, req in enumerate(requests):
    seed = _SEED.value if _SEED.value is not None else req.seed
    if seed is None:
      seed = secrets.randbits(63)
    logging.info("[%d/%d] %s: %d views at %dx%d, seed %d", i + 1, len(requests), req.name,
                 req.num_views, req.height, req.width, seed)
    folders.append(generate_scene(model, tokenizer, req, cfg, _OUTPUT_DIR.value, seed, mesh, truth))
    files = ", ".join(sorted(os.listdir(folders[-1])))
    print(f"wrote {os.path.abspath(folders[-1])}: {files}", flush=True)
  return folders


def main(argv):
  try:
    if len(argv) > 1:
      raise GenerateError(f"unexpected arguments {argv[1:]} (every input is a --flag=value)")
    run()
  except (GenerateError, request_lib.RequestError, checkpoint.CheckpointError, FileNotFoundError,
          FileExistsError, PermissionError) as e:
    cli.exit_with_error(str(e))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
