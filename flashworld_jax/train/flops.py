"""FLOPs of a traced step, counted from its jaxpr: every loop at its trip count.

XLA's `cost_analysis()` counts a while loop's body once whatever its trip count (a scan of ten
matmuls reports the FLOPs of one; `tests/train/test_flops.py`), so a step whose DiT layers, views
and scenes are loops reports a fraction of its work. And the TPU compiler rewrites many dots as
convolutions with dilated windows, which an HLO count cannot read back. The jaxpr keeps the
program as written: here matmul and convolution FLOPs are summed over it, a scan's body times its
length, a `shard_map` body times its devices, a conditional at its costliest branch (the step's
worst case); the backward pass and rematerialised forward passes are in the jaxpr and are counted.
Pallas kernels add the FLOPs of the cost estimate they carry, else of their body at every grid
point; a `while` with a data-dependent trip count is counted once and reported.
"""
from __future__ import annotations

import dataclasses
import math

from jax.extend import core as jex_core


@dataclasses.dataclass
class Count:
  flops: float = 0.0
  kernels_without_cost: int = 0    # Pallas calls with a dynamic grid and no estimate: zero
  while_loops: int = 0             # data-dependent loops, counted once

  def __add__(self, other: "Count") -> "Count":
    return Count(self.flops + other.flops, self.kernels_without_cost + other.kernels_without_cost,
                 self.while_loops + other.while_loops)

  def times(self, n: float) -> "Count":
    return dataclasses.replace(self, flops=self.flops * n)


def _dot(eqn) -> float:
  (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contracting)


def _convolution(eqn) -> float:
  """Multiply-adds over the window at every output position, input dilation's holes excluded."""
  numbers = eqn.params["dimension_numbers"]
  kernel = eqn.invars[1].aval.shape
  out_feature_dim = numbers.rhs_spec[0]
  per_output = math.prod(n for d, n in enumerate(kernel) if d != out_feature_dim)
  holes = math.prod(eqn.params.get("lhs_dilation") or (1,))
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output / holes


def _kernel(eqn) -> Count:
  """A Pallas call: its cost estimate, else its body's FLOPs at every grid point (every block of
  splash attention's full mask is computed)."""
  cost = eqn.params.get("cost_estimate")
  if cost is not None:
    return Count(float(cost.flops))
  grid = eqn.params["grid_mapping"].grid
  if not all(isinstance(n, int) for n in grid):
    return Count(kernels_without_cost=1)
  return count_jaxpr(eqn.params["jaxpr"]).times(math.prod(grid))


def _sub_jaxprs(value):
  if isinstance(value, jex_core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, jex_core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def count_jaxpr(jaxpr) -> Count:
  """The FLOPs of a (closed) jaxpr, summed over every device that runs a part of it."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = Count()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += Count(_dot(eqn))
    elif name == "conv_general_dilated":
      total += Count(_convolution(eqn))
    elif name == "pallas_call":
      total += _kernel(eqn)
    elif name == "cond":
      total += max((count_jaxpr(b) for b in eqn.params["branches"]), key=lambda c: c.flops)
    elif name == "scan":
      total += count_jaxpr(eqn.params["jaxpr"]).times(eqn.params["length"])
    elif name == "while":
      total += count_jaxpr(eqn.params["body_jaxpr"]) + Count(while_loops=1)
    elif name == "shard_map":
      mesh = eqn.params["mesh"]
      devices = math.prod(mesh.shape[a] for a in eqn.params["newly_manual_axes"])
      total += count_jaxpr(eqn.params["jaxpr"]).times(devices)
    else:
      for sub in (j for v in eqn.params.values() for j in _sub_jaxprs(v)):
        total += count_jaxpr(sub)
  return total
