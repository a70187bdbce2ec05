"""launch/ scripts: the commands their dry runs print, and that a real run runs exactly those
(gcloud and sbatch replaced by recorders on PATH; the train command by a fake interpreter)."""
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
with open(os.path.join(_ROOT, "requirements.txt")) as _requirements:
  _JAX_PIN = re.search(r"^jax==(\S+)$", _requirements.read(), re.MULTILINE).group(1)


def _launch(script: str, *flags: str, env: dict | None = None, check: bool = True):
  result = subprocess.run([sys.executable, os.path.join(_ROOT, "launch", script), *flags],
                          capture_output=True, text=True, env=env, timeout=60)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _commands(stdout: str) -> list[list[str]]:
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def _option(argv: list[str], name: str) -> str:
  return next(a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}="))


def _executable(path, text: str) -> str:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return str(path)


# ----------------------------------------------------------------------------- tpu_pod.py

_POD = ("--name=fw-test", "--zone=us-east5-a", "--project=proj", "--workdir=gs://bucket/run",
        "--extra_args=--config.num_steps=10 --max_steps=5")
_ZONE = ["--zone=us-east5-a", "--project=proj"]


def test_tpu_pod_dry_run_creates_copies_installs_starts_and_follows():
  commands = _commands(_launch("tpu_pod.py", *_POD, "--dry_run").stdout)
  archive = os.path.join(tempfile.gettempdir(), "fw-test-code.tar.gz")
  assert commands[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "fw-test",
                         "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5", *_ZONE]
  assert commands[1] == ["git", "-C", _ROOT, "archive", "--format=tar.gz", f"--output={archive}",
                         "HEAD"]
  assert commands[2] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive,
                         "fw-test:flashworld-code.tar.gz", "--worker=all", *_ZONE]
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "fw-test"]
  install, mount, start, follow = commands[3:]
  assert install[:7] == ssh + ["--worker=all"] and install[8:] == _ZONE
  assert (f"flashworld-venv/bin/pip install -q -r flashworld/requirements.txt "
          f"'jax[tpu]=={_JAX_PIN}'") in _option(install, "command")
  # The bucket is mounted on every worker and the run writes through the mount.
  assert mount[:7] == ssh + ["--worker=all"]
  assert ("mkdir -p gcs/bucket && (mountpoint -q gcs/bucket || gcsfuse --implicit-dirs "
          "--rename-dir-limit=1000000 bucket gcs/bucket)") in _option(mount, "command")
  assert _option(mount, "command").startswith("(command -v gcsfuse >/dev/null || (")
  assert start[:7] == ssh + ["--worker=all"]
  remote = shlex.split(_option(start, "command"))
  train = remote[remote.index("nohup") + 1:remote.index(">")]
  assert train == ["../flashworld-venv/bin/python", "-m", "flashworld_jax.train",
                   "--config=configs/train.py:pretrain_5b", "--workdir=../gcs/bucket/run",
                   "--config.num_steps=10", "--max_steps=5"]
  assert follow == ssh + ["--worker=0", "--command=tail -n +1 -F train.log", *_ZONE]


def test_tpu_pod_shared_mount_workdir_is_passed_as_is_without_gcsfuse():
  flags = [f for f in _POD if not f.startswith("--workdir")] + ["--workdir=/mnt/shared/run"]
  commands = _commands(_launch("tpu_pod.py", *flags, "--reuse", "--dry_run").stdout)
  assert not any("gcsfuse" in word for command in commands for word in command)
  assert "--workdir=/mnt/shared/run" in shlex.split(_option(commands[3], "command"))


def test_tpu_pod_queued_resource_waits_until_active_and_reuse_skips_creation():
  commands = _commands(_launch("tpu_pod.py", *_POD, "--queued", "--accelerator_type=v6e-256",
                               "--dry_run").stdout)
  assert commands[0] == ["gcloud", "compute", "tpus", "queued-resources", "create", "fw-test",
                         "--node-id=fw-test", "--accelerator-type=v6e-256",
                         "--runtime-version=v2-alpha-tpuv6e", *_ZONE]
  assert commands[1][:2] == ["bash", "-c"] and "ACTIVE) break" in commands[1][2]
  assert "queued-resources describe fw-test" in commands[1][2]
  reused = _commands(_launch("tpu_pod.py", *_POD, "--reuse", "--dry_run").stdout)
  assert reused == commands[2:]


@pytest.mark.parametrize("queued, expected", [
    (False, ["tpu-vm", "delete", "fw-test", "--quiet"]),
    (True, ["queued-resources", "delete", "fw-test", "--force", "--quiet"])])
def test_tpu_pod_delete_only_deletes(queued, expected):
  flags = ["--name=fw-test", "--zone=us-east5-a", "--delete", "--dry_run"] + ["--queued"] * queued
  assert _commands(_launch("tpu_pod.py", *flags).stdout) == [
      ["gcloud", "compute", "tpus", *expected, "--zone=us-east5-a"]]


@pytest.mark.parametrize("flags, message", [
    (("--workdir=runs/x",), "the workers share no disk"),
    (("--workdir=gs://bucket",), "expected gs://bucket/path"),
    (("--workdir=gs://Bad_Bucket/x",), "expected gs://bucket/path"),
    (("--workdir=gs://bkt/x", "--accelerator_type=v9-8"), "no default --runtime_version"),
    ((), "--workdir is required")])
def test_tpu_pod_bad_flags_are_one_line_errors(flags, message):
  result = _launch("tpu_pod.py", "--name=n", "--zone=z", "--dry_run", *flags, check=False)
  assert result.returncode == 2 and message in result.stderr


def test_tpu_pod_runs_exactly_the_printed_commands(tmp_path):
  """A recording `gcloud` (answering ACTIVE to the queued resource's describe) on PATH."""
  log = tmp_path / "gcloud.log"
  _executable(tmp_path / "gcloud", f'#!/bin/bash\nprintf "%q " gcloud "$@" >> {log}; echo >> {log}\n'
                                   'case "$*" in *describe*) echo ACTIVE;; esac\n')
  env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
  name = f"fw-test-{os.getpid()}"
  flags = [f"--name={name}", *_POD[1:], "--queued"]
  try:
    ran = _launch("tpu_pod.py", *flags, env=env)
  finally:
    archive = os.path.join(tempfile.gettempdir(), f"{name}-code.tar.gz")
    archived = os.path.exists(archive)
    if archived:
      os.remove(archive)
  printed = _commands(ran.stdout)
  recorded = [shlex.split(line) for line in log.read_text().splitlines()]
  gcloud_commands = [c for c in printed if c[0] == "gcloud"]
  describe = gcloud_commands[0][:3] + ["queued-resources", "describe", name,
                                       "--format=value(state.state)", *_ZONE]
  assert recorded == [gcloud_commands[0], describe] + gcloud_commands[1:]
  assert archived


# ----------------------------------------------------------------------------- slurm.py

def _split_dry_run(stdout: str) -> tuple[str, str, str]:
  """("# <script path>", the script, the sbatch command) of slurm.py's dry-run output."""
  lines = stdout.splitlines()
  return lines[0], "\n".join(lines[1:-1]) + "\n", lines[-1]


def test_slurm_dry_run_prints_the_script_and_the_sbatch_command(tmp_path):
  workdir = str(tmp_path / "run")
  out = _launch("slurm.py", "--nodes=2", "--gpus_per_node=4", f"--workdir={workdir}",
                "--partition=gpu", "--extra_args=--max_steps=3", "--dry_run").stdout
  path = os.path.join(workdir, "slurm", "flashworld.sbatch")
  header, script, command = _split_dry_run(out)
  assert header == f"# {path}" and shlex.split(command) == ["sbatch", path]
  for directive in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                    f"--output={workdir}/slurm/%j.out", "--signal=TERM@300"):
    assert f"#SBATCH {directive}\n" in script
  srun = shlex.split(script.splitlines()[-1])
  assert srun == ["srun", "--ntasks-per-node=4", "--kill-on-bad-exit=1",
                  os.path.join(_ROOT, ".venv", "bin", "python"), "-m", "flashworld_jax.train",
                  "--config=configs/train.py:pretrain_5b", f"--workdir={workdir}", "--max_steps=3"]
  assert "JAX_LOCAL_DEVICE_IDS" not in script
  assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
  assert not os.path.exists(workdir)                    # a dry run writes nothing


def test_slurm_one_process_per_node_owns_all_its_gpus(tmp_path):
  out = _launch("slurm.py", "--nodes=3", "--processes=node", f"--workdir={tmp_path}",
                "--dry_run").stdout
  assert "#SBATCH --ntasks-per-node=1\n" in out
  assert "\nexport JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7\n" in out
  assert "\nsrun --ntasks-per-node=1 " in out


def test_slurm_writes_the_script_and_submits_it(tmp_path):
  _executable(tmp_path / "sbatch", '#!/bin/bash\nbash -n "$1" && echo "submitted $1"\n')
  env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
  workdir = str(tmp_path / "run")
  dry = _launch("slurm.py", "--nodes=1", f"--workdir={workdir}", "--dry_run").stdout
  ran = _launch("slurm.py", "--nodes=1", f"--workdir={workdir}", env=env).stdout
  path = os.path.join(workdir, "slurm", "flashworld.sbatch")
  assert ran.splitlines() == [f"sbatch {path}", f"submitted {path}"]
  assert open(path).read() == _split_dry_run(dry)[1]


# ----------------------------------------------------------------------------- local_gpus.py

def test_local_gpus_dry_run_prints_the_environment_and_the_command(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = _launch("local_gpus.py", "--workdir=runs/x", "--gpus=0,1", "--python=/venv/bin/python",
                "--extra_args=--max_steps=2", "--dry_run", env=env).stdout
  assert _commands(out) == [[
      "env", "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
      "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "CUDA_VISIBLE_DEVICES=0,1", "/venv/bin/python", "-m",
      "flashworld_jax.train", "--config=configs/train.py:pretrain_5b",
      f"--workdir={os.path.abspath('runs/x')}", "--max_steps=2"]]


def test_local_gpus_runs_the_printed_command_from_the_repository(tmp_path):
  fake = _executable(tmp_path / "python",
                     '#!/bin/bash\necho "$PWD|$XLA_FLAGS|$CUDA_VISIBLE_DEVICES|$*"\n')
  env = {**os.environ, "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
  lines = _launch("local_gpus.py", f"--workdir={tmp_path}/run", f"--python={fake}",
                  env=env).stdout.splitlines()
  assert lines[1] == (f"{_ROOT}|--xla_dump_to=/tmp/x --xla_gpu_enable_latency_hiding_scheduler=true|"
                      f"|-m flashworld_jax.train --config=configs/train.py:pretrain_5b "
                      f"--workdir={tmp_path}/run")
