"""Attention dispatcher: XLA reference vs a float64 oracle, splash (interpret mode) vs the reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.attention import api, pallas_tpu, reference


def _qkv(key, batch, q_len, kv_len, heads, head_dim, dtype=jnp.float32):
  kq, kk, kv = jax.random.split(key, 3)
  q = jax.random.normal(kq, (batch, q_len, heads, head_dim), dtype)
  k = jax.random.normal(kk, (batch, kv_len, heads, head_dim), dtype)
  v = jax.random.normal(kv, (batch, kv_len, heads, head_dim), dtype)
  return q, k, v


def _attention_float64(q, k, v):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", weights, v)


def test_reference_matches_float64():
  q, k, v = _qkv(jax.random.key(0), 2, 40, 24, 3, 16)
  out = reference.dot_product_attention(q, k, v)
  np.testing.assert_allclose(out, _attention_float64(q, k, v), rtol=0, atol=2e-6)


@pytest.mark.parametrize("q_len, kv_len", [(256, 256), (200, 72)])
def test_splash_interpret_matches_reference_outputs_and_grads(q_len, kv_len):
  """(200, 72) pads both sequences: segment ids must keep the padding out of the softmax."""
  q, k, v = _qkv(jax.random.key(1), 1, q_len, kv_len, 2, 64)
  cotangent = jax.random.normal(jax.random.key(2), q.shape)

  def loss(fn, q, k, v):
    return jnp.sum(fn(q, k, v) * cotangent)

  splash = lambda q, k, v: api.dot_product_attention(q, k, v, implementation="splash",
                                                     interpret=True)
  out = jax.jit(splash)(q, k, v)
  ref = reference.dot_product_attention(q, k, v)
  assert out.shape == ref.shape
  np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)
  grads = jax.jit(jax.grad(lambda *a: loss(splash, *a), argnums=(0, 1, 2)))(q, k, v)
  ref_grads = jax.grad(lambda *a: loss(reference.dot_product_attention, *a), argnums=(0, 1, 2))(
      q, k, v)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(g, r, rtol=0, atol=5e-5, err_msg=f"d{name}")


def test_splash_under_mesh_runs_per_shard(mesh8):
  """Under the 8-device mesh the splash call is shard_mapped over (batch, heads)."""
  q, k, v = _qkv(jax.random.key(3), 2, 128, 128, 4, 64)
  with jax.set_mesh(mesh8):
    out = jax.jit(lambda q, k, v: api.dot_product_attention(
        q, k, v, implementation="splash", interpret=True))(q, k, v)
  np.testing.assert_allclose(out, reference.dot_product_attention(q, k, v), rtol=0, atol=2e-5)


def test_auto_falls_through_to_xla_on_cpu():
  q, k, v = _qkv(jax.random.key(4), 1, 16, 16, 2, 8)
  out = api.dot_product_attention(q, k, v, implementation="auto")
  np.testing.assert_array_equal(out, reference.dot_product_attention(q, k, v))
  # An explicit sequence is tried in order: cuDNN is unavailable on CPU, XLA takes over.
  out = api.dot_product_attention(q, k, v, implementation=("cudnn", "xla"))
  np.testing.assert_array_equal(out, reference.dot_product_attention(q, k, v))


def test_unavailable_backend_raises_not_implemented():
  q, k, v = _qkv(jax.random.key(5), 1, 16, 16, 2, 8)
  with pytest.raises(NotImplementedError, match="cudnn"):
    api.dot_product_attention(q, k, v, implementation="cudnn")
  with pytest.raises(NotImplementedError, match="TPU"):
    pallas_tpu.dot_product_attention(q, k, v)


def test_bad_arguments_raise_value_error():
  q, k, v = _qkv(jax.random.key(6), 1, 16, 16, 2, 8)
  with pytest.raises(ValueError, match="flash"):
    api.dot_product_attention(q, k, v, implementation="flash")
  with pytest.raises(ValueError, match=r"q \[B, Tq, N, H\]"):
    api.dot_product_attention(q[0], k, v)
