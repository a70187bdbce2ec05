"""Ahead-of-time compilation of a training step from abstract shapes: no weight is allocated.

`compile_step(cfg, mesh)` builds the model and optimizer state with `nnx.eval_shape` under the mesh
(shapes, dtypes and shardings only), lowers the stage's jitted step on an abstract batch and compiles
it; `memory_analysis()` and `cost_analysis()` of the result give per-device bytes and FLOPs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from flashworld_jax import sharding
from flashworld_jax.models.dit import WanDiT
from flashworld_jax.models.flashworld import FlashWorld, _constructors
from flashworld_jax.models.gan_head import GANHead
from flashworld_jax.train import distill, flops, loop, pretrain
from flashworld_jax.train import state as state_lib
from kernels import platform


def abstract_batch(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> dict:
  """The pipeline's global batch (with the stage's constants) as ShapeDtypeStructs split over the
  mesh's batch axes."""
  d = cfg.data
  b, v, length = d.batch_size, d.num_input_views + d.num_novel_views, cfg.model.text.max_length
  spec = sharding.batch_sharding(mesh)
  shapes = {"images": ((b, v, d.height, d.width, 3), jnp.uint8),
            "cameras": ((b, v, 11), jnp.float32), "view_mask": ((b, v), jnp.bool_),
            "condition_index": ((b,), jnp.int32), "s_norm": ((b,), jnp.float32),
            "kind": ((b,), jnp.int32), "token_ids": ((b, length), jnp.int32),
            "token_mask": ((b, length), jnp.int32)}
  if cfg.stage == "distill":
    shapes.update(uncond_token_ids=((b, length), jnp.int32), uncond_token_mask=((b, length), jnp.int32))
  return {k: jax.ShapeDtypeStruct(s, dt, sharding=spec) for k, (s, dt) in shapes.items()}


def _flashworld(cfg):
  return FlashWorld(**{name: make() for name, make in _constructors(cfg.model, 0).items()})


def _abstract_split(make_module, filters, mesh):
  """(graphdef, abstract states per filter and the rest), each leaf with its target sharding."""
  with jax.set_mesh(mesh), sharding.rules():
    graphdef, *states = nnx.split(nnx.eval_shape(make_module), *filters, ...)
  return graphdef, [jax.tree.map(_with_named_sharding(mesh), s) for s in states]


def _optimizer_state(tx, params, mesh):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      jax.eval_shape(tx.init, params), state_lib.optimizer_shardings(tx, params, mesh))


def _replicated(mesh, shape, dtype):
  return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, P()))


def _key_data(mesh):
  key = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
  return _replicated(mesh, key.shape, key.dtype)


def _pretrain_state(cfg, mesh):
  tx = state_lib.make_optimizer(cfg.optimizer, cfg.num_steps)
  graphdef, (params, frozen) = _abstract_split(lambda: _flashworld(cfg),
                                               (state_lib.trainable(pretrain.TRAINABLE),), mesh)
  state = state_lib.TrainState(step=_replicated(mesh, (), jnp.int32), params=params,
                               opt_state=_optimizer_state(tx, params, mesh), ema=params,
                               rng=_key_data(mesh))
  return graphdef, state, frozen


def _distill_state(cfg, mesh):
  generator_tx, fake_tx = distill.optimizers(cfg)
  dit = cfg.model.dit

  def networks():
    return distill.Networks(_flashworld(cfg), WanDiT(dit, rngs=nnx.Rngs(1)),
                            WanDiT(dit, rngs=nnx.Rngs(2)),
                            GANHead(dit.num_heads * dit.head_dim, len(cfg.distill.gan_layers),
                                    cfg.distill.gan_channels, rngs=nnx.Rngs(3)))

  graphdef, (generator, fake, frozen) = _abstract_split(networks, (distill.GENERATOR, distill.FAKE),
                                                        mesh)
  state = distill.DistillState(
      step=_replicated(mesh, (), jnp.int32), generator=generator,
      generator_opt=_optimizer_state(generator_tx, generator, mesh), generator_ema=generator,
      fake=fake, fake_opt=_optimizer_state(fake_tx, fake, mesh), rng=_key_data(mesh))
  return graphdef, state, frozen


ABSTRACT_STATES = {"pretrain": _pretrain_state, "distill": _distill_state}


def _with_named_sharding(mesh):
  def convert(leaf):
    sharding_ = getattr(leaf, "sharding", None)
    if not isinstance(sharding_, NamedSharding):
      sharding_ = NamedSharding(mesh, P())
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding_)
  return convert


def trace_step(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, phase: str | None = None):
  """The stage's jitted step traced for `mesh` from abstract inputs (`jax.stages.Traced`).

  Distillation's step holds both updates behind a `cond` (the program a run compiles);
  `phase="generator"` or `"fake"` traces one of them alone so that each can be measured."""
  if phase is not None and cfg.stage != "distill":
    raise ValueError(f"--phase={phase!r} applies to distillation, not to stage {cfg.stage!r}")
  graphdef, state, frozen = ABSTRACT_STATES[cfg.stage](cfg, mesh)
  settings = loop.render_settings(cfg)
  step = (distill.make_step(cfg, graphdef, settings, phase) if phase is not None
          else loop.STAGES[cfg.stage].make_step(cfg, graphdef, settings))
  shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
  batch = abstract_batch(cfg, mesh)
  jitted = jax.jit(step, in_shardings=(shardings(state), shardings(frozen), shardings(batch)),
                   out_shardings=(shardings(state), None), donate_argnums=0)
  # The kernels of the mesh's platform (a TPU topology's, lowered on a CPU host), not the host's.
  with jax.set_mesh(mesh), platform.compiling_for(mesh.devices.flat[0].platform):
    return jitted.trace(state, frozen, batch)


def compile_step(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, phase: str | None = None):
  """(compiled, `flops.Count` of the whole step over all devices) of `trace_step`'s step, for any
  backend the mesh's devices have, including TPU topologies described by
  `jax.experimental.topologies`."""
  traced = trace_step(cfg, mesh, phase)
  with jax.set_mesh(mesh), platform.compiling_for(mesh.devices.flat[0].platform):
    return traced.lower().compile(), flops.count_jaxpr(traced.jaxpr)


def memory_and_flops(compiled, step_flops: flops.Count, num_devices: int) -> dict:
  """Per-device bytes (arguments, outputs, temporaries, aliased) and FLOPs of a compiled step.

  `flops` is the step's jaxpr count (`train.flops`: loops at their trip counts) shared evenly by
  the devices; `xla_cost_analysis_flops` is XLA's own per-device figure, which counts each loop
  body once."""
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  report = {name: int(getattr(memory, f"{name}_size_in_bytes", 0))
            for name in ("argument", "output", "temp", "alias", "generated_code")}
  report["peak_estimate_bytes"] = (report["argument"] + report["output"] + report["temp"]
                                   - report["alias"])
  report.update(_flops_report(step_flops, num_devices))
  report["xla_cost_analysis_flops"] = float(cost.get("flops", 0.0)) if cost else 0.0
  return report


def _flops_report(step_flops: flops.Count, num_devices: int) -> dict:
  return {"flops": step_flops.flops / num_devices,
          "kernels_without_flops": step_flops.kernels_without_cost,
          "while_loops_counted_once": step_flops.while_loops}


# TensorCores per chip in the product names (v5p-64 is 32 chips), and the chip grids of the slices.
_CORES_PER_CHIP = {"v5p": 2, "v4": 2, "v5e": 1, "v6e": 1}
_GRIDS_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
             256: "4x8x8", 512: "8x8x8"}
_HBM_GIB = {"v5p": 95, "v4": 32, "v5e": 16, "v6e": 32}     # per chip
# Peak dense bf16 TFLOP/s per chip (vendor figures), for the step time at a stated utilisation.
_PEAK_TFLOPS = {"v5p": 459.0, "v4": 275.0, "v5e": 197.0, "v6e": 918.0}
_GRIDS_2D = {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


def topology_name(slice_name: str) -> str:
  """'v5p-64' (cores) → 'v5p:2x4x4' (chips) for `jax.experimental.topologies`; 'v5p:2x2x2' passes."""
  if ":" in slice_name:
    return slice_name
  kind, _, size = slice_name.partition("-")
  if kind not in _CORES_PER_CHIP or not size.isdigit():
    raise ValueError(f"--topology={slice_name!r}: expected e.g. v5p-64, v6e-256 or v5p:2x2x2")
  chips = int(size) // _CORES_PER_CHIP[kind]
  grids = _GRIDS_3D if kind in ("v5p", "v4") else _GRIDS_2D
  if chips not in grids:
    raise ValueError(f"--topology={slice_name!r}: {chips} chips; known sizes {sorted(grids)}")
  return f"{kind}:{grids[chips]}"


def _main(argv):
  import json

  from absl import flags

  from flashworld_jax import sharding as sharding_lib
  del argv
  cfg = flags.FLAGS.config
  devices = None
  if flags.FLAGS.topology:
    from jax.experimental import topologies
    description = topologies.get_topology_desc(topology_name=topology_name(flags.FLAGS.topology),
                                               platform="tpu")
    devices = description.devices
  devices = list(devices or jax.devices())
  m = cfg.model.mesh
  mesh = sharding_lib.make_mesh(m.data, m.fsdp, m.tensor, m.sequence, devices=devices)
  phase = flags.FLAGS.phase
  if flags.FLAGS.flops_only:
    report = _flops_report(flops.count_jaxpr(trace_step(cfg, mesh, phase).jaxpr), len(devices))
  else:
    report = memory_and_flops(*compile_step(cfg, mesh, phase), len(devices))
  kind = (flags.FLAGS.topology or "").replace(":", "-").split("-")[0]
  if "peak_estimate_bytes" in report:
    hbm_gib = _HBM_GIB.get(kind)
    peak_gib = report["peak_estimate_bytes"] / 2**30
    report.update(peak_estimate_gib=round(peak_gib, 2), hbm_gib=hbm_gib,
                  headroom_gib=None if hbm_gib is None else round(hbm_gib - peak_gib, 2))
  print(json.dumps({"config": cfg.variant, "phase": phase, "topology": flags.FLAGS.topology,
                    "devices": len(devices), "device_kind": devices[0].device_kind,
                    "mesh": dict(mesh.shape), "remat_policy": cfg.model.dit.remat_policy,
                    "decoder_views_one_at_a_time": cfg.model.gaussian_decoder.views_one_at_a_time,
                    "encoder_views_one_at_a_time": cfg.model.vae.encode_views_one_at_a_time,
                    "global_batch": cfg.data.batch_size, **report,
                    "tflops_per_device_step": round(report["flops"] / 1e12, 2),
                    **_step_time(report["flops"], kind, flags.FLAGS.utilisation)}), flush=True)


def _step_time(flops_per_device: float, kind: str, utilisation: float) -> dict:
  peak = _PEAK_TFLOPS.get(kind)
  if peak is None:
    return {}
  return {"peak_tflops_per_chip": peak, "utilisation": utilisation,
          "step_seconds_at_utilisation": round(flops_per_device / (utilisation * peak * 1e12), 2)}


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", "configs/train.py:pretrain_5b", "Training config.")
  flags.DEFINE_string("topology", None, "A TPU slice (v5p-64, v6e-256, v5p:2x2x2) to compile for "
                      "without TPUs (needs libtpu importable); default: this host's devices.")
  flags.DEFINE_enum("phase", None, list(distill.PHASES), "Distillation: one update alone (default: "
                    "the step a run compiles, both updates behind a cond).")
  flags.DEFINE_bool("flops_only", False, "Trace and count the step's FLOPs without compiling it "
                    "(seconds instead of tens of minutes).")
  flags.DEFINE_float("utilisation", 0.4, "Fraction of the chip's peak FLOP/s assumed for the step "
                     "time printed with the plan.")
  app.run(_main)
