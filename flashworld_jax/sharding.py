"""Logical-axis sharding: the one place that maps logical names to mesh axes.

Parameters and activations use different logical names (an activation named like a parameter axis
would put the same mesh axis on two dimensions). Every module annotates its parameters with names
from `PARAM_RULES` and constrains activations with `constrain(x, names)` over `ACTIVATION_RULES`.
"""
from __future__ import annotations

from collections.abc import Sequence

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
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_names))


def rules():
  """Context manager installing the logical rules for NNX variable creation."""
  return nnx.logical_axis_rules(LOGICAL_RULES)


def named_sharding(mesh: jax.sharding.Mesh, logical_names: Sequence[str | None]) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(logical_names))
