"""One process of the multi-process test (tests/train/test_distributed.py); run as a script.

Every process builds the same 8-row batch, keeps its own rows, and `loop.global_batch` assembles the
global array; an MLP whose first layer is FSDP-sharded over a (data=2, fsdp=2) mesh spanning all
processes gives a loss and gradients, printed as one JSON line (process 0 only).
"""
import argparse
import json

from flashworld_jax.train import distributed

ROWS, IN, HIDDEN, OUT = 8, 16, 32, 4


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--coordinator_address", default=None)
  args = parser.parse_args()
  if args.num_processes > 1:
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.experimental import multihost_utils
  from jax.sharding import NamedSharding, PartitionSpec as P

  from flashworld_jax import sharding
  from flashworld_jax.train import loop

  assert jax.process_count() == args.num_processes, jax.process_count()
  mesh = sharding.make_mesh(data=2, fsdp=2)
  data = np.random.default_rng(0)
  full = {"x": data.normal(size=(ROWS, IN)).astype(np.float32),
          "y": data.normal(size=(ROWS, OUT)).astype(np.float32)}
  per_process = ROWS // args.num_processes
  rows = slice(args.process_id * per_process, (args.process_id + 1) * per_process)
  batch = loop.global_batch({k: v[rows] for k, v in full.items()}, mesh)

  def init():
    k1, k2 = jax.random.split(jax.random.key(1))
    return {"w1": jax.random.normal(k1, (IN, HIDDEN)) / 4,
            "w2": jax.random.normal(k2, (HIDDEN, OUT))}

  param_shardings = {"w1": NamedSharding(mesh, P("fsdp", None)), "w2": NamedSharding(mesh, P())}
  params = jax.jit(init, out_shardings=param_shardings)()

  def loss_fn(p, b):
    prediction = jnp.tanh(b["x"] @ p["w1"]) @ p["w2"]
    return jnp.mean(jnp.square(prediction - b["y"]))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch)
  grads = multihost_utils.process_allgather(grads, tiled=True)
  if jax.process_index() == 0:
    print(json.dumps({"loss": float(loss), "devices": jax.device_count(),
                      "grads": {k: np.asarray(v).tolist() for k, v in grads.items()}}), flush=True)


if __name__ == "__main__":
  main()
