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
from flashworld_jax.io.prepare import prepare_cameras
from flashworld_jax.io.request import load_request, save_request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "..", "shared", "examples")
CONFIG = os.path.join(REPO, "configs", "flashworld.py") + ":tiny"
# The examples ask for 24 views at 480×704; overridden to stay fast on CPU (each image stays on its
# camera: paved-plaza's view 7 becomes view 3 of 10).
SMALL = ["--num_views=10", "--resolution=32,64", "--video_fps=2"]


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
  assert degree == 2 and gaussians.shape == (10 * 2 * 16 * 32, 38)
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
  if name == "paved-plaza":      # the first request compiles the stages
    assert {"denoise", "decode", "render", "reencode"} <= set(timings["compile_seconds"])
  else:                          # the next one, of the same shapes, reuses them
    assert "denoise" not in timings["compile_seconds"]
  with open(os.path.join(folder, "request.json")) as f:
    saved = json.load(f)
  assert saved["seed"] == 3 and saved["resolution"] == [10, 32, 64]
  assert saved["image_index"] == {"paved-plaza": 3, "sound-room": 4}[name]  # 7 and 9 of 24


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


# A platform JAX does not know: a command run with it fails in JAX's backend set-up as soon as any
# array work starts, so a one-line error of ours shows that it stopped before any model work.
NO_BACKEND = "no_backend_may_start"


def _run_cli(argv, platforms="cpu"):
  """The command in a subprocess (JAX_PLATFORMS=`platforms`)."""
  return subprocess.run([sys.executable, "-m", "flashworld_jax.generate", f"--config={CONFIG}",
                         *argv], capture_output=True, text=True, cwd=REPO, timeout=300,
                        check=False, env={**os.environ, "JAX_PLATFORMS": platforms})


def test_cli_names_the_bad_request_of_a_folder_without_traceback_or_folder(tmp_path):
  if not os.path.isdir(EXAMPLES):
    pytest.skip(f"the shared example requests are not at {EXAMPLES}")
  path, _ = _bad_requests(tmp_path)["zero_quaternion"]
  requests = tmp_path / "requests"
  requests.mkdir()
  os.replace(path, requests / "zero_quaternion.json")
  with open(os.path.join(EXAMPLES, "paved-plaza.json")) as f:
    (requests / "good.json").write_text(f.read())
  out = tmp_path / "out"
  result = _run_cli([f"--input={requests}", f"--output_dir={out}"])
  assert result.returncode == 1
  assert f"error: {requests / 'zero_quaternion.json'}: cameras[0].quaternion" in result.stderr
  assert "Traceback" not in result.stderr
  assert not out.exists()


BAD_FLAGS = [  # (flags, expected in the error line)
    (["--video_fps=0"], "--video_fps=0: 0 is not a positive integer"),
    (["--video_fps=-1"], "--video_fps=-1"),
    (["--num_views=0"], "--num_views=0: 0 is not an integer in the range [1, 1024]"),
    (["--num_views=-3"], "--num_views=-3"),
    (["--resolution=64,90"], "--resolution=64,90: expected H,W: two positive multiples of 32"),
    (["--resolution=64"], "--resolution=64: expected H,W"),
    ([f"--config={CONFIG[:-len('tiny')]}huge"], "unknown variant 'huge'; expected one of"),
]


@pytest.mark.parametrize("argv,expected", BAD_FLAGS, ids=[a[0][2:20] for a, _ in BAD_FLAGS])
def test_bad_flags_fail_fast_in_one_line(tmp_path, argv, expected):
  out = tmp_path / "out"
  result = _run_cli(["--text=a room", f"--output_dir={out}", *argv], platforms=NO_BACKEND)
  assert result.returncode == 1, result.stderr
  assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
  assert expected in result.stderr
  assert not out.exists()


def test_bad_output_dirs_fail_fast_in_one_line(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("not a folder")
  cases = {str(a_file): "expected a folder, found a file",
           str(a_file / "out"): f"cannot create a folder under the file {a_file}"}
  for out, expected in cases.items():
    result = _run_cli(["--text=a room", f"--output_dir={out}"], platforms=NO_BACKEND)
    assert result.returncode == 1
    assert result.stderr == f"error: --output_dir={out}: {expected}\n"
  assert a_file.read_text() == "not a folder" and os.listdir(tmp_path) == ["a_file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder, whatever its mode")
def test_unwritable_output_dir_fails_fast(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  result = _run_cli(["--text=a room", f"--output_dir={locked / 'out'}"], platforms=NO_BACKEND)
  assert result.returncode == 1
  assert result.stderr == f"error: --output_dir={locked / 'out'}: {locked} is not writable\n"
  assert os.listdir(locked) == []


def _collect(argv):
  """The run's requests as generate checks them, without any model work."""
  with flagsaver.flagsaver():
    flags.FLAGS(["generate", f"--config={CONFIG}", *argv])
    return generate.collect_requests()


def _plaza(tmp_path, **changes):
  with open(os.path.join(EXAMPLES, "paved-plaza.json")) as f:
    data = {**json.load(f), **changes}
  path = tmp_path / "plaza.json"
  path.write_text(json.dumps(data))
  return path


@pytest.mark.parametrize("num_views,image_index", [(8, 3), (12, 5)])
def test_view_override_keeps_the_image_on_its_camera(tmp_path, num_views, image_index):
  """24 views with the image at view 10, run at 8 and 12 views: the image's camera is a view."""
  if not os.path.isdir(EXAMPLES):
    pytest.skip(f"the shared example requests are not at {EXAMPLES}")
  path = _plaza(tmp_path, image_index=10)
  # The request as the run checks and saves it (its folder's request.json); no model work needed.
  [req] = _collect([f"--input={path}", f"--output_dir={tmp_path / 'out'}",
                    f"--num_views={num_views}", "--resolution=64,96"])
  saved_path = str(tmp_path / "request.json")
  save_request(req, saved_path)
  with open(saved_path) as f:
    saved = json.load(f)
  assert saved["image_index"] == image_index and saved["resolution"] == [num_views, 64, 96]
  _, run_cams = prepare_cameras(load_request(saved_path))
  _, own_cams = prepare_cameras(load_request(_plaza(tmp_path, image_index=10,
                                                    resolution=[24, 64, 96])))
  image_camera, own_camera = run_cams[image_index], own_cams[10]
  np.testing.assert_allclose(image_camera[:4] * np.sign(image_camera[:4] @ own_camera[:4]),
                             own_camera[:4], atol=1e-6)
  np.testing.assert_allclose(image_camera[4:], own_camera[4:], atol=1e-6)


def test_misspelt_request_keys_are_warned_about(tmp_path, capsys):
  if not os.path.isdir(EXAMPLES):
    pytest.skip(f"the shared example requests are not at {EXAMPLES}")
  path = _plaza(tmp_path, text_promt="a typo")
  [req] = _collect([f"--input={path}", f"--output_dir={tmp_path / 'out'}"])
  assert req.name == "plaza"
  assert (f"warning: {path}: `text_promt`: unknown key (ignored), did you mean `text_prompt`?"
          in capsys.readouterr().err)


def test_an_existing_request_folder_is_replaced_only_with_overwrite(tmp_path):
  if not os.path.isdir(EXAMPLES):
    pytest.skip(f"the shared example requests are not at {EXAMPLES}")
  path = _plaza(tmp_path)
  earlier = tmp_path / "out" / "plaza"
  earlier.mkdir(parents=True)
  with pytest.raises(generate.GenerateError, match="plaza already exists .*--overwrite"):
    _run([f"--input={path}", f"--output_dir={tmp_path / 'out'}"])
  assert os.listdir(earlier) == []


def test_flags_a_run_would_ignore_are_refused(tmp_path):
  with pytest.raises(generate.GenerateError, match="--trajectory: only for quick runs"):
    _run([f"--input={tmp_path}", "--trajectory=pan", f"--output_dir={tmp_path}"])
  with pytest.raises(generate.GenerateError, match="--image_index: the view of --image"):
    _run(["--text=a room", "--image_index=2", f"--output_dir={tmp_path}"])


def test_quick_runs_take_new_names(tmp_path):
  quick = ["--text=A room, at dawn!", "--num_views=2", "--resolution=32,32", "--video=false",
           f"--output_dir={tmp_path}"]
  first = _run(quick)
  second = _run(quick)
  assert [os.path.basename(f) for f in first + second] == ["a-room-at-dawn", "a-room-at-dawn-2"]
  assert sorted(os.listdir(tmp_path)) == ["a-room-at-dawn", "a-room-at-dawn-2"]


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
