"""Readers for source checkpoints: safetensors (single or sharded) and tensor-only torch pickles.

Everything comes out as a `TensorSource`: a lazy name → numpy array mapping that remembers which
names were read, so the mapping step can report unexpected keys.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping

import numpy as np


class ConversionError(ValueError):
  """A source checkpoint cannot be converted: missing, unexpected or mis-shaped tensors."""


class TensorSource(Mapping):
  """Lazy read-only mapping name → np.ndarray."""

  def __init__(self, shapes: Mapping[str, tuple[int, ...]], read: Callable[[str], np.ndarray],
               description: str):
    self._shapes = dict(shapes)
    self._read = read
    self.description = description

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._shapes:
      raise KeyError(name)
    return np.asarray(self._read(name))

  def __iter__(self) -> Iterator[str]:
    return iter(self._shapes)

  def __len__(self) -> int:
    return len(self._shapes)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._shapes[name])

  def subset(self, prefix: str) -> "TensorSource":
    """The tensors under `prefix.`, with the prefix removed."""
    names = {k[len(prefix) + 1:]: v for k, v in self._shapes.items() if k.startswith(prefix + ".")}
    if not names:
      raise ConversionError(f"{self.description}: no tensors under {prefix!r}")
    return TensorSource(names, lambda k: self._read(f"{prefix}.{k}"),
                        f"{self.description}[{prefix}]")


def source_config(path: str) -> dict | None:
  """The `config.json` next to the weights at `path` (a directory, index JSON or file), or None."""
  config_path = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
  if not os.path.isfile(config_path):
    return None
  try:
    with open(config_path) as f:
      config = json.load(f)
  except (OSError, ValueError) as e:
    raise ConversionError(f"{config_path}: not readable as JSON ({e})") from e
  if not isinstance(config, dict):
    raise ConversionError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
  return config


def check_config(source_config: Mapping, expected: Mapping[str, tuple[str, object]],
                 what: str) -> None:
  """Refuses a source config that disagrees with ours, naming every disagreeing field at once.

  `expected` maps a source field to (our field, our value). Fields the source leaves out or sets to
  null are not compared: the source library then uses its default, which its tensors still show.
  """
  wrong = []
  for field, (ours, value) in expected.items():
    theirs = source_config.get(field)
    if theirs is not None and _plain(theirs) != _plain(value):
      wrong.append(f"{field}={theirs!r} (ours: {ours}={value!r})")
  if wrong:
    raise ConversionError(f"{what} disagrees with our config: " + ", ".join(wrong))


def _plain(value):
  """JSON lists and our tuples compare equal."""
  return tuple(value) if isinstance(value, (list, tuple)) else value


def from_arrays(arrays: Mapping[str, np.ndarray], description: str = "arrays") -> TensorSource:
  return TensorSource({k: np.shape(v) for k, v in arrays.items()}, lambda k: arrays[k], description)


def _safetensors_files(path: str) -> list[str]:
  if os.path.isfile(path):
    if path.endswith(".index.json"):
      with open(path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ConversionError(f"{path}: an index JSON needs a 'weight_map' object")
      base = os.path.dirname(path)
      return sorted({os.path.join(base, v) for v in weight_map.values()})
    return [path]
  if os.path.isdir(path):
    indexes = sorted(f for f in os.listdir(path) if f.endswith(".safetensors.index.json"))
    if len(indexes) > 1:
      raise ConversionError(f"{path}: more than one safetensors index ({indexes}); name the file")
    if indexes:
      return _safetensors_files(os.path.join(path, indexes[0]))
    files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
    if files:
      return files
  raise ConversionError(f"{path!r}: no safetensors file, index JSON or directory holding them")


def read_safetensors(path: str) -> TensorSource:
  """A safetensors file, a sharded set (index JSON or its directory), read with numpy."""
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel

  files = _safetensors_files(path)
  for f in files:
    if not os.path.isfile(f):
      raise ConversionError(f"{path}: shard {f!r} listed in the index does not exist")
  location, shapes = {}, {}
  for f in files:
    with safe_open(f, framework="np") as handle:
      for name in handle.keys():
        if name in location:
          raise ConversionError(f"{path}: tensor {name!r} appears in both {location[name]} and {f}")
        location[name] = f
        shapes[name] = tuple(handle.get_slice(name).get_shape())

  def read(name):
    with safe_open(location[name], framework="np") as handle:
      return handle.get_tensor(name)

  return TensorSource(shapes, read, path)


def read_torch_checkpoint(path: str) -> TensorSource:
  """A torch-serialised dict of state dicts, loaded with tensor-only unpickling.

  Nested dicts are flattened with '.' (so `model.ckpt`'s `transformer` state dict becomes the
  `transformer.*` names). Files that need arbitrary code to unpickle are refused.
  """
  if not os.path.isfile(path):
    raise ConversionError(f"{path!r} does not exist")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConversionError(
        f"{path}: reading a torch checkpoint needs torch (pip install torch==2.13.0); "
        "or convert it to safetensors first") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
  except Exception as e:  # torch raises UnpicklingError or RuntimeError for unsafe content.
    raise ConversionError(
        f"{path}: refused by tensor-only unpickling ({type(e).__name__}: {str(e).splitlines()[0]}); "
        "files that need arbitrary code are not loaded") from e
  flat = {}

  def visit(prefix, value):
    if isinstance(value, dict):
      for k, v in value.items():
        visit(f"{prefix}.{k}" if prefix else str(k), v)
    elif isinstance(value, torch.Tensor):
      flat[prefix] = value
    # Non-tensor leaves (step counters, hyper-parameters) are not weights.

  visit("", obj)
  if not flat:
    raise ConversionError(f"{path}: no tensors found")

  def read(name):
    t = flat[name]
    if t.dtype == torch.bfloat16:
      import ml_dtypes  # pylint: disable=import-outside-toplevel
      return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()

  return TensorSource({k: tuple(v.shape) for k, v in flat.items()}, read, path)


def read_any(path: str) -> TensorSource:
  """safetensors (file, index or directory) or a torch checkpoint, by what `path` is."""
  if os.path.isdir(path) or path.endswith((".safetensors", ".json")):
    return read_safetensors(path)
  return read_torch_checkpoint(path)
