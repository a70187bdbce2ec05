r"""The README's Results from runs and evaluation reports: the stage table and the training curves.

  python -m flashworld_jax.train.results \
      --runs=vae:runs/demo_vae,pretrain:runs/demo_pretrain,distill:runs/demo_distill \
      --reports="pre-trained MV mode:eval/pretrain_mv,pre-trained 3D mode:eval/pretrain_3d" \
      --output=docs/results

Writes `<output>/stage_table.md` (one row per report: PSNR at the conditioning view, the other
input views, the novel views and every view but the conditioning one, SSIM and depth abs-rel there,
the best trivial baseline's PSNR on the same views, the patch Fréchet distance there and seconds
per scene), `<output>/curves_<run>.png` (each run's held-out evaluation metrics over training
steps, from its `metrics.jsonl`), `<output>/curves_<run>_patch_fd.png` (its patch Fréchet
distances, if logged) and, with `--contact_sheet=<evaluate output>`, `<output>/contact_sheet.png`:
the first `--sheet_scenes` scenes of that evaluation's sheet. Images are drawn with PIL: no plotting
dependency.
"""
from __future__ import annotations

import json
import math
import os

from absl import app, flags
import numpy as np
from PIL import Image, ImageDraw

from flashworld_jax import cli
from flashworld_jax.io import atomic, images

# Held-out metrics plotted per stage, when the run logged them.
CURVES = ("eval/psnr_reconstruction", "eval/psnr_condition_view", "eval/psnr_input_other",
          "eval/psnr_novel", "eval/psnr_other")
# The FID-like patch Fréchet distance (`train.patch_frechet`), drawn apart: another scale.
FRECHET_CURVES = ("eval/patch_fd_novel", "eval/patch_fd_other")
_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189))
_SIZE, _MARGIN = (560, 320), (48, 16, 16, 36)   # image; left, top, right, bottom margins


class ResultsError(ValueError):
  """A missing run or report; reported as one line, exit status 1."""


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
  pairs = []
  for value in values:
    name, sep, path = value.rpartition(":")
    if not sep or not name or not path:
      raise ResultsError(f"--{flag}: {value!r} is not name:path")
    pairs.append((name, path))
  return pairs


def read_metrics(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Every scalar of a run's metrics.jsonl as (steps, values), in step order."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise ResultsError(f"{path}: no such file (a training run's workdir was expected)")
  series: dict[str, list[tuple[int, float]]] = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
          series.setdefault(key, []).append((row["step"], float(value)))
  return {k: tuple(np.asarray(v).T for v in zip(*sorted(points)))
          for k, points in series.items()}


def plot(series: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> np.ndarray:
  """A line chart (uint8 [H, W, 3]) of (steps, values) series with axes, ticks and a legend."""
  width, height = _SIZE
  left, top, right, bottom = _MARGIN
  image = Image.new("RGB", _SIZE, "white")
  draw = ImageDraw.Draw(image)
  steps = np.concatenate([s for s, _ in series.values()])
  values = np.concatenate([v for _, v in series.values()])
  x_max = max(float(steps.max()), 1.0)
  y_low, y_high = math.floor(values.min()), math.ceil(values.max())
  y_high = max(y_high, y_low + 1)
  to_x = lambda s: left + (width - left - right) * s / x_max  # noqa: E731
  to_y = lambda v: height - bottom - (height - top - bottom) * (v - y_low) / (y_high - y_low)  # noqa: E731
  draw.rectangle((left, top, width - right, height - bottom), outline="black")
  for v in np.linspace(y_low, y_high, 5):
    draw.line((left - 4, to_y(v), left, to_y(v)), fill="black")
    draw.text((4, to_y(v) - 6), f"{v:.{2 if y_high - y_low < 4 else 1}f}", fill="black")
  for s in np.linspace(0, x_max, 5):
    draw.line((to_x(s), height - bottom, to_x(s), height - bottom + 4), fill="black")
    draw.text((to_x(s) - 12, height - bottom + 6), f"{s:.0f}", fill="black")
  draw.text((left + 4, 2), title, fill="black")
  draw.text((width - right - 30, height - 14), "step", fill="black")
  for i, (name, (s, v)) in enumerate(series.items()):
    colour = _COLOURS[i % len(_COLOURS)]
    points = [(to_x(a), to_y(b)) for a, b in zip(s, v)]
    if len(points) > 1:
      draw.line(points, fill=colour, width=2)
    for x, y in points:
      draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    draw.text((left + 8, top + 4 + 12 * i), name, fill=colour)
  return np.asarray(image)


def _report(folder: str) -> dict:
  path = os.path.join(folder, "report.json")
  if not os.path.isfile(path):
    raise ResultsError(f"{path}: no such file (run python -m flashworld_jax.evaluate first)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _cell(value, digits: int = 2) -> str:
  return "–" if value is None or (isinstance(value, float) and not math.isfinite(value)) else (
      f"{value:.{digits}f}")


def stage_table(rows: list[tuple[str, dict]]) -> str:
  """Markdown: one row per (label, evaluation report)."""
  lines = ["| stage | mode | PSNR cond. view | PSNR other inputs | PSNR novel | PSNR all others "
           "| best baseline, all others | SSIM all others | depth abs-rel all others "
           "| patch FD all others | s / scene |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for label, report in rows:
    m = report["metrics"]
    baseline = report.get("model_vs_best_baseline", {}).get("other", {})
    seconds = np.mean([s["generation_seconds"] for s in report["scenes"]])
    lines.append(
        f"| {label} | {report['mode']} | {_cell(m.get('psnr_condition_view'))} | "
        f"{_cell(m.get('psnr_input_other'))} | {_cell(m.get('psnr_novel'))} | "
        f"{_cell(m.get('psnr_other'))} | {_cell(baseline.get('best_baseline_psnr'))} "
        f"({baseline.get('best_baseline', '–')}) | {_cell(m.get('ssim_other'), 3)} | "
        f"{_cell(m.get('depth_abs_rel_other'), 3)} | {_cell(m.get('patch_fd_other'), 3)} | "
        f"{_cell(float(seconds))} |")
  return "\n".join(lines) + "\n"


def sheet_top(sheet: np.ndarray, num_scenes: int, keep: int) -> np.ndarray:
  """The first `keep` scenes of an `evaluate` contact sheet of `num_scenes` (each scene's rows are
  ground truth over renders, scenes apart by a 4-pixel white gap)."""
  gap = 4
  scene_height = (sheet.shape[0] + gap) // num_scenes
  return sheet[:min(keep, num_scenes) * scene_height - gap]


def write(runs: list[tuple[str, str]], reports: list[tuple[str, str]], output: str,
          contact_sheet: str | None = None, sheet_scenes: int = 4) -> list[str]:
  """Writes the table, the curves and the contact sheet; returns the written paths."""
  rows = [(label, _report(folder)) for label, folder in reports]
  curves = [(name, read_metrics(workdir)) for name, workdir in runs]
  os.makedirs(output, exist_ok=True)
  written = []
  if rows:
    path = os.path.join(output, "stage_table.md")
    atomic.write_text(path, stage_table(rows))
    written.append(path)
  for name, metrics in curves:
    shown = {key.removeprefix("eval/"): metrics[key] for key in CURVES if key in metrics}
    if not shown:
      raise ResultsError(f"run {name!r}: its metrics.jsonl has none of {CURVES}")
    path = os.path.join(output, f"curves_{name}.png")
    atomic.write_bytes(path, images.encode_png(plot(shown, f"{name}: held-out PSNR (dB)")))
    written.append(path)
    shown = {key.removeprefix("eval/"): metrics[key] for key in FRECHET_CURVES if key in metrics}
    if shown:
      path = os.path.join(output, f"curves_{name}_patch_fd.png")
      atomic.write_bytes(path, images.encode_png(
          plot(shown, f"{name}: held-out patch Frechet distance (lower is closer to real)")))
      written.append(path)
  if contact_sheet:
    report = _report(contact_sheet)
    sheet = images.decode_image(os.path.join(contact_sheet, "contact_sheet.png"))
    path = os.path.join(output, "contact_sheet.png")
    atomic.write_bytes(path, images.encode_png(sheet_top(sheet, len(report["scenes"]), sheet_scenes)))
    written.append(path)
  return written


def define_flags() -> None:
  """Defined when run as a command only: other entry points have an --output of their own."""
  flags.DEFINE_list("runs", [], "name:workdir pairs of training runs.")
  flags.DEFINE_list("reports", [], "row label:folder pairs of `evaluate` outputs.")
  flags.DEFINE_string("output", "docs/results", "Folder for the table and the curves.")
  flags.DEFINE_string("contact_sheet", None, "An `evaluate` output whose sheet to copy.")
  flags.DEFINE_integer("sheet_scenes", 4, "Scenes of that sheet to keep.", lower_bound=1)


def main(argv):
  fv = flags.FLAGS
  try:
    if len(argv) > 1:
      raise ResultsError(f"unexpected arguments {argv[1:]}")
    for path in write(_pairs(fv.runs, "runs"), _pairs(fv.reports, "reports"), fv.output,
                      fv.contact_sheet, fv.sheet_scenes):
      print(path)
  except ResultsError as e:
    cli.exit_with_error(str(e))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
