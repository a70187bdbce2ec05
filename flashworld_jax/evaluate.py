r"""Scores a checkpoint on held-out scenes of a built dataset: metrics, trivial baselines, a sheet.

  python -m flashworld_jax.evaluate --checkpoint=ckpt --config=configs/flashworld.py:5b \
      --tokenizer=Wan2.2-TI2V-5B-Diffusers/tokenizer --data=data/synthetic:test --output=eval/ckpt

  python -m flashworld_jax.evaluate --checkpoint=ckpt --data=data/synthetic-validation \
      --mode=mv --num_steps=20 --output=eval/mv

Each scene (the split's first `--num_scenes`, `train.evaluation.load_scenes`) gives the sampler its
view 0 (image), its caption (text) and the trajectory of `--num_input_views` frames at stride 1;
`--num_novel_views` further frames are held out. `--mode=3d` runs the 4-step 3D-mode sampler and
renders its Gaussians at every view (inputs and novel views, with expected depth); `--mode=mv` runs
the guided multi-view sampler (default guidance 5.0, the distillation teacher's, over 50 Euler
steps) and decodes its latents with the VAE, so it has the input views only: no novel-view and no
depth scores. `--mode=autoencoder` generates nothing: every true view (inputs and novel) encoded
and decoded by the checkpoint's VAE, the ceiling of what a latent-space output can score.

`<output>/report.json` (written atomically) holds per scene and as means over scenes: PSNR and SSIM
at the conditioning view, at the other input views, at all input views, at the novel views and at
every view but the conditioning one (`other`, the demo model's acceptance group), the
abs-rel error of the expected depth against the records' z-depth where they hold one (synthetic
data; pixels without a surface are left out), the generation time (conditioning and sampling; in
3D mode not the scoring renders), and two trivial baselines scored on the same views: the
conditioning image shown at every view and the best constant colour (the views' mean). Over all
scenes together, per group without the conditioning view: the patch Fréchet distance of the
generated views to the true ones (`patch_fd_<group>`, `train.patch_frechet`), an FID-like score that
rewards views distributed like real ones where PSNR rewards their blurred average.
`model_vs_best_baseline` puts the model's PSNR next to the better baseline's. Scene 0 is generated
once before the timed runs; `compile_seconds` is that warm-up's time minus scene 0's timed one.
`<output>/contact_sheet.png` shows per scene the ground truth above the generated views (the
conditioning view and up to four others).

Flags and data are checked before the model is built: a problem is one line `error: ...` on stderr
and exit status 1.
"""
from __future__ import annotations

import io
import json
import math
import os
import time

from absl import app, flags, logging
import jax
import numpy as np
from ml_collections import config_flags
from PIL import Image
from tqdm import tqdm

from flashworld_jax import checkpoint, cli, sharding
from flashworld_jax.data import clips, records
from flashworld_jax.io import atomic
from flashworld_jax.io.request import SIZE_MULTIPLE
from flashworld_jax.models.flashworld import build_flashworld
from flashworld_jax.models.tokenizer import load_tokenizer
from flashworld_jax.sampling import sampler
from flashworld_jax.train import evaluation

DEFAULT_SPLIT = "validation"
SHEET_VIEWS = 4          # generated views shown per scene besides the conditioning view
_SHEET_GAP = 4           # white pixels between scenes on the contact sheet
_MV_ONLY = ("guidance_scale", "num_steps")


def define_flags(fv: flags.FlagValues = flags.FLAGS, sys_argv: list[str] | None = None) -> None:
  """Defines the command's flags in `fv`, not at import: other commands' modules (generate)
  define flags of the same names, and tests import several. `sys_argv`: where ml_collections
  looks for --config.a.b=v overrides (default sys.argv)."""
  config_flags.DEFINE_config_file("config", "configs/flashworld.py:tiny",
                                  "Model config (override fields with --config.a.b=v).",
                                  flag_values=fv, sys_argv=sys_argv)
  define = dict(flag_values=fv)
  flags.DEFINE_string("checkpoint", None, "Checkpoint folder (components layout, from `python -m "
                      "flashworld_jax.convert` or a trainer). Required.", **define)
  flags.DEFINE_string("tokenizer", None, "Tokenizer dir/file; default: the config's.", **define)
  flags.DEFINE_string("data", None, "FOLDER[:SPLIT]: a dataset built by `python -m "
                      "flashworld_jax.data.build` (default split validation). Required.", **define)
  flags.DEFINE_integer("num_scenes", 8, "Scenes: the split's first.", lower_bound=1, **define)
  flags.DEFINE_integer("num_input_views", 8, "Views given to the sampler.", lower_bound=1, **define)
  flags.DEFINE_integer("num_novel_views", 4, "Held-out views (3d mode).", lower_bound=0, **define)
  flags.DEFINE(cli.ResolutionParser(), "resolution", None, "H,W (default: the split's frame size).",
               serializer=flags.ListSerializer(","), **define)
  flags.DEFINE_enum("mode", "3d", ["3d", "mv", "autoencoder"], "3d: 4-step 3D-mode sampler, "
                    "renders of its Gaussians; mv: guided multi-view sampler, views decoded by the "
                    "VAE; autoencoder: the true views encoded and decoded by the VAE (a ceiling, no "
                    "generation).", **define)
  flags.DEFINE_float("guidance_scale", 5.0, "mv: classifier-free guidance scale (the distillation "
                     "teacher's).", **define)
  flags.DEFINE_integer("num_steps", 50, "mv: Euler steps.", lower_bound=1, **define)
  flags.DEFINE_string("output", None, "Folder for report.json and contact_sheet.png. Required.",
                      **define)
  flags.DEFINE_integer("seed", 0, "Sampling seed; scene i uses seed + i.", lower_bound=0, **define)


class EvaluateError(ValueError):
  """Bad flags or data; reported as one line, exit status 1."""


# ----------------------------------------------------------------------------- checks


def _config(fv: flags.FlagValues):
  """The --config object; ml_collections defers a missing file's error to the config's first use."""
  value = config_flags.get_config_filename(fv["config"])  # file[:variant]
  if not os.path.isfile(value.split(":", 1)[0]):
    raise EvaluateError(f"--config={value}: no such file (expected e.g. configs/flashworld.py:5b)")
  return fv.config


def _check_flags(fv: flags.FlagValues) -> None:
  for name in ("checkpoint", "data", "output"):
    if not fv[name].value:
      raise EvaluateError(f"--{name} is required")
  if not os.path.isdir(fv.checkpoint):
    raise EvaluateError(f"--checkpoint={fv.checkpoint}: no such folder (expected a checkpoint "
                        "from `python -m flashworld_jax.convert` or a trainer)")
  if os.path.exists(fv.output) and not os.path.isdir(fv.output):
    raise EvaluateError(f"--output={fv.output}: expected a folder, found a file")
  if fv.mode != "mv":
    given = [f"--{name}" for name in _MV_ONLY if fv[name].present]
    if given:
      raise EvaluateError(f"{', '.join(given)}: only for --mode=mv")
  elif fv["num_novel_views"].present:
    raise EvaluateError("--num_novel_views: --mode=mv generates the input views only")


def _data_location(value: str) -> tuple[str, str]:
  """--data as (folder, split): an existing folder as given, else FOLDER:SPLIT."""
  if os.path.isdir(value) or ":" not in value:
    return value, DEFAULT_SPLIT
  folder, split = value.rsplit(":", 1)
  return folder, split


def _open_data(fv: flags.FlagValues, folder: str, split: str):
  """The split's records, with --data named in every error."""
  if not os.path.isfile(os.path.join(folder, "dataset_info.json")):
    raise EvaluateError(f"--data={fv.data}: {folder} is not a built dataset (no "
                        "dataset_info.json); build one with `python -m flashworld_jax.data.build`")
  try:
    data = records.open_split(folder, split)
  except ValueError as e:  # an unknown split
    raise EvaluateError(f"--data={fv.data}: {e}") from None
  if fv.num_scenes > len(data):
    raise EvaluateError(f"--num_scenes={fv.num_scenes}: the {split} split of {folder} has "
                        f"{len(data)} scenes")
  return data


def _resolution(fv: flags.FlagValues, data) -> tuple[int, int]:
  if fv.resolution is not None:
    return tuple(fv.resolution)
  height, width = np.asarray(data[0]["images"]).shape[1:3]
  if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
    raise EvaluateError(f"--data={fv.data}: frames of {height}x{width} are not multiples of "
                        f"{SIZE_MULTIPLE}; pass --resolution=H,W")
  return int(height), int(width)


def _tokenize_fn(fv: flags.FlagValues, cfg):
  spec = fv.tokenizer or cfg.text.tokenizer
  if not spec:
    raise EvaluateError(f"the {cfg.variant} text encoder needs its tokenizer: pass "
                        "--tokenizer=<Wan2.2-TI2V-5B-Diffusers/tokenizer> (a local directory)")
  tokenizer = load_tokenizer(spec)

  def tokenize(text: str) -> dict:
    ids, mask = tokenizer.encode_batch([text], cfg.text.max_length)
    return {"token_ids": np.asarray(ids[0], np.int32), "token_mask": np.asarray(mask[0], np.int32)}

  return tokenize


def _num_novel_views(fv: flags.FlagValues) -> int:
  return 0 if fv.mode == "mv" else fv.num_novel_views


def _load_scenes(fv: flags.FlagValues, folder: str, split: str, resolution, tokenize) -> list[dict]:
  spec = evaluation.eval_spec(fv.num_input_views, _num_novel_views(fv), *resolution)
  try:
    return evaluation.load_scenes(folder, split, spec, tokenize, fv.num_scenes)
  except clips.DataError as e:  # a clip shorter than the views asked for
    raise EvaluateError(f"--data={fv.data}: {e}; ask for fewer views") from None


# ----------------------------------------------------------------------------- modes


class _Mode3D:
  """The 4-step sampler; every view of the scene rendered from its Gaussians, with depth."""

  def __init__(self, model, cfg, resolution, num_input_views: int):
    height, width = resolution
    num_gaussians = (num_input_views * cfg.gaussian_decoder.gaussians_per_pixel
                     * (height // 2) * (width // 2))
    self.model, self.cfg, self.num_input_views = model, cfg, num_input_views
    self.settings = sampler.RenderSettings(
        height, width, sampler.initial_capacity(cfg, num_gaussians),
        near_plane=cfg.render.near_plane, far_plane=cfg.render.far_plane,
        backend=cfg.render.backend)

  def generate(self, scene: dict, key: jax.Array):
    gaussians, self.settings = evaluation.sample_3d(
        self.model, scene, key, cfg=self.cfg, settings=self.settings,
        num_input_views=self.num_input_views)
    return gaussians

  def views(self, gaussians, scene: dict):
    rgb, depth, self.settings = evaluation.render_all(gaussians, scene["cameras"], self.settings)
    return rgb, depth


class _ModeMV:
  """The guided multi-view sampler; the input views decoded by the VAE, no depth."""

  def __init__(self, model, cfg, tokenize, num_input_views: int, num_steps: int,
               guidance_scale: float):
    self.model, self.cfg, self.num_input_views = model, cfg, num_input_views
    self.num_steps, self.guidance_scale = num_steps, guidance_scale
    self.uncond_context = evaluation.unconditional_context(model, tokenize(""))

  def generate(self, scene: dict, key: jax.Array):
    return evaluation.sample_mv(self.model, scene, self.uncond_context, key, cfg=self.cfg,
                                num_input_views=self.num_input_views, num_steps=self.num_steps,
                                guidance_scale=self.guidance_scale)

  def views(self, rgb, scene: dict):
    del scene
    return rgb, None


class _ModeAutoencoder:
  """No generation: the true views through the VAE, the ceiling of any output decoded from latents
  (the MV mode's) and the reference the 3D mode's Gaussian decoder starts from."""

  def __init__(self, model, num_views: int):
    self.model, self.num_views = model, num_views

  def generate(self, scene: dict, key: jax.Array):
    del key
    return evaluation.reconstruct(self.model, scene, self.num_views)

  def views(self, rgb, scene: dict):
    del scene
    return rgb, None


def _make_mode(fv: flags.FlagValues, model, cfg, resolution, tokenize):
  if fv.mode == "3d":
    return _Mode3D(model, cfg, resolution, fv.num_input_views)
  if fv.mode == "autoencoder":
    return _ModeAutoencoder(model, fv.num_input_views + _num_novel_views(fv))
  return _ModeMV(model, cfg, tokenize, fv.num_input_views, fv.num_steps, fv.guidance_scale)


def _timed(fn):
  start = time.perf_counter()
  out = jax.block_until_ready(fn())
  return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- scoring and output


def shown_views(num_generated: int, max_others: int = SHEET_VIEWS) -> np.ndarray:
  """The conditioning view, then up to `max_others` others evenly spread over the generated ones."""
  others = np.arange(1, num_generated)
  if len(others) > max_others:
    others = others[np.round(np.linspace(0, len(others) - 1, max_others)).astype(int)]
  return np.concatenate([[evaluation.CONDITION_VIEW], others]).astype(int)


def contact_sheet(strips: list[np.ndarray]) -> np.ndarray:
  gap = np.full((_SHEET_GAP, strips[0].shape[1], 3), 255, np.uint8)
  rows = [part for s in strips for part in (s, gap)][:-1]
  return np.concatenate(rows, axis=0)


def _evaluate_scene(mode, scene: dict, key: jax.Array, num_input_views: int,
                    distributions: evaluation.ViewDistributions) -> tuple[dict, np.ndarray]:
  """The scene's report entry and its contact-sheet strip; its views join `distributions`."""
  output, seconds = _timed(lambda: mode.generate(scene, key))
  rgb, depth = mode.views(output, scene)
  distributions.add(rgb, scene["images"])
  entry = {
      "clip_id": scene["clip_id"], "text": scene["text"], "generation_seconds": seconds,
      "metrics": evaluation.scene_metrics(rgb, scene["images"], num_input_views, depth,
                                          scene.get("depth")),
      "baselines": evaluation.baseline_metrics(scene["images"], len(rgb), num_input_views),
  }
  return entry, evaluation.strip(scene["images"], rgb, shown_views(len(rgb)))


def model_vs_best_baseline(metrics: dict, baselines: dict) -> dict:
  """Per group that has baselines: the model's PSNR next to the better baseline's."""
  table = {}
  for key, psnr in metrics.items():
    group = key.removeprefix("psnr_")
    candidates = {name: baselines[f"{name}_psnr_{group}"] for name in evaluation.BASELINES
                  if key.startswith("psnr_") and f"{name}_psnr_{group}" in baselines}
    if candidates:
      best = max(candidates, key=candidates.get)
      table[group] = {"psnr": psnr, "best_baseline": best, "best_baseline_psnr": candidates[best]}
  return table


def _finite_or_none(value):
  """JSON has no NaN or infinity: such a score (e.g. depth where no pixel has a surface) is null."""
  if isinstance(value, dict):
    return {k: _finite_or_none(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_finite_or_none(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _png_bytes(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def _write_outputs(output: str, report: dict, sheet: np.ndarray) -> None:
  atomic.write_text(os.path.join(output, "report.json"),
                    json.dumps(_finite_or_none(report), indent=1, allow_nan=False) + "\n")
  atomic.write_bytes(os.path.join(output, "contact_sheet.png"), _png_bytes(sheet))


def _settings_report(fv: flags.FlagValues, cfg, folder: str, split: str, resolution,
                     random: tuple[str, ...]) -> dict:
  report = {"mode": fv.mode, "checkpoint": os.path.abspath(fv.checkpoint),
            "random_components": list(random), "config": cfg.variant,
            "data": os.path.abspath(folder), "split": split, "num_scenes": fv.num_scenes,
            "num_input_views": fv.num_input_views, "num_novel_views": _num_novel_views(fv),
            "resolution": list(resolution), "seed": fv.seed, "backend": jax.default_backend()}
  if fv.mode == "mv":
    report.update(guidance_scale=fv.guidance_scale, num_steps=fv.num_steps)
  return report


def _generate_all(fv: flags.FlagValues, mode, scenes: list[dict]):
  """(warm-up seconds, report entry per scene, contact-sheet strip per scene, the set's patch
  Fréchet distances)."""
  _, warmup_seconds = _timed(lambda: mode.generate(scenes[0], evaluation.scene_key(fv.seed, 0)))
  entries, strips = [], []
  distributions = evaluation.ViewDistributions(fv.num_input_views)
  for i, scene in enumerate(tqdm(scenes, desc=f"evaluate ({fv.mode})", unit="scene")):
    entry, scene_strip = _evaluate_scene(mode, scene, evaluation.scene_key(fv.seed, i),
                                         fv.num_input_views, distributions)
    entries.append(entry)
    strips.append(scene_strip)
  return warmup_seconds, entries, strips, distributions.scores()


def run(fv: flags.FlagValues) -> dict:
  """Checks everything, evaluates, writes the outputs; returns the report."""
  cfg = _config(fv)
  _check_flags(fv)
  folder, split = _data_location(fv.data)
  resolution = _resolution(fv, _open_data(fv, folder, split))
  tokenize = _tokenize_fn(fv, cfg)
  scenes = _load_scenes(fv, folder, split, resolution, tokenize)
  os.makedirs(fv.output, exist_ok=True)  # everything checked: the model work starts
  mesh = sharding.single_device_mesh()
  model, random = build_flashworld(cfg, mesh, fv.checkpoint, seed=cfg.seed)
  with jax.set_mesh(mesh):
    mode = _make_mode(fv, model, cfg, resolution, tokenize)
    warmup_seconds, entries, strips, distribution = _generate_all(fv, mode, scenes)
  metrics = {**evaluation.mean_metrics([e["metrics"] for e in entries]), **distribution}
  baselines = evaluation.mean_metrics([e["baselines"] for e in entries])
  seconds = [e["generation_seconds"] for e in entries]
  report = {**_settings_report(fv, cfg, folder, split, resolution, random),
            "warmup_seconds": warmup_seconds,
            "compile_seconds": max(0.0, warmup_seconds - seconds[0]),
            "mean_generation_seconds": float(np.mean(seconds)), "metrics": metrics,
            "baselines": baselines,
            "model_vs_best_baseline": model_vs_best_baseline(metrics, baselines),
            "scenes": entries}
  _write_outputs(fv.output, report, contact_sheet(strips))
  logging.info("metrics: %s", json.dumps(_finite_or_none(metrics)))
  print(f"wrote {os.path.abspath(fv.output)}: contact_sheet.png, report.json", flush=True)
  return report


def main(argv):
  try:
    if len(argv) > 1:
      raise EvaluateError(f"unexpected arguments {argv[1:]} (every input is a --flag=value)")
    run(flags.FLAGS)
  except (EvaluateError, checkpoint.CheckpointError, FileNotFoundError, PermissionError) as e:
    cli.exit_with_error(str(e))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
