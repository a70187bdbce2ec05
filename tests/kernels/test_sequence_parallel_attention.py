"""Sequence-parallel (all-to-all over heads) attention vs unsharded attention, on the 8-device CPU
mesh (tensor=2 × sequence=4): outputs, gradients, and the DiT with the option on and off."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.models import dit
from kernels.attention import api, reference, sequence_parallel

_TOKEN_SPEC = P(("data", "fsdp"), "sequence", "tensor", None)   # the DiT's q, k, v layout


@pytest.fixture
def mesh_ts():
  return sharding.make_mesh(data=1, fsdp=1, tensor=2, sequence=4)


def _qkv(key, batch, length, heads, head_dim):
  return tuple(jax.random.normal(k, (batch, length, heads, head_dim))
               for k in jax.random.split(key, 3))


def _sequence_parallel(implementation, interpret=False):
  return lambda q, k, v: sequence_parallel.dot_product_attention(
      q, k, v, implementation=implementation, interpret=interpret)


def _loss(fn, cotangent):
  return lambda q, k, v: jnp.sum(fn(q, k, v) * cotangent)


@pytest.mark.parametrize("implementation, length, head_dim, atol", [
    ("xla", 64, 16, 1e-6),
    # Splash in interpret mode on each device's heads (the TPU path); its own tolerance vs XLA.
    ("splash", 128, 64, 2e-5)])
def test_outputs_and_gradients_match_unsharded(mesh_ts, implementation, length, head_dim, atol):
  q, k, v = _qkv(jax.random.key(0), 2, length, 8, head_dim)
  cotangent = jax.random.normal(jax.random.key(1), q.shape)
  ref = reference.dot_product_attention(q, k, v)
  ref_grads = jax.grad(_loss(reference.dot_product_attention, cotangent), argnums=(0, 1, 2))(q, k, v)
  attend = _sequence_parallel(implementation, interpret=True)
  with jax.set_mesh(mesh_ts):
    placed = [jax.device_put(x, NamedSharding(mesh_ts, _TOKEN_SPEC)) for x in (q, k, v)]
    out = jax.jit(attend)(*placed)
    grads = jax.jit(jax.grad(_loss(attend, cotangent), argnums=(0, 1, 2)))(*placed)
  assert out.sharding.spec == _TOKEN_SPEC
  np.testing.assert_allclose(out, ref, rtol=0, atol=atol)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=0, atol=2.5 * atol, err_msg=f"d{name}")


def test_compiles_to_all_to_all_without_gathering_the_sequence(mesh_ts):
  q, k, v = _qkv(jax.random.key(2), 2, 64, 8, 16)
  with jax.set_mesh(mesh_ts):
    placed = [jax.device_put(x, NamedSharding(mesh_ts, _TOKEN_SPEC)) for x in (q, k, v)]
    hlo = jax.jit(_sequence_parallel("xla")).lower(*placed).compile().as_text()
  # q, k, v in and the output back (XLA may fuse them into fewer, multi-operand all-to-alls).
  assert "all-to-all" in hlo and "all-gather" not in hlo


def test_without_a_sequence_axis_it_is_the_plain_call(mesh8):
  q, k, v = _qkv(jax.random.key(3), 2, 16, 4, 8)
  np.testing.assert_array_equal(_sequence_parallel("xla")(q, k, v),
                                api.dot_product_attention(q, k, v, implementation="xla"))
  with jax.set_mesh(mesh8):
    out = jax.jit(_sequence_parallel("xla"))(q, k, v)
  np.testing.assert_allclose(out, reference.dot_product_attention(q, k, v), rtol=0, atol=1e-6)


def test_indivisible_heads_or_lengths_raise(mesh_ts):
  with jax.set_mesh(mesh_ts):
    with pytest.raises(ValueError, match="2 heads per tensor shard do not divide by the sequence"):
      jax.jit(_sequence_parallel("xla"))(*_qkv(jax.random.key(4), 1, 16, 4, 8))
    with pytest.raises(ValueError, match="lengths 18"):
      jax.jit(_sequence_parallel("xla"))(*_qkv(jax.random.key(5), 1, 18, 8, 8))


def _dit_cfg(sequence_parallel_mode):
  cfg = copy.deepcopy(get_config("tiny").dit)
  cfg.num_heads, cfg.head_dim = 8, 12          # 8 heads: tensor=2 × sequence=4
  cfg.freq_dim, cfg.rope_max_seq_len = 32, 64
  cfg.dtype, cfg.matmul_precision, cfg.attention = "float32", "highest", "xla"
  cfg.sequence_parallel = sequence_parallel_mode
  return cfg


def test_dit_forward_is_the_same_with_sequence_parallel_on_and_off(mesh_ts):
  """2 scenes × 2 views of 8×8 latents: 32 tokens, 8 per sequence shard."""
  base = _dit_cfg("none")
  kx, kt, kc = jax.random.split(jax.random.key(6), 3)
  x = jax.random.normal(kx, (2, 2, 8, 8, dit.dit_input_channels(base)))
  t = jax.random.uniform(kt, (2,), minval=0.0, maxval=1000.0)
  context = jax.random.normal(kc, (2, 5, base.text_dim))
  outputs, lowered = {}, {}
  for mode in sequence_parallel.MODES:
    with jax.set_mesh(mesh_ts), sharding.rules():
      graphdef, state = nnx.split(dit.WanDiT(_dit_cfg(mode), rngs=nnx.Rngs(0)))
      forward = jax.jit(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))
      outputs[mode] = forward(state, x, t, context)
      lowered[mode] = forward.lower(state, x, t, context).as_text()
  assert "all_to_all" in lowered["all_to_all"] and "all_to_all" not in lowered["none"]
  ref = np.asarray(outputs["none"])
  np.testing.assert_allclose(outputs["all_to_all"], ref, rtol=0, atol=1e-5 * np.max(np.abs(ref)))


def test_dit_config_rejects_unknown_mode():
  with pytest.raises(ValueError, match="dit.sequence_parallel='ring'"):
    dit.dims_from_config(_dit_cfg("ring"))
