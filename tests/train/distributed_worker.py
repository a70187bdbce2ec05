"""One process of the multi-process test (tests/train/test_distributed.py); run as a script.

Every process builds the same 8-row batch, keeps the rows its devices hold
(`sharding.process_batch_rows`), and `loop.global_batch` assembles the global array; an MLP whose
first layer is FSDP-sharded over a (data=2, fsdp=2) mesh spanning all processes gives a loss and
gradients. Each process prints one JSON line: its rows, and (process 0) the loss and gradients.
`--interleave` orders the mesh's devices alternately by process, as a pod's interconnect order may.
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
  parser.add_argument("--interleave", action="store_true")
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
  by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(jax.process_count())]
  devices = [d for group in zip(*by_process) for d in group] if args.interleave else jax.devices()
  mesh = sharding.make_mesh(data=2, fsdp=2, devices=devices)
  data = np.random.default_rng(0)
  full = {"x": data.normal(size=(ROWS, IN)).astype(np.float32),
          "y": data.normal(size=(ROWS, OUT)).astype(np.float32)}
  rows = sharding.process_batch_rows(mesh, ROWS)
  batch = loop.global_batch({k: v[rows] for k, v in full.items()}, mesh)

  def init():
    k1, k2 = jax.random.split(jax.random.key(1))
    return {"w1": jax.random.normal(k1, (IN, HIDDEN)) / 4,
            "w2": jax.random.normal(k2, (HIDDEN, OUT))}

  param_shardings = {"w1": NamedSharding(mesh, P("fsdp", None)), "w2": NamedSharding(mesh, P())}
  params = jax.jit(init, out_shardings=param_shardings)()

  def loss_fn(p, b):
    prediction = jnp.tanh(b["x"] @ p["w1"]) @ p["w2"]
    # Weighted by position, as a step's per-row noise ties each sample to its row: rows placed in
    # another order give another loss.
    position = jnp.arange(1, ROWS + 1, dtype=jnp.float32)[:, None]
    return jnp.mean(position * jnp.square(prediction - b["y"]))

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params, batch)
  grads = multihost_utils.process_allgather(grads, tiled=True)
  report = {"rows": rows.tolist(), "devices": jax.device_count()}
  if jax.process_index() == 0:
    report.update(loss=float(loss), grads={k: np.asarray(v).tolist() for k, v in grads.items()})
  print(json.dumps(report), flush=True)


if __name__ == "__main__":
  main()
