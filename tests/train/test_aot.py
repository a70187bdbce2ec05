"""The AOT plan's pieces that need no TPU: slice names, the abstract state's shardings, the step's
FLOPs; and, where libtpu is importable, a compile for a TPU topology on this host."""
import jax
import pytest

from configs import train as train_configs
from flashworld_jax import sharding
from flashworld_jax.train import aot, flops


def test_slice_names_map_to_chip_grids_and_bad_names_are_refused():
  assert aot.topology_name("v5p-64") == "v5p:2x4x4"      # 64 TensorCores = 32 chips
  assert aot.topology_name("v5p-128") == "v5p:4x4x4"
  assert aot.topology_name("v6e-256") == "v6e:16x16"
  assert aot.topology_name("v5p:2x2x2") == "v5p:2x2x2"
  with pytest.raises(ValueError, match="expected e.g. v5p-64"):
    aot.topology_name("h100-8")


def test_abstract_state_shards_moments_like_parameters(mesh8):
  cfg = train_configs.get_config("pretrain_tiny")
  _, state, _ = aot.ABSTRACT_STATES["pretrain"](cfg, mesh8)
  adam = state.opt_state[1][0]
  pairs = list(zip(jax.tree.leaves(state.params), jax.tree.leaves(adam.mu)))
  assert pairs and all(m.sharding == p.sharding for p, m in pairs)
  assert any(not p.sharding.is_fully_replicated for p, _ in pairs)


def test_phase_is_for_distillation_only():
  with pytest.raises(ValueError, match="applies to distillation"):
    aot.trace_step(train_configs.get_config("pretrain_tiny"), sharding.single_device_mesh(), "fake")


def test_the_tiny_steps_flops_grow_with_the_batch():
  cfg = train_configs.get_config("pretrain_tiny")
  mesh = sharding.single_device_mesh()
  counts = []
  for batch in (1, 2):
    cfg.data.batch_size = batch
    counts.append(flops.count_jaxpr(aot.trace_step(cfg, mesh).jaxpr))
  assert counts[0].flops > 0 and counts[0].kernels_without_cost == 0
  assert counts[1].flops == pytest.approx(2 * counts[0].flops, rel=0.05)
