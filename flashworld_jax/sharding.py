"""Logical-axis sharding: the one place that maps logical names to mesh axes.

Parameters and activations use different logical names (an activation named like a parameter axis
would put the same mesh axis on two dimensions). Every module annotates its parameters with names
from `PARAM_RULES` and constrains activations with `constrain(x, names)` over `ACTIVATION_RULES`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

# Parameters of the transformers (DiT, UMT5).
PARAM_RULES = (
    ("embed", "fsdp"),        # model width of a weight matrix
    ("heads", "tensor"),      # attention projections, heads × head_dim flattened
    ("mlp", "tensor"),        # feed-forward hidden
    ("vocab", "tensor"),      # token embedding rows
    ("text_embed", None),     # text-encoder width as seen by the DiT's text projection
    ("freq", None),           # sinusoid frequency features
    ("modulation", None),     # the 6 (or 2) AdaLN rows
    ("patch_in", None),       # flattened patch (channels × pixels) of the patch embedding
    ("patch_out", None),      # proj_out rows: patch position × output channel
    ("rel_buckets", None),    # relative-position buckets
    ("norm", None),           # norm scales and biases
    ("layers", None),         # stacked-layer axis of scanned blocks
)

# Parameters of the per-view convolutional networks (VAE encoder/decoder, Gaussian decoder).
CONV_RULES = (
    ("conv_height", None),
    ("conv_width", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
)

# Activations.
ACTIVATION_RULES = (
    ("act_batch", ("data", "fsdp")),
    ("act_views", ("data", "fsdp")),   # per-view networks treat views as batch
    ("act_length", "sequence"),
    ("act_kv_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_head_dim", None),
    ("act_mlp", "tensor"),
    ("act_channels", None),
    ("act_height", None),
    ("act_width", None),
)

LOGICAL_RULES = PARAM_RULES + CONV_RULES + ACTIVATION_RULES


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, sequence: int = 1,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A (data, fsdp, tensor, sequence) mesh with Auto axes; `data=-1` takes the remaining devices."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor, sequence]
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if -1 in sizes:
    if len(devices) % fixed:
      raise ValueError(f"mesh: {len(devices)} devices do not divide by fsdp·tensor·sequence = {fixed}")
    sizes[sizes.index(-1)] = len(devices) // fixed
  total = int(np.prod(sizes))
  if total > len(devices):
    raise ValueError(f"mesh: {dict(zip(MESH_AXES, sizes))} needs {total} devices, have {len(devices)}")
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices[:total])


def single_device_mesh() -> jax.sharding.Mesh:
  return make_mesh(1, 1, 1, 1, devices=jax.devices()[:1])


def mesh_from_config(mesh_cfg) -> jax.sharding.Mesh:
  return make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, mesh_cfg.sequence)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Training batches: the leading axis split over the mesh's batch axes (data, fsdp)."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def process_batch_rows(mesh: jax.sharding.Mesh, batch_size: int) -> np.ndarray:
  """The rows of a global batch this process's devices hold, ascending.

  What the process reads of each batch, in the order `jax.make_array_from_process_local_data`
  places it. Asked of the sharding rather than derived from the process index, because a pod's
  mesh orders devices by the interconnect, not by process.
  """
  indices = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  rows = {row for index in indices.values() for row in range(*index[0].indices(batch_size))}
  return np.asarray(sorted(rows), np.int64)


def logical_to_spec(logical_names: Sequence[str | None]) -> P:
  table = dict(LOGICAL_RULES)
  unknown = [n for n in logical_names if n is not None and n not in table]
  if unknown:
    raise KeyError(f"logical axis names {unknown} are not in flashworld_jax.sharding.LOGICAL_RULES")
  return P(*(None if n is None else table[n] for n in logical_names))


def constrain(x: jax.Array, logical_names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names.

  A no-op outside a mesh context and on concrete arrays (eager calls): the constraint guides the
  partitioner inside jit, while eager arrays keep whatever placement they already have.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty or not isinstance(x, jax.core.Tracer):
    return x
  spec = logical_to_spec(logical_names)
  if mesh.manual_axes:
    # Inside `shard_map` the manual axes are already split; only the automatic ones can be asked.
    spec = P(*(_without(entry, mesh.manual_axes) for entry in spec))
  return jax.lax.with_sharding_constraint(x, spec)


def _mesh_axes_of(entry) -> tuple[str, ...]:
  """The mesh axes of one PartitionSpec entry (None, a name or a tuple of names)."""
  return tuple(a for a in (entry if isinstance(entry, tuple) else (entry,)) if a is not None)


def _without(entry, axes):
  kept = tuple(a for a in _mesh_axes_of(entry) if a not in axes)
  return kept if len(kept) > 1 else (kept[0] if kept else None)


def map_local_batch(fn: Callable[[Any, Any], Any], batched: Any, replicated: Any = (), *,
                    logical_name: str = "act_batch") -> Any:
  """`fn(replicated, batched)`, each device working on its own slice of the leading axis of every
  `batched` leaf (the mesh axes of `logical_name`); every output leaf is batched along that axis.

  For loops over a sharded batch: GSPMD partitions a `lax.map` / `lax.scan` over a sharded axis by
  all-gathering its operands, so every device would run (and hold) every iteration. Here each device
  loops over its own part. `replicated` (e.g. a module's weights) is gathered whole onto every
  device, and its gradient is summed over them. Without a mesh, or where those axes have size 1,
  this is the plain call.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return fn(replicated, batched)
  axes = tuple(a for a in _mesh_axes_of(logical_to_spec((logical_name,))[0])
               if a in mesh.axis_names and a not in mesh.manual_axes and mesh.shape[a] > 1)
  if not axes:
    return fn(replicated, batched)
  devices = math.prod(mesh.shape[a] for a in axes)
  sizes = sorted({x.shape[0] for x in jax.tree.leaves(batched)})
  if len(sizes) != 1 or sizes[0] % devices:
    raise ValueError(f"map_local_batch: leading sizes {sizes} must be one size divisible by the "
                     f"{devices} devices of mesh axes {axes} ({logical_name!r})")
  # check_vma=False: Pallas kernels (the TPU compositor) return values without the varying-axes
  # annotation; the cotangents of `replicated` are then summed over `axes`, as they should be.
  return jax.shard_map(fn, in_specs=(P(), P(axes)), out_specs=P(axes), axis_names=set(axes),
                       check_vma=False)(replicated, batched)


def rules():
  """Context manager installing the logical rules for NNX variable creation."""
  return nnx.logical_axis_rules(LOGICAL_RULES)


def named_sharding(mesh: jax.sharding.Mesh, logical_names: Sequence[str | None]) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical_names))
