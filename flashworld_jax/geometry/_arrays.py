"""Input coercion shared by the geometry modules."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def as_float_array(x: jax.typing.ArrayLike, name: str, last_dims: tuple[int, ...]) -> jax.Array:
  """`x` as a floating jax array whose trailing dimensions are `last_dims`.

  Floating inputs keep their dtype (subject to jax's x64 setting); integer inputs become float32.
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  if x.ndim < len(last_dims) or tuple(x.shape[x.ndim - len(last_dims):]) != last_dims:
    expected = "[..., " + ", ".join(str(d) for d in last_dims) + "]"
    raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
  return x
