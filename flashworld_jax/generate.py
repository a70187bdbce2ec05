r"""Generates 3D Gaussian-splat scenes from requests (image and/or text plus cameras).

  python -m flashworld_jax.generate --config=configs/flashworld.py:5b --checkpoint=ckpt \
      --tokenizer=Wan2.2-TI2V-5B-Diffusers/tokenizer --input=requests/ --output_dir=outputs

  python -m flashworld_jax.generate --config=configs/flashworld.py:tiny \
      --text="A quiet harbour at dawn" --trajectory=orbit --num_views=8 --resolution=128,192

Writes `<output_dir>/<request name>/`: gaussians.ply, gaussians.spz, video.mp4 (as asked), the
request as run (request.json, with its seed) and timings.json (per stage; compile apart from run).
Each folder appears only when complete. Invalid requests are reported before any work starts and
the command exits non-zero.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags
from tqdm import tqdm

from flashworld_jax import checkpoint, sharding
from flashworld_jax.export import ply, spz, video, world_frame
from flashworld_jax.geometry import crop, trajectories
from flashworld_jax.io import atomic, request as request_lib
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
_NUM_VIEWS = flags.DEFINE_integer("num_views", None, "Views (default 24; overrides a request's).")
_RESOLUTION = flags.DEFINE_string("resolution", None, "H,W (default 480,704; overrides a request's).")
_IMAGE_INDEX = flags.DEFINE_integer("image_index", 0, "View of --image in a quick run.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "outputs", "Where scene folders are written.")
_PLY = flags.DEFINE_bool("ply", True, "Write gaussians.ply (standard 3DGS layout).")
_SPZ = flags.DEFINE_bool("spz", True, "Write gaussians.spz (v3).")
_VIDEO = flags.DEFINE_bool("video", True, "Write video.mp4 along the trajectory.")
_VIDEO_FPS = flags.DEFINE_integer("video_fps", 15, "Frames per view interval: (n−1)·fps+1 frames.")
_SEED = flags.DEFINE_integer("seed", None, "Sampling seed (default: the request's, else random).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype override.")
_OPACITY_THRESHOLD = flags.DEFINE_float("opacity_threshold", None,
                                        "Drop Gaussians below this opacity in PLY/SPZ.")
_SAMPLER = flags.DEFINE_enum("sampler", "staged", ["staged", "fused"],
                             "staged: per-stage compiled and timed; fused: one jitted function.")

DEFAULT_NUM_VIEWS, DEFAULT_RESOLUTION = 24, (480, 704)


class GenerateError(ValueError):
  """Bad command-line input or requests; reported as one line, exit status 1."""


def _parse_resolution(text: str | None) -> tuple[int, int] | None:
  if text is None:
    return None
  try:
    height, width = (int(v) for v in text.split(","))
  except ValueError:
    raise GenerateError(f"--resolution={text!r}: expected H,W, e.g. 480,704") from None
  return height, width


def _quick_request(text, image, trajectory, num_views, resolution, image_index) -> dict:
  """A request dict for --text/--image runs: the trajectory's pixel cameras on the target grid
  (or on the original image's grid, so that the centre-crop maps them onto the target)."""
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


def collect_requests() -> list[request_lib.SceneRequest]:
  """Every request of this run, validated before any model work."""
  resolution = _parse_resolution(_RESOLUTION.value)
  if bool(_INPUT.value) == bool(_TEXT.value or _IMAGE.value):
    raise GenerateError("give either --input (a request JSON or folder) or --text/--image")
  if not _INPUT.value:
    data = _quick_request(_TEXT.value, _IMAGE.value, _TRAJECTORY.value,
                          _NUM_VIEWS.value or DEFAULT_NUM_VIEWS, resolution or DEFAULT_RESOLUTION,
                          _IMAGE_INDEX.value)
    return [request_lib.load_request(data, name="scene")]
  requests = []
  for path, problem in request_files([_INPUT.value]):
    if problem:
      raise GenerateError(f"{path}: {problem}")
    req = request_lib.load_request(path)
    if _NUM_VIEWS.value is not None or resolution is not None:
      data = request_lib.request_to_dict(req)
      n, h, w = data["resolution"]
      data["resolution"] = [_NUM_VIEWS.value or n, *(resolution or (h, w))]
      req = request_lib.parse_request(data, req.name, os.path.dirname(os.path.abspath(path)))
    requests.append(req)
  return requests


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


def generate_scene(model, tokenizer, req, cfg, output_dir: str, seed: int, mesh) -> str:
  """Samples one scene and writes its folder atomically; returns the folder."""
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
  folder = os.path.join(output_dir, req.name)
  with atomic.atomic_directory(folder) as tmp:
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
  return folder


def run() -> list[str]:
  cfg = _CONFIG.value
  _apply_dtype(cfg, _DTYPE.value)
  requests = collect_requests()
  tokenizer_spec = _TOKENIZER.value or cfg.text.tokenizer
  if not tokenizer_spec:
    raise GenerateError(f"the {cfg.variant} text encoder needs its tokenizer: pass "
                        "--tokenizer=<Wan2.2-TI2V-5B-Diffusers/tokenizer> (a local directory)")
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
    folders.append(generate_scene(model, tokenizer, req, cfg, _OUTPUT_DIR.value, seed, mesh))
    files = ", ".join(sorted(os.listdir(folders[-1])))
    print(f"wrote {os.path.abspath(folders[-1])}: {files}", flush=True)
  return folders


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  try:
    run()
  except (GenerateError, request_lib.RequestError, checkpoint.CheckpointError,
          FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
