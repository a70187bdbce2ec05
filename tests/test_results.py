"""`python -m flashworld_jax.train.results`: the stage table and the curves from runs and reports."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from flashworld_jax.train import results


def _run(workdir, rows):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _report(folder, psnr_other, mode="3d"):
  os.makedirs(folder)
  report = {"mode": mode,
            "metrics": {"psnr_condition_view": 25.0, "psnr_input_other": 21.0, "psnr_novel": 17.5,
                        "psnr_other": psnr_other, "ssim_other": 0.61, "depth_abs_rel_other": 0.2,
                        "patch_fd_other": 0.0625},
            "model_vs_best_baseline": {"other": {"psnr": psnr_other, "best_baseline": "condition_image",
                                                 "best_baseline_psnr": 18.0}},
            "scenes": [{"generation_seconds": 1.0}, {"generation_seconds": 2.0}]}
  with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as f:
    json.dump(report, f)


def test_table_and_curves(tmp_path):
  _run(tmp_path / "pre", [{"step": 0, "eval/psnr_other": 10.0, "loss": 1.0},
                          {"step": 10, "loss": 0.5},
                          {"step": 20, "eval/psnr_other": 14.0, "eval/psnr_novel": 12.0,
                           "eval/patch_fd_other": 0.25},
                          {"step": 25, "eval/patch_fd_other": 0.125},
                          {"step": 30, "eval/psnr_other": float("nan")}])
  _report(tmp_path / "a", 19.25)
  _report(tmp_path / "b", 20.5)
  written = results.write([("pretrain", str(tmp_path / "pre"))],
                          [("MV", str(tmp_path / "a")), ("3D | full", str(tmp_path / "b"))],
                          str(tmp_path / "out"))
  assert [os.path.basename(p) for p in written] == ["stage_table.md", "curves_pretrain.png",
                                                     "curves_pretrain_patch_fd.png"]
  table = (tmp_path / "out" / "stage_table.md").read_text().splitlines()
  assert len(table) == 4
  assert table[2].startswith("| MV | 3d | 25.00 | 21.00 | 17.50 | 19.25 | 18.00 (condition_image) "
                             "| 0.610 | 0.200 | 0.062 | 1.50 |")
  image = np.asarray(Image.open(written[1]))
  assert image.shape == (320, 560, 3) and len(np.unique(image.reshape(-1, 3), axis=0)) > 3
  steps, values = results.read_metrics(str(tmp_path / "pre"))["eval/psnr_other"]
  np.testing.assert_array_equal(steps, [0, 20])   # the non-finite point is left out
  np.testing.assert_array_equal(values, [10.0, 14.0])


def test_sheet_top_keeps_whole_scenes():
  height, gap = 10, 4
  sheet = np.full((3 * 2 * height + 2 * gap, 8, 3), 255, np.uint8)
  for scene in range(3):
    sheet[scene * (2 * height + gap):scene * (2 * height + gap) + 2 * height] = scene
  top = results.sheet_top(sheet, 3, 2)
  assert top.shape[0] == 2 * 2 * height + gap
  assert top[-1, 0, 0] == 1 and top[0, 0, 0] == 0


def test_missing_inputs_are_named(tmp_path):
  with pytest.raises(results.ResultsError, match="report.json: no such file"):
    results.write([], [("x", str(tmp_path))], str(tmp_path / "out"))
  with pytest.raises(results.ResultsError, match="metrics.jsonl: no such file"):
    results.write([("x", str(tmp_path))], [], str(tmp_path / "out"))
  with pytest.raises(results.ResultsError, match="not name:path"):
    results._pairs(["nocolon"], "runs")
