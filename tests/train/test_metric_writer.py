"""MetricWriter: scalars through JSONL and TensorBoard event files, images, resume, process 0 only."""
import io
import os
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from flashworld_jax.train import metric_writer
from flashworld_jax.train.metric_writer import MetricWriter


def _log(workdir, steps, scale=1.0):
  with MetricWriter(workdir, process_index=0) as writer:
    for step in steps:
      writer.write_scalars(step, {"loss": scale * step, "lr": np.float32(0.5), "g": jnp.asarray(2.0)})


def test_scalars_round_trip_through_jsonl_and_tensorboard(tmp_path):
  workdir = str(tmp_path)
  _log(workdir, range(1, 4))
  rows = metric_writer.read_metrics(workdir)
  assert rows == [{"step": s, "loss": float(s), "lr": 0.5, "g": 2.0} for s in range(1, 4)]
  scalars = metric_writer.read_tensorboard_scalars(os.path.join(workdir, "tensorboard"))
  assert scalars == {"loss": [(1, 1.0), (2, 2.0), (3, 3.0)], "lr": [(s, 0.5) for s in range(1, 4)],
                     "g": [(s, 2.0) for s in range(1, 4)]}
  files = os.listdir(os.path.join(workdir, "tensorboard"))
  assert len(files) == 1 and ".tfevents." in files[0]
  single = metric_writer.read_tensorboard_scalars(os.path.join(workdir, "tensorboard", files[0]))
  assert single == scalars


def test_rows_are_flushed_per_write_and_non_finite_values_kept(tmp_path):
  writer = MetricWriter(str(tmp_path), process_index=0)
  writer.write_scalars(7, {"loss": float("nan"), "grad_norm": float("inf")})
  (row,) = metric_writer.read_metrics(str(tmp_path))    # before close: already on disk
  assert row["step"] == 7 and np.isnan(row["loss"]) and row["grad_norm"] == float("inf")
  with pytest.raises(ValueError, match="expected a scalar"):
    writer.write_scalars(8, {"loss": np.zeros(2)})
  with pytest.raises(ValueError, match="'step' is the row's key"):
    writer.write_scalars(8, {"step": 1})
  writer.close()


def test_resume_truncates_rows_and_tensorboard_points_after_the_checkpoint(tmp_path):
  workdir = str(tmp_path)
  _log(workdir, range(1, 6))                           # the crashed run got to step 5
  with open(os.path.join(workdir, "metrics.jsonl"), "ab") as f:
    f.write(b'{"step": 6, "lo')                        # ... and died mid-row
  assert [r["step"] for r in metric_writer.read_metrics(workdir)] == [1, 2, 3, 4, 5]
  with MetricWriter(workdir, process_index=0) as writer:     # resumed from the checkpoint at 3
    writer.truncate_after(3)
    assert [r["step"] for r in metric_writer.read_metrics(workdir)] == [1, 2, 3]
    for step in (4, 5, 6):
      writer.write_scalars(step, {"loss": 10.0 * step, "lr": 0.5, "g": 2.0})
  rows = metric_writer.read_metrics(workdir)
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0),
                                                    (5, 50.0), (6, 60.0)]
  scalars = metric_writer.read_tensorboard_scalars(os.path.join(workdir, "tensorboard"))
  assert scalars["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
  assert not any(name.endswith(".tmp") for name in os.listdir(workdir))


def test_an_unterminated_row_is_cut_before_appending(tmp_path):
  workdir = str(tmp_path)
  _log(workdir, [1])
  with open(os.path.join(workdir, "metrics.jsonl"), "ab") as f:
    f.write(b'{"step": 2, "lo')
  _log(workdir, [2])                                   # resumed without truncate_after
  assert [r["step"] for r in metric_writer.read_metrics(workdir)] == [1, 2]


def test_images_as_png_and_tensorboard(tmp_path):
  workdir = str(tmp_path)
  rng = np.random.default_rng(0)
  images = {"eval/render": rng.integers(0, 256, (12, 20, 3), dtype=np.uint8),
            "target": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)}
  with MetricWriter(workdir, process_index=0) as writer:
    writer.write_images(40, images)
    with pytest.raises(ValueError, match="expected uint8"):
      writer.write_images(40, {"bad": np.zeros((8, 8, 3), np.float32)})
  folder = os.path.join(workdir, "images", "40")
  assert sorted(os.listdir(folder)) == ["eval_render.png", "target.png"]
  np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(folder, "eval_render.png"))),
                                images["eval/render"])
  logged = {}
  for event in metric_writer.read_events(os.path.join(workdir, "tensorboard")):
    for value in event.summary.value:
      if value.HasField("image"):
        logged[value.tag] = (event.step, value.image)
  assert sorted(logged) == ["eval/render", "target"]
  for name, (step, image) in logged.items():
    assert step == 40 and (image.height, image.width) == images[name].shape[:2]
    decoded = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
    np.testing.assert_array_equal(decoded, images[name])


def test_other_processes_write_nothing(tmp_path):
  workdir = str(tmp_path / "run")
  with MetricWriter(workdir, process_index=1) as writer:
    assert not writer.active
    writer.write_scalars(1, {"loss": 1.0})
    writer.write_images(1, {"x": np.zeros((4, 4, 3), np.uint8)})
    writer.truncate_after(0)
    writer.flush()
  assert not os.path.exists(workdir)
  assert metric_writer.read_metrics(workdir) == []


def test_event_reader_checks_framing(tmp_path):
  workdir = str(tmp_path)
  _log(workdir, range(1, 4))
  (name,) = os.listdir(os.path.join(workdir, "tensorboard"))
  path = os.path.join(workdir, "tensorboard", name)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:                          # a writer killed mid-record
    f.write(data[:-5])
  scalars = metric_writer.read_tensorboard_scalars(path)
  assert scalars["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0)] and scalars["g"] == [(1, 2.0), (2, 2.0)]
  (length,) = struct.unpack("<Q", data[:8])
  corrupt = bytearray(data)
  corrupt[12 + length // 2] ^= 0xFF                    # a flipped bit in the first record's data
  with open(path, "wb") as f:
    f.write(bytes(corrupt))
  with pytest.raises(ValueError, match="bad data checksum"):
    metric_writer.read_tensorboard_scalars(path)
  with pytest.raises(FileNotFoundError):
    metric_writer.read_tensorboard_scalars(str(tmp_path / "missing"))
  with open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8") as f:
    f.write("not json\n{}\n")
  with pytest.raises(ValueError, match=r"metrics.jsonl:4: not a JSON row"):
    metric_writer.read_metrics(workdir)
