"""Training metrics on disk: `metrics.jsonl`, TensorBoard event files and PNG images, from process 0.

  <workdir>/metrics.jsonl          one {"step": k, name: value, ...} object per line, appended
  <workdir>/tensorboard/           event files (tensorboardX: no TensorFlow)
  <workdir>/images/<step>/<name>.png

A resumed run appends to the same files. It first calls `truncate_after(resumed_step)`, which drops
the JSONL rows a crashed run wrote past its last checkpoint and tells TensorBoard to hide the
events it logged there, so the curves show no duplicate or contradictory points. The readers
(`read_metrics`, `read_tensorboard_scalars`) apply the same rule.
"""
from __future__ import annotations

import io
import json
import os
import re
import struct
import time
from collections.abc import Iterator, Mapping

import jax
import numpy as np
import tensorboardX
from PIL import Image
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2

from flashworld_jax.io import atomic

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
IMAGES_DIR = "images"


class MetricWriter:
  """Writes scalars and images of a training run; a no-op on every process but 0.

  Use as a context manager, or call `close()`: TensorBoard events reach the disk every `flush_secs`,
  on `flush()` and on `close()`; JSONL rows at once.
  """

  def __init__(self, workdir: str, process_index: int | None = None, flush_secs: int = 30):
    self.workdir = workdir
    process_index = jax.process_index() if process_index is None else process_index
    self.active = process_index == 0
    self._fd = None
    self._tb = None
    if not self.active:
      return
    self._flush_secs = flush_secs
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, METRICS_FILE)
    _drop_torn_row(path)
    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    self._tb = self._open_tensorboard()

  def _open_tensorboard(self, purge_step: int | None = None) -> tensorboardX.SummaryWriter:
    # tensorboardX names event files by the second and host and opens them with "wb": a unique
    # suffix keeps a run restarted within the same second from truncating its predecessor's file.
    return tensorboardX.SummaryWriter(
        logdir=os.path.join(self.workdir, TENSORBOARD_DIR), purge_step=purge_step,
        flush_secs=self._flush_secs, filename_suffix=f".{os.getpid()}.{time.time_ns()}")

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One JSONL row (a single append, so a crash never leaves half a row) and TensorBoard scalars.

    Values may be Python, numpy or JAX scalars; NaN and ±inf are kept (Python's json reads them).
    """
    if not self.active:
      return
    step = int(step)
    values = {name: _scalar(name, value) for name, value in scalars.items()}
    if "step" in values:
      raise ValueError("'step' is the row's key; it cannot also be a metric name")
    line = (json.dumps({"step": step, **values}) + "\n").encode("utf-8")
    if os.write(self._fd, line) != len(line):
      raise OSError(f"{self.workdir}/{METRICS_FILE}: short write (disk full?)")
    for name, value in values.items():
      self._tb.add_scalar(name, value, step)

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """uint8 [H, W, 3] images to TensorBoard and to `images/<step>/<name>.png` (atomically)."""
    if not self.active:
      return
    step = int(step)
    folder = os.path.join(self.workdir, IMAGES_DIR, str(step))
    for name, image in images.items():
      image = np.asarray(image)
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image {name!r}: expected uint8 [H, W, 3], got {image.dtype} "
                         f"{list(image.shape)}")
      png = io.BytesIO()
      Image.fromarray(image).save(png, format="PNG")
      atomic.write_bytes(os.path.join(folder, _file_name(name) + ".png"), png.getvalue())
      self._tb.add_image(name, image, step, dataformats="HWC")

  def truncate_after(self, step: int) -> None:
    """Forgets what was logged after `step` (call on resume from the checkpoint at `step`).

    Rewrites metrics.jsonl with the rows of step ≤ `step` (temporary file, then os.replace) and
    writes TensorBoard's purge marker, which hides earlier events of step > `step`.
    """
    if not self.active:
      return
    step = int(step)
    path = os.path.join(self.workdir, METRICS_FILE)
    kept = [row for row in read_metrics(self.workdir) if row["step"] <= step]
    os.close(self._fd)
    atomic.write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
    self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    # The purge marker is written when a writer opens its event file, so open a new one.
    self._tb.close()
    self._tb = self._open_tensorboard(purge_step=step + 1)

  def flush(self) -> None:
    if self.active:
      self._tb.flush()

  def close(self) -> None:
    if self.active and self._fd is not None:
      os.close(self._fd)
      self._tb.close()
      self._fd = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _scalar(name: str, value) -> float:
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f"metric {name!r}: expected a scalar, got shape {list(array.shape)}")
  return float(array.reshape(()))


def _file_name(name: str) -> str:
  """A metric name as a file name: "eval/render 0" → "eval_render_0"."""
  return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _drop_torn_row(path: str) -> None:
  """Cuts an unterminated last row (a writer killed mid-row), so appended rows start on a new line."""
  if not os.path.exists(path):
    return
  with open(path, "rb") as f:
    data = f.read()
  if data and not data.endswith(b"\n"):
    os.truncate(path, data.rfind(b"\n") + 1)


def read_metrics(workdir: str) -> list[dict]:
  """The rows of `<workdir>/metrics.jsonl` in file order ([] if there is none).

  An unterminated last line (a writer killed mid-row) is ignored.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  rows = []
  for number, line in enumerate(lines[:-1], start=1):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{number}: not a JSON row ({e})") from None
  return rows


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data) & 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path: str) -> Iterator[bytes]:
  """The records of one TFRecord file: u64 length, u32 masked crc, data, u32 masked crc.

  A truncated last record (a writer killed mid-record) ends the file; a bad checksum raises.
  """
  with open(path, "rb") as f:
    data = f.read()
  offset = 0
  while offset + 12 <= len(data):
    header = data[offset:offset + 8]
    (length,) = struct.unpack("<Q", header)
    if struct.unpack_from("<I", data, offset + 8)[0] != _masked_crc(header):
      raise ValueError(f"{path}: bad length checksum at byte {offset}")
    end = offset + 12 + length + 4
    if end > len(data):
      return
    record = data[offset + 12:end - 4]
    if struct.unpack_from("<I", data, end - 4)[0] != _masked_crc(record):
      raise ValueError(f"{path}: bad data checksum in the record at byte {offset}")
    yield record
    offset = end


def _event_files(path: str) -> list[str]:
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: no TensorBoard event file or folder")
  return [os.path.join(path, n) for n in os.listdir(path) if ".tfevents." in n]


def read_events(path: str) -> list[event_pb2.Event]:
  """Every event of an event file, or of a folder's event files oldest first (by first wall time)."""
  per_file = []
  for file in _event_files(path):
    events = [event_pb2.Event.FromString(r) for r in _records(file)]
    if events:
      per_file.append(events)
  per_file.sort(key=lambda events: events[0].wall_time)
  return [event for events in per_file for event in events]


def read_tensorboard_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
  """Scalars {tag: [(step, value), ...]} in logging order, from an event file or a folder of them.

  Like TensorBoard, a purge marker at step s (SessionLog START, written by `truncate_after`) drops
  the points of step ≥ s logged before it.
  """
  scalars: dict[str, list[tuple[int, float]]] = {}
  for event in read_events(path):
    if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
      for tag, points in scalars.items():
        scalars[tag] = [(s, v) for s, v in points if s < event.step]
    for value in event.summary.value:
      if value.HasField("simple_value"):
        scalars.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
  return scalars
