"""`python -m flashworld_jax.evaluate` on a tiny built split and a random tiny checkpoint: the
report against numpy recomputations, the contact sheet, the MV mode, and one-line errors."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from flax import nnx
from PIL import Image

from configs.flashworld import get_config
from flashworld_jax import checkpoint, evaluate, sharding
from flashworld_jax.data import clips, records
from flashworld_jax.geometry import trajectories
from flashworld_jax.models.dit import WanDiT
from flashworld_jax.models.gaussian_decoder import GaussianDecoder
from flashworld_jax.models.umt5 import UMT5Encoder
from flashworld_jax.models.vae import WanVAE
from flashworld_jax.train import evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "flashworld.py") + ":tiny"
HEIGHT, WIDTH, FRAMES, SCENES = 32, 64, 4, 2
INPUTS, NOVEL = 3, 1
SKY_ROWS = 8                  # rows of every depth map without a surface (depth 0)
# fp32 on CPU, a short prompt, and room for the many intersections of random Gaussians (an overflow
# would re-compile the sampler).
FAST = ["--config.text.max_length=16", "--config.dit.dtype=float32", "--config.text.dtype=float32",
        "--config.render.isects_per_gaussian=16"]


def _example(i: int) -> list[dict]:
  rng = np.random.default_rng(i)
  depth = rng.uniform(1.0, 4.0, (FRAMES, HEIGHT, WIDTH)).astype(np.float16)
  depth[:, :SKY_ROWS] = 0.0
  # A smooth colour per frame plus noise: the baselines differ from one another.
  base = rng.integers(40, 200, (FRAMES, 1, 1, 3))
  images = np.clip(base + rng.integers(-40, 40, (FRAMES, HEIGHT, WIDTH, 3)), 0, 255)
  cameras = np.asarray(trajectories.make_trajectory("orbit", FRAMES, HEIGHT, WIDTH), np.float32)
  return [{"clip_id": f"test/{i}", "source": "synthetic", "images": images.astype(np.uint8),
           "cameras": cameras, "caption": f"test scene {i}", "has_caption": True, "depth": depth,
           "gaussians": np.zeros((1, 14), np.float32), "scene": "{}", "trajectory": "orbit"}]


def _random_checkpoint(path: str) -> None:
  """Every tiny component with small random weights drawn in numpy into the abstract model (the
  eager initialisers would compile for ~15 s); buffers (latent statistics, multipliers) are 1."""
  cfg = get_config("tiny")
  mesh = sharding.single_device_mesh()
  rng = np.random.default_rng(0)
  rngs = lambda: nnx.Rngs(0)  # noqa: E731
  create = {"dit": lambda: WanDiT(cfg.dit, rngs=rngs()),
            "vae": lambda: WanVAE(cfg.vae, rngs=rngs()),
            "gaussian_decoder": lambda: GaussianDecoder(cfg, rngs=rngs()),
            "text_encoder": lambda: UMT5Encoder(cfg.text, rngs=rngs())}

  def fill(_, variable):
    shape, dtype = variable.get_value().shape, variable.get_value().dtype
    value = (rng.standard_normal(shape) * 0.02 if isinstance(variable, nnx.Param)
             else np.ones(shape))
    return variable.replace(value.astype(dtype))

  states = {}
  with jax.set_mesh(mesh), sharding.rules():
    for name, make in create.items():
      _, abstract = nnx.get_abstract_model(make, mesh)
      states[name] = nnx.map_state(fill, abstract)
  checkpoint.save_components(path, states, cfg)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  """(dataset folder, checkpoint folder)."""
  root = tmp_path_factory.mktemp("evaluate")
  data = str(root / "data")
  records.build_split(data, "synthetic", "validation", SCENES, 1, _example, records.SYNTHETIC,
                      {"scenes": SCENES}, "evaluate test data")
  _random_checkpoint(str(root / "ckpt"))
  return data, str(root / "ckpt")


def _run(*argv):
  argv = ["evaluate", f"--config={CONFIG}", *FAST, *argv]
  fv = flags.FlagValues()
  evaluate.define_flags(fv, sys_argv=argv)
  fv(argv)
  return evaluate.run(fv)


def _argv(inputs, output, *extra):
  data, ckpt = inputs
  return [f"--checkpoint={ckpt}", f"--data={data}", f"--num_scenes={SCENES}",
          f"--num_input_views={INPUTS}", f"--output={output}", *extra]


@pytest.fixture(scope="module")
def report_3d(inputs, tmp_path_factory):
  output = str(tmp_path_factory.mktemp("out3d"))
  _run(*_argv(inputs, output, f"--num_novel_views={NOVEL}"))
  with open(os.path.join(output, "report.json"), encoding="utf-8") as f:
    return json.load(f), output


def _scenes(inputs, novel=NOVEL):
  spec = evaluation.eval_spec(INPUTS, novel, HEIGHT, WIDTH)
  return evaluation.load_scenes(inputs[0], "validation", spec, lambda text: {}, SCENES)


def _numbers(tree):
  if isinstance(tree, dict):
    return [x for v in tree.values() for x in _numbers(v)]
  if isinstance(tree, list):
    return [x for v in tree for x in _numbers(v)]
  return [tree] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def _psnr(pred, target):
  return 10 * np.log10(4.0 / np.mean((np.float64(pred) - target) ** 2, axis=(-3, -2, -1)))


def test_3d_report_scores_every_group_finitely(report_3d):
  report, _ = report_3d
  assert report["mode"] == "3d" and report["random_components"] == []
  assert (report["num_scenes"], report["num_input_views"], report["num_novel_views"]) == (2, 3, 1)
  groups = ("condition_view", "input", "input_other", "novel", "other")
  fd_groups = ("input_other", "novel", "other")
  assert set(report["metrics"]) == (
      {f"{m}_{g}" for m in ("psnr", "ssim", "depth_abs_rel") for g in groups}
      | {f"patch_fd{level}_{g}" for level in ("", "_level0", "_level1", "_level2", "_level3")
         for g in fd_groups})
  assert set(report["baselines"]) == {f"{b}_psnr_{g}" for b in ("condition_image", "mean_colour")
                                      for g in ("input_other", "novel", "other")}
  assert all(math.isfinite(x) for x in _numbers(report))
  assert [s["clip_id"] for s in report["scenes"]] == ["test/0", "test/1"]
  for key, value in report["metrics"].items():
    if not key.startswith("patch_fd"):   # a set-level score, not a mean over scenes
      assert value == pytest.approx(np.mean([s["metrics"][key] for s in report["scenes"]]))
  assert all(s["generation_seconds"] > 0 for s in report["scenes"])
  assert report["warmup_seconds"] >= report["compile_seconds"] >= 0


def test_baselines_match_numpy(report_3d, inputs):
  report, _ = report_3d
  for scene, entry in zip(_scenes(inputs), report["scenes"]):
    x = np.asarray(scene["images"], np.float64) / 127.5 - 1.0
    for group, views in (("input_other", [1, 2]), ("novel", [3]), ("other", [1, 2, 3])):
      target = x[views]
      condition = _psnr(np.broadcast_to(x[0], target.shape), target).mean()
      mean_colour = _psnr(np.broadcast_to(target.mean(axis=(0, 1, 2)), target.shape), target).mean()
      scores = entry["baselines"]
      assert scores[f"condition_image_psnr_{group}"] == pytest.approx(condition, abs=1e-4)
      assert scores[f"mean_colour_psnr_{group}"] == pytest.approx(mean_colour, abs=1e-4)
  for group, row in report["model_vs_best_baseline"].items():
    best = max(report["baselines"][f"{b}_psnr_{group}"] for b in ("condition_image", "mean_colour"))
    assert row["best_baseline_psnr"] == best and row["psnr"] == report["metrics"][f"psnr_{group}"]


def test_contact_sheet_rows_are_ground_truth_over_renders(report_3d, inputs):
  _, output = report_3d
  sheet = np.asarray(Image.open(os.path.join(output, "contact_sheet.png")))
  views = INPUTS + NOVEL               # the conditioning view and 3 others: all shown
  gap = 4
  assert sheet.dtype == np.uint8
  assert sheet.shape == (SCENES * 2 * HEIGHT + (SCENES - 1) * gap, views * WIDTH, 3)
  for i, scene in enumerate(_scenes(inputs)):
    top = i * (2 * HEIGHT + gap)
    np.testing.assert_array_equal(sheet[top:top + HEIGHT],
                                  np.concatenate(list(scene["images"]), axis=1))
  assert np.all(sheet[2 * HEIGHT:2 * HEIGHT + gap] == 255)


def test_mv_mode_scores_the_input_views_only(inputs, tmp_path):
  report = _run(*_argv(inputs, str(tmp_path), "--mode=mv", "--num_steps=1",
                       "--guidance_scale=2.0"))
  assert (report["mode"], report["num_novel_views"], report["num_steps"],
          report["guidance_scale"]) == ("mv", 0, 1, 2.0)
  assert set(report["metrics"]) == (
      {f"{m}_{g}" for m in ("psnr", "ssim")
       for g in ("condition_view", "input", "input_other", "other")}
      | {f"patch_fd{level}_{g}" for level in ("", "_level0", "_level1", "_level2", "_level3")
         for g in ("input_other", "other")})
  assert set(report["baselines"]) == {f"{b}_psnr_{g}" for b in ("condition_image", "mean_colour")
                                      for g in ("input_other", "other")}
  assert all(math.isfinite(x) for x in _numbers(report))
  sheet = Image.open(tmp_path / "contact_sheet.png")
  assert sheet.size == (INPUTS * WIDTH, SCENES * 2 * HEIGHT + 4)


def test_autoencoder_mode_scores_the_vae_reconstruction_of_every_view(inputs, tmp_path):
  report = _run(*_argv(inputs, str(tmp_path), "--mode=autoencoder", f"--num_novel_views={NOVEL}"))
  assert (report["mode"], report["num_novel_views"]) == ("autoencoder", NOVEL)
  assert not any(k.startswith("depth") for k in report["metrics"])
  # The report's PSNR at each group is the numpy PSNR of the VAE's own encode-decode of the views.
  model, _ = evaluate.build_flashworld(get_config("tiny"), sharding.single_device_mesh(), inputs[1])
  expected = {}
  for scene in _scenes(inputs):
    target = scene["images"] / 127.5 - 1.0
    psnr = _psnr(np.asarray(evaluation.reconstruct(model, scene, INPUTS + NOVEL)), target)
    expected.setdefault("condition_view", []).append(psnr[0])
    expected.setdefault("novel", []).append(psnr[INPUTS:].mean())
  for group, values in expected.items():
    np.testing.assert_allclose(report["metrics"][f"psnr_{group}"], np.mean(values), atol=1e-3)


def test_scene_metrics_against_numpy_with_masked_depth():
  rng = np.random.default_rng(0)
  views = INPUTS + NOVEL
  images = rng.integers(0, 256, (views, HEIGHT, WIDTH, 3), dtype=np.uint8)
  rgb = rng.uniform(-1, 1, (views, HEIGHT, WIDTH, 3)).astype(np.float32)
  depth = rng.uniform(0.5, 3.0, (views, HEIGHT, WIDTH)).astype(np.float32)
  gt = rng.uniform(1.0, 2.0, (views, HEIGHT, WIDTH)).astype(np.float32)
  gt[rng.uniform(size=gt.shape) < 0.3] = 0.0               # no surface: left out
  scores = evaluation.scene_metrics(rgb, images, INPUTS, depth, gt)
  target = images / 127.5 - 1.0
  for group, group_views in (("condition_view", [0]), ("input_other", [1, 2]), ("novel", [3]),
                             ("input", [0, 1, 2]), ("other", [1, 2, 3])):
    valid = gt[group_views] > 0
    error = np.abs(depth[group_views] - gt[group_views])[valid] / gt[group_views][valid]
    assert scores[f"depth_abs_rel_{group}"] == pytest.approx(error.mean(), rel=1e-5)
    assert scores[f"psnr_{group}"] == pytest.approx(
        _psnr(rgb[group_views], target[group_views]).mean(), abs=1e-4)


def test_depth_crop_keeps_the_frames_window_and_never_blends():
  depth = np.arange(2 * 40 * 64, dtype=np.float32).reshape(2, 40, 64)
  np.testing.assert_array_equal(clips.crop_resize_depth(depth, 32, 64), depth[:, 4:36])
  depth[:, :, :10] = 0.0
  small = clips.crop_resize_depth(depth, 16, 32)
  assert small.shape == (2, 16, 32) and set(small.ravel()) <= set(depth.ravel())


def test_shown_views_keep_the_condition_view_and_spread_the_others():
  np.testing.assert_array_equal(evaluate.shown_views(3), [0, 1, 2])
  np.testing.assert_array_equal(evaluate.shown_views(12), [0, 1, 4, 8, 11])


def _error(*argv) -> str:
  with pytest.raises(evaluate.EvaluateError) as info:
    _run(*argv)
  return str(info.value)


def test_bad_inputs_are_refused_before_any_model_work(inputs, tmp_path):
  data, ckpt = inputs
  out = tmp_path / "out"
  args = _argv(inputs, out)
  empty = tmp_path / "empty"
  empty.mkdir()
  cases = [
      ([f"--checkpoint={tmp_path / 'nope'}"], f"--checkpoint={tmp_path / 'nope'}: no such folder"),
      ([f"--data={empty}"], f"--data={empty}: {empty} is not a built dataset (no dataset_info"),
      ([f"--data={data}:test"], "no split 'test'; it has ['validation']"),
      (["--num_scenes=3"], f"--num_scenes=3: the validation split of {data} has 2 scenes"),
      (["--num_novel_views=2"], "test/0: the clip has 4 frames, a sample needs 5 (3 input + 2 "
                                "novel); ask for fewer views"),
      (["--guidance_scale=3"], "--guidance_scale: only for --mode=mv"),
      (["--mode=mv", "--num_novel_views=1"], "--num_novel_views: --mode=mv generates the input "
                                             "views only"),
  ]
  for extra, expected in cases:
    assert expected in _error(*args, *extra)
  assert not out.exists()
  with pytest.raises(flags.IllegalFlagValueError, match="expected H,W: two positive multiples"):
    _run(*args, "--resolution=32,50")


def test_cli_error_is_one_line_without_traceback(inputs, tmp_path):
  missing = tmp_path / "missing"
  result = subprocess.run(
      [sys.executable, "-m", "flashworld_jax.evaluate", f"--checkpoint={missing}",
       f"--data={inputs[0]}", f"--output={tmp_path / 'out'}"],
      capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 1
  assert result.stderr == (f"error: --checkpoint={missing}: no such folder (expected a checkpoint "
                           "from `python -m flashworld_jax.convert` or a trainer)\n")
