"""Multi-process runs on one machine: several CPU processes joined by `distributed.initialize` give
the same numbers as one process with as many devices."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_WORKER = os.path.join(_ROOT, "tests", "train", "distributed_worker.py")
# Variables through which jax (or a cluster) could start a multi-process run by itself.
_CLUSTER_PREFIXES = ("SLURM_", "OMPI_", "PMI_", "JAX_COORDINATOR", "JAX_LOCAL_DEVICE_IDS",
                     "KUBERNETES_", "MEGASCALE_", "TPU_")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith(_CLUSTER_PREFIXES)}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=_ROOT,
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_COMPILATION_CACHE_DIR=os.path.join(_ROOT, ".jax_cache"), **extra)
  return env


def _run_all(commands: list[list[str]], envs: list[dict], timeout: float) -> list[str]:
  """Runs the processes together (they wait for each other); returns their stdouts."""
  procs = [subprocess.Popen(c, env=e, cwd=_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for c, e in zip(commands, envs)]
  try:
    outputs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


def _last_json(stdout: str) -> dict:
  return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("interleave, rows", [(False, [[0, 1, 2, 3], [4, 5, 6, 7]]),
                                             (True, [[0, 1, 4, 5], [2, 3, 6, 7]])],
                         ids=["blocks", "interleaved"])
def test_two_processes_give_the_loss_and_gradients_of_one(interleave, rows):
  """Each process reads the rows its devices hold, wherever the mesh puts them."""
  (single,) = _run_all([[sys.executable, _WORKER]], [_env(4)], timeout=120)
  address = f"localhost:{_free_port()}"
  outputs = _run_all(
      [[sys.executable, _WORKER, "--num_processes=2", f"--process_id={i}",
        f"--coordinator_address={address}"] + ["--interleave"] * interleave for i in range(2)],
      [_env(2), _env(2)], timeout=120)
  one, two = _last_json(single), _last_json(outputs[0])
  assert [_last_json(out)["rows"] for out in outputs] == rows
  assert one["devices"] == two["devices"] == 4
  # Same partitioned program; only the collectives differ (gloo across processes), so the sums
  # may round differently.
  np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-6)
  for name in one["grads"]:
    np.testing.assert_allclose(two["grads"][name], one["grads"][name], rtol=1e-5, atol=1e-6)


_PROBE = ("from flashworld_jax.train import distributed; import jax; "
          "print(distributed.initialize(), distributed.initialize(), jax.process_index(), "
          "jax.process_count())")


def test_one_process_with_no_cluster_is_a_no_op():
  (out,) = _run_all([[sys.executable, "-c", _PROBE]], [_env(1)], timeout=60)
  assert out.split() == ["False", "False", "0", "1"]


def test_slurm_environment_is_detected_by_jax():
  """Two `srun` tasks, as SLURM's variables describe them, join without any argument."""
  slurm = dict(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
               SLURM_STEP_NUM_NODES="1", JAX_COORDINATOR_PORT=str(_free_port()))
  envs = [_env(1, **slurm, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)) for i in range(2)]
  outputs = _run_all([[sys.executable, "-c", _PROBE]] * 2, envs, timeout=60)
  assert sorted(o.split()[2:] for o in outputs) == [["0", "2"], ["1", "2"]]
  assert all(o.split()[:2] == ["True", "True"] for o in outputs)


def _train_command(cfg, workdir: str, num_steps: int, *extra: str) -> list[str]:
  overrides = {"data.train_dir": cfg.data.train_dir, "data.eval_dir": "", "eval_every": 0,
               "data.height": cfg.data.height, "data.width": cfg.data.width,
               "data.num_input_views": cfg.data.num_input_views,
               "data.num_novel_views": cfg.data.num_novel_views, "data.batch_size": 4,
               "data.num_threads": 1, "model.text.max_length": cfg.model.text.max_length,
               "num_steps": num_steps, "log_every": 1, "checkpoint_every": 1,
               "optimizer.warmup_steps": 1}
  return [sys.executable, "-m", "flashworld_jax.train", "--config=configs/train.py:pretrain_tiny",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items()), *extra]


def _metrics(workdir: str, step: int) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return next(row for row in map(json.loads, f) if row["step"] == step)


@pytest.mark.slow
def test_pretraining_in_two_processes_matches_one_and_resumes_in_one(make_tiny_config, tmp_path):
  """Real pre-training steps through `python -m flashworld_jax.train` on a data=4 mesh: 2 processes
  × 2 devices for step 1, then resumed by 1 process × 4 devices for step 2, against 1 process × 4
  devices throughout. Every step's per-row noise meets the same sample only if global batch k has
  the same rows in the same order for any process count."""
  cfg = make_tiny_config()
  single_dir, multi_dir = str(tmp_path / "one"), str(tmp_path / "two")
  _run_all([_train_command(cfg, single_dir, 2)], [_env(4)], timeout=900)
  address = f"localhost:{_free_port()}"
  _run_all([_train_command(cfg, multi_dir, 1, f"--coordinator_address={address}",
                           "--num_processes=2", f"--process_id={i}") for i in range(2)],
           [_env(2), _env(2)], timeout=900)
  assert os.path.isdir(os.path.join(multi_dir, "checkpoints", "1"))
  _run_all([_train_command(cfg, multi_dir, 2)], [_env(4)], timeout=900)
  for step in (1, 2):
    one, two = _metrics(single_dir, step), _metrics(multi_dir, step)
    for name in ("loss", "loss_mv", "loss_3d", "grad_norm"):
      np.testing.assert_allclose(two[name], one[name], rtol=1e-5, err_msg=f"step {step} {name}")
