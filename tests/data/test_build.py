"""`python -m flashworld_jax.data.build` as a user runs it: synthetic and real-layout builds, resume,
refused settings and bad flags (one line, exit status 1)."""
import json
import os
import subprocess
import sys

import numpy as np

from flashworld_jax.data import clips as clips_lib
from flashworld_jax.data import records
import layout_writers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _build(*args):
  result = subprocess.run([sys.executable, "-m", "flashworld_jax.data.build", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return result.returncode, result.stdout, result.stderr


def test_synthetic_build_resume_and_refused_change(tmp_path):
  out = str(tmp_path / "synthetic")
  args = ["--dataset=synthetic", "--split=validation", "--num_scenes=3", "--num_frames=4",
          "--resolution=32,48", "--items_per_shard=2", f"--output_dir={out}"]
  code, stdout, stderr = _build(*args)
  assert code == 0, stderr[-2000:]
  summary = json.loads(stdout.strip().splitlines()[-1])
  assert summary["records"] == 3 and summary["shards"] == 2 and summary["skipped"] == {}
  data = records.open_split(out, "validation")
  assert data[0]["images"].shape == (4, 32, 48, 3) and data[0]["depth"].shape == (4, 32, 48)
  stamps = sorted(os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)
                  if "array_record" in f and not f.endswith(".json"))
  code, stdout, _ = _build(*args)                         # finished: nothing is rewritten
  assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["records"] == 3
  assert stamps == sorted(os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out)
                          if "array_record" in f and not f.endswith(".json"))
  code, _, stderr = _build(*[a if a != "--num_frames=4" else "--num_frames=5" for a in args])
  assert code == 1 and "num_frames: 4 then, 5 now" in stderr and "Traceback" not in stderr


def test_nerfstudio_build_crops_resizes_and_windows(tmp_path, synthetic_clip):
  layout_writers.write_nerfstudio(str(tmp_path / "source" / "scene"), synthetic_clip)
  out = str(tmp_path / "built")
  code, stdout, stderr = _build("--dataset=nerfstudio", f"--source_dir={tmp_path / 'source'}",
                                "--resolution=16,16", "--max_frames=4", f"--output_dir={out}")
  assert code == 0, stderr[-2000:]
  assert json.loads(stdout.strip().splitlines()[-1])["records"] == 2     # frames 0-3 and 2-5
  data = records.open_split(out, "train")
  by_id = {data[i]["clip_id"].decode(): data[i] for i in range(len(data))}
  assert sorted(by_id) == ["scene#0", "scene#1"]
  frames, cameras = clips_lib.crop_resize_frames(synthetic_clip.frames, synthetic_clip.cameras, 16, 16)
  np.testing.assert_allclose(by_id["scene#1"]["cameras"], cameras[2:6], atol=1e-6)
  np.testing.assert_array_equal(by_id["scene#0"]["images"], frames[:4])
  assert not by_id["scene#0"]["has_caption"]


def test_bad_flags_are_one_line_errors(tmp_path):
  for args, message in (
      (["--dataset=synthetic", "--num_scenes=2", "--resolution=abc"], "--resolution='abc'"),
      (["--dataset=synthetic", "--num_scenes=0", "--resolution=32,48"], "--num_scenes=0"),
      (["--dataset=synthetic", "--split=val", "--num_scenes=1", "--resolution=32,48"], "--split='val'"),
      (["--dataset=colmap"], "--source_dir is required"),
      (["--dataset=colmap", f"--source_dir={tmp_path / 'missing'}"], "no such folder")):
    code, _, stderr = _build(*args, f"--output_dir={tmp_path / 'out'}")
    assert code == 1 and message in stderr and "Traceback" not in stderr, (args, stderr[-500:])
