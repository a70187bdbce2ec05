"""FLOPs counted from a step's jaxpr against closed-form counts (and against XLA's cost analysis,
which counts a loop body once)."""
import jax
import jax.numpy as jnp
import pytest

from flashworld_jax import sharding
from flashworld_jax.train import flops


def _count(fn, *args):
  return flops.count_jaxpr(jax.jit(fn).trace(*args).jaxpr)


def test_a_scan_counts_its_body_per_step_where_cost_analysis_counts_it_once():
  w, x = jnp.ones((10, 64, 32)), jnp.ones((48, 64))
  fn = lambda w, x: jax.lax.scan(lambda c, wi: (c, jnp.tanh(c @ wi)), x, w)[1]  # noqa: E731
  one_step = 2 * 48 * 64 * 32
  cost = jax.jit(fn).lower(w, x).compile().cost_analysis()
  assert (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"] == pytest.approx(
      one_step, rel=1e-3)
  assert _count(fn, w, x).flops == 10 * one_step


def test_nested_loops_multiply_and_a_conditional_counts_its_costliest_branch():
  def fn(flag, x):
    def inner(c, _):
      return jax.lax.cond(flag, lambda: jnp.sin(c @ c), lambda: c + 1.0), None

    def outer(c, _):
      return jax.lax.scan(inner, c, None, length=3)[0], None

    return jax.lax.scan(outer, x, None, length=4)[0]

  assert _count(fn, True, jnp.ones((32, 32))) == flops.Count(4 * 3 * 2 * 32 ** 3)


def test_convolutions_count_every_window_position_per_group():
  x = jnp.ones((2, 16, 12, 8))
  conv = lambda x, k, groups: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
  assert _count(lambda x, k: conv(x, k, 1), x, jnp.ones((3, 3, 8, 5))).flops == (
      2 * (2 * 16 * 12 * 5) * (3 * 3 * 8))
  assert _count(lambda x, k: conv(x, k, 2), x, jnp.ones((3, 3, 4, 6))).flops == (
      2 * (2 * 16 * 12 * 6) * (3 * 3 * 4))


def test_a_gradient_counts_the_backward_and_rematerialised_matmuls():
  w, x = jnp.ones((5, 16, 16)), jnp.ones((8, 16))
  one = 2 * 8 * 16 * 16

  def loss(w, x, remat):
    body = lambda c, wi: (jnp.tanh(c @ wi), None)  # noqa: E731
    return jnp.sum(jax.lax.scan(jax.checkpoint(body) if remat else body, x, w)[0])

  # Forward c @ w; backward g @ wᵀ and cᵀ @ g; with remat the forward matmul once more.
  assert _count(jax.grad(lambda w, x: loss(w, x, False)), w, x).flops == 5 * 3 * one
  assert _count(jax.grad(lambda w, x: loss(w, x, True)), w, x).flops == 5 * 4 * one


def test_a_per_device_loop_counts_every_device(mesh8):
  with jax.set_mesh(mesh8):
    count = _count(lambda x: sharding.map_local_batch(lambda _, x: x @ x.T, x), jnp.ones((4, 8)))
  assert count.flops == 2 * 2 * 2 * 8 * 2   # two devices (fsdp), each [2, 8] @ [8, 2]


def test_a_pallas_kernel_counts_its_body_at_every_grid_point():
  from jax.experimental import pallas as pl

  def kernel(x_ref, y_ref, o_ref):
    o_ref[...] = x_ref[...] @ y_ref[...]

  def fn(x, y):
    return pl.pallas_call(
        kernel, grid=(4,), in_specs=[pl.BlockSpec((8, 16), lambda i: (i, 0)),
                                     pl.BlockSpec((16, 8), lambda i: (0, 0))],
        out_specs=pl.BlockSpec((8, 8), lambda i: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((32, 8), jnp.float32), interpret=True)(x, y)

  assert _count(fn, jnp.ones((32, 16)), jnp.ones((16, 8))).flops == 2 * 32 * 16 * 8
