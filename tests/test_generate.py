"""End to end: the generate command on the shared example requests, and its failure modes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from flashworld_jax import generate
from flashworld_jax.export import ply, spz, video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "..", "shared", "examples")
CONFIG = os.path.join(REPO, "configs", "flashworld.py") + ":tiny"
# The examples ask for 24 views at 480×704; overridden to stay fast on CPU (image_index 7 and 9
# need at least 10 views).
SMALL = ["--num_views=10", "--resolution=64,96", "--video_fps=2"]


def _run(argv, config=CONFIG):
  with flagsaver.flagsaver():
    flags.FLAGS(["generate", f"--config={config}", *argv])
    return generate.run()


@pytest.fixture(scope="module")
def example_outputs(tmp_path_factory):
  if not os.path.isdir(EXAMPLES):
    pytest.skip(f"the shared example requests are not at {EXAMPLES}")
  out = tmp_path_factory.mktemp("generated")
  folders = _run([f"--input={EXAMPLES}", f"--output_dir={out}", "--seed=3", *SMALL])
  return {os.path.basename(f): f for f in folders}


@pytest.mark.parametrize("name", ["paved-plaza", "sound-room"])
def test_examples_write_ply_spz_mp4(example_outputs, name):
  folder = example_outputs[name]
  assert sorted(os.listdir(folder)) == ["gaussians.ply", "gaussians.spz", "request.json",
                                        "timings.json", "video.mp4"]
  from plyfile import PlyData  # pylint: disable=import-outside-toplevel
  data = PlyData.read(os.path.join(folder, "gaussians.ply"))
  names = [p.name for p in data["vertex"].properties]
  assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                   + [f"f_rest_{i}" for i in range(24)] + ["opacity", "scale_0", "scale_1",
                                                          "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
  gaussians, degree = ply.read_ply(os.path.join(folder, "gaussians.ply"))
  assert degree == 2 and gaussians.shape == (10 * 2 * 32 * 48, 38)
  assert np.all(np.isfinite(gaussians))
  assert np.all((gaussians[:, 3] > 0) & (gaussians[:, 3] < 1)) and np.all(gaussians[:, 4:7] > 0)
  assert np.allclose(np.linalg.norm(gaussians[:, 7:11], axis=1), 1.0, atol=1e-5)
  # SPZ round trip against the PLY's values, within SPZ's quantisation.
  decoded, info = spz.read_spz(os.path.join(folder, "gaussians.spz"))
  assert info.version == 3 and info.num_points == gaussians.shape[0]
  assert np.max(np.abs(decoded[:, :3] - gaussians[:, :3])) <= 2.0 ** -info.fractional_bits
  assert np.max(np.abs(decoded[:, 3] - gaussians[:, 3])) <= 0.5 / 255 + 1e-6
  # (10 − 1)·fps + 1 frames along the trajectory.
  assert video.count_frames(os.path.join(folder, "video.mp4")) == 9 * 2 + 1
  with open(os.path.join(folder, "timings.json")) as f:
    timings = json.load(f)
  assert {"step0/denoise", "step0/decode", "step0/render", "step0/reencode", "step3/denoise",
          "image_encoding", "text_encoding", "export/ply"} <= set(timings["run_seconds"])
  assert {"denoise", "decode", "render", "reencode"} <= set(timings["compile_seconds"])
  with open(os.path.join(folder, "request.json")) as f:
    saved = json.load(f)
  assert saved["seed"] == 3 and saved["resolution"] == [10, 64, 96]


def test_exports_are_in_the_request_world_frame(example_outputs):
  """The first camera of the request sees the scene in front of it (−z of its OpenGL frame)."""
  gaussians, _ = ply.read_ply(os.path.join(example_outputs["paved-plaza"], "gaussians.ply"))
  with open(os.path.join(EXAMPLES, "paved-plaza.json")) as f:
    camera = json.load(f)["cameras"][0]
  from flashworld_jax.geometry.quaternions import quat_to_rotmat  # pylint: disable=import-outside-toplevel
  rotation = np.asarray(quat_to_rotmat(np.asarray(camera["quaternion"], np.float64)))
  local = (gaussians[:, :3] - np.asarray(camera["position"])) @ rotation
  assert np.median(local[:, 2]) < 0


def _bad_requests(tmp_path):
  with open(os.path.join(EXAMPLES, "paved-plaza.json")) as f:
    good = json.load(f)
  cases = {
      "missing_resolution": ({k: v for k, v in good.items() if k != "resolution"}, "resolution"),
      "no_prompt": ({**good, "image_prompt": None, "text_prompt": ""}, "text_prompt"),
      "zero_quaternion": ({**good, "cameras": [{**good["cameras"][0], "quaternion": [0, 0, 0, 0]}]},
                          "cameras[0].quaternion"),
      "not_multiple_of_32": ({**good, "resolution": [24, 480, 700]}, "resolution"),
      "index_out_of_range": ({**good, "image_index": 24}, "image_index"),
      "bad_image": ({**good, "image_prompt": "data:image/png;base64,AAAA"}, "image_prompt"),
      "no_cameras": ({**good, "cameras": []}, "cameras"),
      "non_finite": ({**good, "cameras": [{**good["cameras"][0], "fx": float("nan")}]},
                     "cameras[0].fx"),
  }
  paths = {}
  for name, (data, field) in cases.items():
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    paths[name] = (str(path), field)
  return paths


def test_bad_requests_fail_before_any_output(tmp_path):
  if not os.path.isdir(EXAMPLES):
    pytest.skip(f"the shared example requests are not at {EXAMPLES}")
  out = tmp_path / "out"
  for name, (path, field) in _bad_requests(tmp_path).items():
    with pytest.raises(generate.request_lib.RequestError, match=field.replace("[", r"\[")):
      _run([f"--input={path}", f"--output_dir={out}"])
    assert not out.exists(), name


def test_cli_exits_non_zero_without_traceback_or_folder(tmp_path):
  if not os.path.isdir(EXAMPLES):
    pytest.skip(f"the shared example requests are not at {EXAMPLES}")
  path, _ = _bad_requests(tmp_path)["zero_quaternion"]
  out = tmp_path / "out"
  result = subprocess.run([sys.executable, "-m", "flashworld_jax.generate", f"--config={CONFIG}",
                           f"--input={path}", f"--output_dir={out}"], capture_output=True,
                          text=True, cwd=REPO, timeout=300, check=False)
  assert result.returncode == 1
  assert "cameras[0].quaternion" in result.stderr and "Traceback" not in result.stderr
  assert not out.exists()


def test_failure_during_export_leaves_no_folder(tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise OSError("disk full")
  monkeypatch.setattr(spz, "write_spz", broken)
  out = tmp_path / "out"
  with pytest.raises(OSError, match="disk full"):
    _run(["--text=a room", "--num_views=2", "--resolution=32,32", f"--output_dir={out}",
          "--video=false"])
  assert not out.exists() or list(out.iterdir()) == []


def test_real_size_config_asks_for_its_tokenizer(tmp_path):
  config_5b = os.path.join(REPO, "configs", "flashworld.py") + ":5b"
  with pytest.raises(generate.GenerateError, match="--tokenizer"):
    _run(["--text=a room", f"--output_dir={tmp_path}"], config=config_5b)
