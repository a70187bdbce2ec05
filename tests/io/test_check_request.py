"""The request checker CLI, run once in a subprocess."""
import json
import os
import subprocess
import sys

from request_helpers import EXAMPLES_DIR


def test_cli_reports_good_and_bad_requests_and_warnings_without_traceback(tmp_path, request_dict):
  (tmp_path / "good.json").write_text(json.dumps({**request_dict, "text_promt": "typo"}))
  bad = {**request_dict, "cameras": [{**request_dict["cameras"][0], "quaternion": [0, 0, 0, 0]}]}
  (tmp_path / "bad.json").write_text(json.dumps(bad))
  (tmp_path / "notes.txt").write_text("not a request")
  args = [str(tmp_path), str(tmp_path / "missing.json")]
  if os.path.isdir(EXAMPLES_DIR):
    args.append(EXAMPLES_DIR)
  result = subprocess.run([sys.executable, "-m", "flashworld_jax.io.check_request", *args],
                          capture_output=True, text=True, timeout=120)
  output = result.stdout + result.stderr
  assert result.returncode == 1, output
  assert "Traceback" not in output
  assert f"error: {tmp_path / 'bad.json'}: cameras[0].quaternion: expected" in result.stderr
  assert "non-zero norm" in result.stderr
  assert f"error: {tmp_path / 'missing.json'}: no such file or folder" in result.stderr
  assert f"ok: {tmp_path / 'good.json'}: 4 views, H×W 32×64, 3 cameras, image 40×50" in result.stdout
  assert (f"warning: {tmp_path / 'good.json'}: `text_promt`: unknown key (ignored), did you mean "
          "`text_prompt`?") in result.stderr
  assert "notes.txt" not in output
  if os.path.isdir(EXAMPLES_DIR):
    assert result.stdout.count("24 views, H×W 480×704, 24 cameras") == 2
