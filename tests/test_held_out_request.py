"""A held-out scene as a request (`data.export_request`) and `generate --ground_truth` scoring it."""
import json
import os

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from flashworld_jax import generate
from flashworld_jax.data import export_request, records
from flashworld_jax.geometry import trajectories
from flashworld_jax.io import ground_truth, images
from flashworld_jax.io.request import load_request
from flashworld_jax.train import evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "flashworld.py") + ":tiny"
HEIGHT, WIDTH, FRAMES, VIEWS = 32, 64, 6, 3


def _clip(i: int) -> list[dict]:
  rng = np.random.default_rng(i)
  frames = rng.integers(0, 256, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
  cameras = np.asarray(trajectories.make_trajectory("orbit", FRAMES, HEIGHT, WIDTH), np.float32)
  return [{"clip_id": f"held-out/{i}", "source": "synthetic", "images": frames, "cameras": cameras,
           "caption": f"scene {i}", "has_caption": True,
           "depth": np.ones((FRAMES, HEIGHT, WIDTH), np.float16),
           "gaussians": np.zeros((1, 14), np.float32), "scene": "{}", "trajectory": "orbit"}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp("held_out")
  data = str(root / "data")
  records.build_split(data, "synthetic", "validation", 2, 1, _clip, records.SYNTHETIC,
                      {"scenes": 2}, "held-out request test data")
  path = export_request.export(data, "validation", 1, VIEWS, str(root / "scene"))
  assert path == str(root / "scene" / "scene.json")
  return data, str(root / "scene")


def test_request_holds_the_evaluation_scene(exported):
  data, output = exported
  request = load_request(os.path.join(output, "scene.json"))
  spec = evaluation.eval_spec(VIEWS, 0, HEIGHT, WIDTH)
  scene = evaluation.load_scenes(data, "validation", spec, lambda text: {}, 2)[1]
  record = records.open_split(data, "validation")[1]
  truth = ground_truth.load_views(os.path.join(output, "ground_truth"), VIEWS, HEIGHT, WIDTH)
  np.testing.assert_array_equal(truth, scene["images"])
  np.testing.assert_array_equal(request.image, scene["images"][0])
  assert (request.num_views, request.height, request.width, request.image_index) == (VIEWS, HEIGHT,
                                                                                    WIDTH, 0)
  assert request.text_prompt == "scene 1"
  # The evaluation's frames, found back from their images in the record, with pixel intrinsics.
  frames = [int(np.flatnonzero((record["images"] == view).all(axis=(1, 2, 3)))[0]) for view in truth]
  for camera, frame in zip(request.cameras, frames):
    c = record["cameras"][frame]
    np.testing.assert_allclose(camera.quaternion + camera.position, c[:7], rtol=1e-6)
    np.testing.assert_allclose((camera.fx, camera.fy, camera.cx, camera.cy),
                               (c[7] * WIDTH, c[8] * HEIGHT, c[9] * WIDTH, c[10] * HEIGHT), rtol=1e-6)


def test_scores_against_numpy():
  rng = np.random.default_rng(0)
  truth = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  renders = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
  psnr = lambda a, b: 10 * np.log10(255.0 ** 2 / np.mean((np.float64(a) - b) ** 2))  # noqa: E731
  scores = ground_truth.scores(renders, truth, image_index=2)
  per_view = [psnr(r, t) for r, t in zip(renders, truth)]
  np.testing.assert_allclose(scores["psnr_per_view"], per_view, atol=1e-3)
  assert scores["psnr_image_view"] == pytest.approx(per_view[2])
  assert scores["psnr_other_views"] == pytest.approx(np.mean([per_view[i] for i in (0, 1, 3)]))
  assert scores["baseline_image_psnr_other_views"] == pytest.approx(
      np.mean([psnr(truth[2], truth[i]) for i in (0, 1, 3)]))
  assert set(ground_truth.scores(renders, truth, image_index=None)) == {"psnr_per_view",
                                                                        "psnr_other_views"}


def _generate(*argv):
  with flagsaver.flagsaver():
    flags.FLAGS(["generate", f"--config={CONFIG}", "--video=false", "--ply=false", "--spz=false",
                 *argv])
    return generate.run()


def test_generate_scores_the_scene_against_its_ground_truth(exported, tmp_path, capsys):
  _, output = exported
  [folder] = _generate(f"--input={output}/scene.json",
                       f"--ground_truth={output}/ground_truth", f"--output_dir={tmp_path}")
  with open(os.path.join(folder, "scores.json"), encoding="utf-8") as f:
    scores = json.load(f)
  truth = ground_truth.load_views(os.path.join(output, "ground_truth"), VIEWS, HEIGHT, WIDTH)
  assert len(scores["psnr_per_view"]) == VIEWS and np.all(np.isfinite(scores["psnr_per_view"]))
  assert scores["psnr_other_views"] == pytest.approx(np.mean(scores["psnr_per_view"][1:]), abs=1e-3)
  assert scores["baseline_image_psnr_other_views"] == pytest.approx(
      ground_truth.scores(truth, truth, 0)["baseline_image_psnr_other_views"])
  assert "PSNR against the ground truth" in capsys.readouterr().out


def test_ground_truth_problems_are_named_before_model_work(exported, tmp_path):
  _, output = exported
  truth = tmp_path / "truth"
  truth.mkdir()
  request = f"--input={output}/scene.json"
  with pytest.raises(generate.GenerateError, match="000.png: missing"):
    _generate(request, f"--ground_truth={truth}", f"--output_dir={tmp_path}/out")
  for view in range(VIEWS):
    (truth / f"{view:03d}.png").write_bytes(images.encode_png(np.zeros((16, 16, 3), np.uint8)))
  with pytest.raises(generate.GenerateError, match="000.png: 16x16 pixels.*32x64"):
    _generate(request, f"--ground_truth={truth}", f"--output_dir={tmp_path}/out")
  two = tmp_path / "two"
  two.mkdir()
  for name in ("a", "b"):
    (two / f"{name}.json").write_text(open(f"{output}/scene.json", encoding="utf-8").read())
  with pytest.raises(generate.GenerateError, match="scores one request, --input holds 2"):
    _generate(f"--input={two}", f"--ground_truth={output}/ground_truth",
              f"--output_dir={tmp_path}/out")
  assert not os.path.exists(tmp_path / "out")
