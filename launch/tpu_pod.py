#!/usr/bin/env python3
r"""Trains on a Cloud TPU VM slice: create it, copy the code, install, start on every worker, follow.

  python launch/tpu_pod.py --name=fw-v5p --zone=us-east5-a --accelerator_type=v5p-64 \
      --workdir=gs://my-bucket/runs/pretrain_5b [--queued] [--reuse] [--dry_run]
  python launch/tpu_pod.py --name=fw-v5p --zone=us-east5-a --delete [--queued]

Steps, each a gcloud (or git) command printed before it runs (`--dry_run` only prints them):
  1. create the slice (`tpu-vm create`, or `queued-resources create` and wait until ACTIVE);
     `--reuse` skips this for a slice that already exists;
  2. `git archive` of HEAD (commit first: uncommitted changes are not copied), `scp` to all workers;
  3. on all workers: Python 3.11 venv, `pip install -r requirements.txt jax[tpu]==<our jax pin>`;
  4. a `gs://bucket/path` workdir: on all workers, gcsfuse (apt, if missing) mounts the bucket at
     ~/gcs/<bucket>, and the run's workdir is that mount's path (the loop writes POSIX files);
  5. on all workers: stop a run this script started before (SIGTERM: it saves a checkpoint), then
     start `python -m flashworld_jax.train` detached, output in ~/train.log;
  6. follow worker 0's log (Ctrl-C stops following; the run goes on).
jax detects the pod on its own (`distributed.initialize`); every worker runs the same command.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# On each worker, relative to the home folder where `ssh --command` starts.
_CODE, _VENV, _ARCHIVE = "flashworld", "flashworld-venv", "flashworld-code.tar.gz"
_LOG, _PID = "train.log", "train.pid"
_MOUNTS = "gcs"           # gs://<bucket> is mounted at ~/gcs/<bucket>
# Software versions of TPU VMs by accelerator family (cloud.google.com/tpu/docs/runtimes).
_RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
             "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}


def jax_pin() -> str:
  with open(os.path.join(_REPO, "requirements.txt")) as f:
    match = re.search(r"^jax==(\S+)$", f.read(), re.MULTILINE)
  if not match:
    raise SystemExit("error: requirements.txt pins no jax==<version>")
  return match.group(1)


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--name", required=True, help="TPU VM (and queued resource) name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", help="GCP project (default: gcloud's configured one)")
  p.add_argument("--accelerator_type", default="v5p-64")
  p.add_argument("--runtime_version", help="TPU VM software version (default: by accelerator)")
  p.add_argument("--queued", action="store_true", help="create through a queued resource")
  p.add_argument("--reuse", action="store_true", help="the slice exists: skip creating it")
  p.add_argument("--delete", action="store_true", help="delete the slice (nothing else)")
  p.add_argument("--workdir", help="run folder every worker reaches: gs://bucket/path, or an "
                 "absolute path on a disk all workers mount")
  p.add_argument("--config", default="configs/train.py:pretrain_5b")
  p.add_argument("--extra_args", default="", help="more train flags, one shell-quoted string")
  p.add_argument("--python", default="python3.11", help="interpreter on the workers")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  args = p.parse_args(argv)
  if not args.delete and not args.workdir:
    p.error("--workdir is required (gs://bucket/path: every worker writes there)")
  if args.workdir and not args.workdir.startswith(("gs://", "/")):
    p.error(f"--workdir={args.workdir}: the workers share no disk; use gs://bucket/path or an "
            "absolute path on a shared mount")
  if args.workdir and args.workdir.startswith("gs://"):
    bucket, path = _bucket_and_path(args.workdir)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]", bucket) or not path.strip("/"):
      p.error(f"--workdir={args.workdir}: expected gs://bucket/path (a bucket name, then a folder "
              "inside the bucket)")
  if not args.runtime_version:
    family = args.accelerator_type.rsplit("-", 1)[0]
    if family not in _RUNTIMES:
      p.error(f"no default --runtime_version for {args.accelerator_type}; pass one")
    args.runtime_version = _RUNTIMES[family]
  return args


def _gcloud(args, *words: str) -> list[str]:
  project = [f"--project={args.project}"] if args.project else []
  return ["gcloud", "compute", "tpus", *words, f"--zone={args.zone}", *project]


def _on_workers(args, command: str, worker: str = "all") -> list[str]:
  return _gcloud(args, "tpu-vm", "ssh", args.name, f"--worker={worker}", f"--command={command}")


def create_commands(args) -> list[list[str]]:
  if not args.queued:
    return [_gcloud(args, "tpu-vm", "create", args.name, f"--accelerator-type={args.accelerator_type}",
                    f"--version={args.runtime_version}")]
  describe = shlex.join(_gcloud(args, "queued-resources", "describe", args.name,
                                "--format=value(state.state)"))
  wait = (f"while true; do state=$({describe}); case $state in ACTIVE) break;; "
          f"FAILED|SUSPENDED) echo \"queued resource {args.name}: $state\" >&2; exit 1;; esac; "
          "sleep 30; done")
  return [_gcloud(args, "queued-resources", "create", args.name, f"--node-id={args.name}",
                  f"--accelerator-type={args.accelerator_type}",
                  f"--runtime-version={args.runtime_version}"),
          ["bash", "-c", wait]]


def _bucket_and_path(workdir: str) -> tuple[str, str]:
  bucket, _, path = workdir[len("gs://"):].partition("/")
  return bucket, path


def mount_command(args) -> str:
  """Mounts a gs:// workdir's bucket at ~/gcs/<bucket> (gcsfuse from Google's apt repository if
  missing). Directory renames are allowed because Orbax commits a checkpoint step by renaming its
  temporary folder; gcsfuse renames folders object by object, so that commit is not atomic."""
  bucket, _ = _bucket_and_path(args.workdir)
  repository = ("deb [signed-by=/usr/share/keyrings/cloud.google.asc] "
                "https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main")
  install = " && ".join([
      f"echo {shlex.quote(repository)} | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null",
      "curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
      " | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null",
      "sudo apt-get update -qq", "sudo apt-get install -y -qq gcsfuse"])
  mount_point = f"{_MOUNTS}/{bucket}"
  return (f"(command -v gcsfuse >/dev/null || ({install})) && mkdir -p {mount_point} && "
          f"(mountpoint -q {mount_point} || gcsfuse --implicit-dirs --rename-dir-limit=1000000 "
          f"{shlex.quote(bucket)} {mount_point})")


def worker_workdir(args) -> str:
  """The workdir as the train command (run from the code folder) names it on a worker."""
  if not args.workdir.startswith("gs://"):
    return args.workdir
  bucket, path = _bucket_and_path(args.workdir)
  return f"../{_MOUNTS}/{bucket}/{path}"


def train_command(args) -> str:
  """The command every worker runs from its code folder."""
  return shlex.join([f"../{_VENV}/bin/python", "-m", "flashworld_jax.train",
                     f"--config={args.config}", f"--workdir={worker_workdir(args)}",
                     *shlex.split(args.extra_args)])


def launch_commands(args) -> list[list[str]]:
  archive = os.path.join(tempfile.gettempdir(), f"{args.name}-code.tar.gz")
  install = " && ".join([
      f"(command -v {args.python} >/dev/null || (sudo apt-get update -qq && "
      f"sudo apt-get install -y -qq {args.python} {args.python}-venv))",
      f"rm -rf {_CODE}", f"mkdir {_CODE}", f"tar -xzf {_ARCHIVE} -C {_CODE}",
      f"(test -x {_VENV}/bin/python || {args.python} -m venv {_VENV})",
      f"{_VENV}/bin/pip install -q -r {_CODE}/requirements.txt 'jax[tpu]=={jax_pin()}'",
      f"{_VENV}/bin/pip install -q --no-deps -e {_CODE}"])
  stop_previous = (f"if [ -f {_PID} ]; then kill $(cat {_PID}) 2>/dev/null; "
                   f"while kill -0 $(cat {_PID}) 2>/dev/null; do sleep 5; done; fi")
  start = (f"{stop_previous}; cd {_CODE} || exit 1; setsid nohup {train_command(args)} "
           f"> ../{_LOG} 2>&1 < /dev/null & echo $! > ../{_PID}")
  mount = [_on_workers(args, mount_command(args))] if args.workdir.startswith("gs://") else []
  return [["git", "-C", _REPO, "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
          _gcloud(args, "tpu-vm", "scp", archive, f"{args.name}:{_ARCHIVE}", "--worker=all"),
          _on_workers(args, install),
          *mount,
          _on_workers(args, start),
          _on_workers(args, f"tail -n +1 -F {_LOG}", worker="0")]


def delete_commands(args) -> list[list[str]]:
  if args.queued:
    return [_gcloud(args, "queued-resources", "delete", args.name, "--force", "--quiet")]
  return [_gcloud(args, "tpu-vm", "delete", args.name, "--quiet")]


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.delete:
    commands = delete_commands(args)
  else:
    commands = ([] if args.reuse else create_commands(args)) + launch_commands(args)
  if not args.dry_run and subprocess.run(["git", "-C", _REPO, "diff", "--quiet", "HEAD"]).returncode:
    print("warning: uncommitted changes are not copied (the workers get git HEAD)", file=sys.stderr)
  for command in commands:
    print(shlex.join(command), flush=True)
    if not args.dry_run and subprocess.call(command):
      raise SystemExit(f"error: command failed: {shlex.join(command)}")


if __name__ == "__main__":
  main()
