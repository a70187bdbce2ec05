"""`sharding.map_local_batch`: a per-device loop over a sharded batch equals the plain loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flashworld_jax import sharding


def _loop(weights, batch):
  """A loop over the batch that reads replicated weights (as the renders and the decoder do)."""
  x, y = batch
  return jax.lax.map(lambda a: jnp.tanh(a[0] @ weights) * a[1], (x, y))


def test_per_device_loop_equals_the_plain_loop_in_outputs_and_gradients(mesh8):
  rng = np.random.default_rng(0)
  weights = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
  seen = []

  def loop(weights, batch):
    seen.append(batch[0].shape[0])
    return _loop(weights, batch)

  def loss(weights, x):
    out = sharding.map_local_batch(loop, (x, y), weights)
    return jnp.sum(jnp.sin(out) * jnp.arange(out.size).reshape(out.shape)), out

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  (_, want), want_grads = grad(weights, x)
  assert seen == [6]                       # no mesh: the plain call
  with jax.set_mesh(mesh8):
    (_, got), got_grads = grad(weights, x)
  assert seen[1:] == [3]                   # mesh8's batch axes (fsdp = 2) split the six
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  for g, w in zip(got_grads, want_grads):  # the weights' gradient is summed over the devices
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_a_batch_the_devices_do_not_divide_is_refused(mesh8):
  with jax.set_mesh(mesh8), pytest.raises(ValueError, match=r"leading sizes \[5\].*2 devices"):
    jax.jit(lambda x: sharding.map_local_batch(_loop, (x, x @ jnp.ones((3, 5)))[0], jnp.ones((3, 5))))(
        jnp.ones((5, 3)))


def test_constraints_inside_the_per_device_loop_name_only_automatic_axes(mesh8):
  def loop(_, x):
    # act_batch is (data, fsdp): fsdp is manual in here, so the constraint keeps only data.
    return sharding.constrain(x * 2.0, ("act_batch", "act_mlp"))

  with jax.set_mesh(mesh8):
    out = jax.jit(lambda x: sharding.map_local_batch(loop, x))(jnp.ones((4, 8)))
  np.testing.assert_array_equal(out, 2.0 * np.ones((4, 8)))
