"""Declarative mapping tables: one row per target leaf, with its source key(s) and a transform.

`build_state` checks before placing anything: every target leaf is produced exactly once, every source
tensor is consumed or explicitly ignored, and shapes match. Errors list the offending names.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence

import jax
import numpy as np
from flax import nnx

from flashworld_jax.convert.sources import ConversionError, TensorSource

Transform = Callable[..., np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
  """`target` is a '/'-joined NNX state path; `sources` are the keys fed to `transform`."""
  target: str
  sources: tuple[str, ...]
  transform: Transform = lambda x: x


# Common transforms (PyTorch layout → JAX layout).
def linear(w):  # (out, in) → (in, out)
  return np.asarray(w).T


def conv2d(w):  # (out, in, kh, kw) → (kh, kw, in, out)
  return np.asarray(w).transpose(2, 3, 1, 0)


def causal_conv_last_tap(w):
  """Causal 3D conv (out, in, kt, kh, kw) → 2D HWIO using the last temporal tap (T = 1 rule)."""
  w = np.asarray(w)
  if w.ndim == 4:
    return conv2d(w)
  return conv2d(w[:, :, -1])


def flatten(w):
  return np.asarray(w).reshape(-1)


def stacked_rules(target: str, source_pattern: str, num_layers: int,
                  transform: Transform = lambda x: x) -> Rule:
  """One rule for a scanned-layer leaf: `source_pattern` has `{i}` for the layer index.

  Layers whose source shapes differ are a ConversionError naming each key and shape.
  """
  keys = tuple(source_pattern.format(i=i) for i in range(num_layers))

  def stack(*arrays):
    shapes = [np.shape(a) for a in arrays]
    if len(set(shapes)) > 1:
      listing = ", ".join(f"{k} {s}" for k, s in zip(keys, shapes))
      raise ConversionError(f"{target}: per-layer source tensors differ in shape: {listing}")
    return np.stack([transform(a) for a in arrays], axis=0)

  return Rule(target, keys, stack)


def _abstract(leaf):
  return leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf


def state_paths(state: nnx.State) -> dict[str, jax.ShapeDtypeStruct]:
  """'/'-joined path → abstract leaf (shape, dtype and, when built under a mesh, sharding)."""
  return {"/".join(str(p) for p in path): _abstract(leaf) for path, leaf in nnx.to_flat_state(state)}


def build_state(abstract_state: nnx.State, rules: Sequence[Rule], source: TensorSource,
                ignored: Iterable[str] = (), what: str = "model") -> nnx.State:
  """Fills `abstract_state` (ShapeDtypeStruct leaves, optionally sharded) from `source`."""
  targets = state_paths(abstract_state)
  ignore_patterns = [re.compile(p) for p in ignored]
  problems = []

  seen_targets = {}
  for rule in rules:
    if rule.target in seen_targets:
      problems.append(f"target {rule.target!r} is produced twice")
    seen_targets[rule.target] = rule
  missing_targets = sorted(set(targets) - set(seen_targets))
  if missing_targets:
    problems.append(f"no rule produces {len(missing_targets)} target leaf/leaves: {missing_targets}")
  unknown_targets = sorted(set(seen_targets) - set(targets))
  if unknown_targets:
    problems.append(f"rules name target(s) the {what} does not have: {unknown_targets}")

  used = {k for rule in rules for k in rule.sources}
  missing_sources = sorted(k for k in used if k not in source)
  if missing_sources:
    problems.append(f"missing source tensor(s) in {source.description}: {missing_sources}")
  unexpected = sorted(k for k in source if k not in used
                      and not any(p.fullmatch(k) for p in ignore_patterns))
  if unexpected:
    problems.append(f"unexpected source tensor(s) in {source.description}: {unexpected}")
  if problems:
    raise ConversionError(f"cannot convert {what}:\n  " + "\n  ".join(problems))

  values, shape_errors = {}, []
  for path, leaf in targets.items():
    rule = seen_targets[path]
    array = np.asarray(rule.transform(*(source[k] for k in rule.sources)))
    if tuple(array.shape) != tuple(leaf.shape):
      shape_errors.append(f"{path}: from {list(rule.sources)[:2]}{'…' if len(rule.sources) > 2 else ''} "
                          f"got shape {tuple(array.shape)}, expected {tuple(leaf.shape)}")
      continue
    sharding = getattr(leaf, "sharding", None)
    array = array.astype(leaf.dtype)
    values[path] = jax.device_put(array, sharding) if sharding is not None else jax.numpy.asarray(array)
  if shape_errors:
    raise ConversionError(f"cannot convert {what}: shape mismatch:\n  " + "\n  ".join(shape_errors))

  flat = []
  for path, leaf in nnx.to_flat_state(abstract_state):
    value = values["/".join(str(p) for p in path)]
    flat.append((path, leaf.replace(value) if isinstance(leaf, nnx.Variable) else value))
  return nnx.from_flat_state(flat)
