"""The training loop: exact resume across a stop, the NaN/Inf stop with the last good checkpoint
intact, SIGTERM saves, metrics files, and a trainer checkpoint that `generate` turns into a scene."""
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from flashworld_jax import sharding
from flashworld_jax.data import pipeline
from flashworld_jax.sampling import sampler
from flashworld_jax.train import checkpoints, loop, metric_writer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _saved_state(workdir: str, step: int) -> dict:
  with ocp.CheckpointManager(checkpoints.directory(workdir)) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(
        **{checkpoints.STATE: ocp.args.StandardRestore()}))
  return restored[checkpoints.STATE]


@pytest.fixture(scope="module")
def uninterrupted(make_tiny_config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  summary = loop.run(make_tiny_config(), workdir)
  # Programs the sampler was compiled to (every module starts with empty caches: conftest).
  return workdir, summary, sampler._sample_scene_jit._cache_size()


def test_killed_run_resumes_bitwise(uninterrupted, tiny_config, tmp_path):
  workdir, summary, _ = uninterrupted
  assert summary["end_step"] == 4 and "eval" in summary and "eval_initial" in summary
  resumed_dir = str(tmp_path)
  first = loop.run(tiny_config, resumed_dir, max_steps=2)       # stops after step 2 (checkpoint)
  assert first["end_step"] == 2
  second = loop.run(tiny_config, resumed_dir)                  # a new process would do the same
  assert second["start_step"] == 2 and second["end_step"] == 4
  expected, got = _saved_state(workdir, 4), _saved_state(resumed_dir, 4)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The metrics of the resumed run continue the first one's rows, step by step.
  steps = [row["step"] for row in metric_writer.read_metrics(resumed_dir) if "loss" in row]
  assert steps == [1, 2, 3, 4]
  # Global batch k depends on the batch size: another one cannot continue the data stream.
  other = tiny_config.copy_and_resolve_references()
  other.data.batch_size, other.num_steps = 2 * tiny_config.data.batch_size, 6
  with pytest.raises(loop.TrainingError, match=rf"checkpoint step 4 was trained with "
                     rf"data.batch_size={tiny_config.data.batch_size}, the config has "
                     rf"{other.data.batch_size}"):
    loop.run(other, resumed_dir)


def test_run_writes_config_metrics_and_tensorboard(uninterrupted):
  workdir, _, _ = uninterrupted
  assert os.path.exists(os.path.join(workdir, "config.json"))
  rows = metric_writer.read_metrics(workdir)
  assert {"loss", "loss_mv", "loss_3d", "step_seconds", "samples_per_second"} <= set(rows[1])
  assert any("eval/psnr_novel" in row for row in rows)
  scalars = metric_writer.read_tensorboard_scalars(os.path.join(workdir, "tensorboard"))
  assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4]
  assert os.path.exists(os.path.join(workdir, "images", "4", "eval_scene0.png"))


def test_evaluations_of_a_run_share_one_compiled_sampler(uninterrupted):
  _, summary, sampler_programs = uninterrupted
  assert "eval_initial" in summary and "eval" in summary       # at step 0 and at step 4
  assert sampler_programs == 1


def test_nonfinite_update_is_skipped(uninterrupted, tiny_config):
  """A NaN camera: the step reports it, counts the step and keeps the parameters (the step is the
  run's own, compiled by `uninterrupted`, so it is reused here rather than compiled again)."""
  del uninterrupted
  cfg = tiny_config
  stage = loop.STAGES[cfg.stage]
  mesh = sharding.mesh_from_config(cfg.model.mesh)
  graphdef, state, frozen = stage.build(cfg, mesh)
  dataset = pipeline.make_dataset(loop.sources(cfg), loop.sample_spec(cfg), cfg.data.batch_size,
                                  cfg.seed, tokenize=loop.make_tokenize(cfg))
  batch = next(pipeline.make_iterator(dataset, num_threads=1))
  batch["cameras"] = batch["cameras"].copy()
  batch["cameras"][0, 1, 4] = np.nan
  before = [np.array(x, copy=True) for x in jax.tree.leaves(state.params)]   # the state is donated
  with jax.set_mesh(mesh):
    batch = loop.global_batch(batch, mesh)
    step = loop._compile_step(stage, cfg, graphdef, loop.render_settings(cfg), state, frozen, batch)
    new_state, metrics = step(state, frozen, batch)
  assert bool(metrics["nonfinite"]) and not bool(metrics["overflow"])
  assert int(new_state.step) == 1
  for old, new in zip(before, jax.tree.leaves(new_state.params)):
    np.testing.assert_array_equal(old, np.asarray(new))


def test_repeated_nonfinite_updates_stop_the_run_and_keep_the_last_good_checkpoint(
    tiny_config, tmp_path, monkeypatch):
  workdir = str(tmp_path)
  loop.run(tiny_config, workdir, max_steps=2)
  good = _saved_state(workdir, 2)
  real = loop.global_batch

  def poisoned(batch, mesh):
    batch = dict(batch, cameras=np.full_like(batch["cameras"], np.nan))
    return real(batch, mesh)

  monkeypatch.setattr(loop, "global_batch", poisoned)
  tiny_config.max_consecutive_nonfinite = 2
  with pytest.raises(loop.TrainingError, match="2 non-finite updates in a row at step 4; the last "
                                               "good checkpoint is step 2"):
    loop.run(tiny_config, workdir)
  with ocp.CheckpointManager(checkpoints.directory(workdir)) as mngr:
    assert mngr.all_steps() == [2]
  for a, b in zip(jax.tree.leaves(good), jax.tree.leaves(_saved_state(workdir, 2))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sigterm_saves_and_exits_between_steps(tiny_config, tmp_path, monkeypatch):
  tiny_config.checkpoint_every = 100
  real = loop.global_batch
  calls = []

  def preempt_on_second_batch(batch, mesh):
    calls.append(1)
    if len(calls) == 2:
      os.kill(os.getpid(), signal.SIGTERM)
    return real(batch, mesh)

  monkeypatch.setattr(loop, "global_batch", preempt_on_second_batch)
  summary = loop.run(tiny_config, str(tmp_path))
  assert summary["preempted"] and summary["end_step"] == 2
  with ocp.CheckpointManager(checkpoints.directory(str(tmp_path))) as mngr:
    assert mngr.all_steps() == [2]


def test_trainer_checkpoint_generates_a_scene(uninterrupted, tmp_path):
  workdir, _, _ = uninterrupted
  out = tmp_path / "scenes"
  result = subprocess.run(
      [sys.executable, "-m", "flashworld_jax.generate", "--config=configs/flashworld.py:tiny",
       f"--checkpoint={checkpoints.directory(workdir)}", "--text=a red box", "--num_views=4",
       "--resolution=32,64", "--video=false", f"--output_dir={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "RANDOM WEIGHTS" not in result.stderr
  (scene,) = os.listdir(out)
  assert {"gaussians.ply", "gaussians.spz", "request.json"} <= set(os.listdir(out / scene))


def test_a_bucket_url_workdir_is_refused_before_anything_is_written(tiny_config, tmp_path,
                                                                    monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(loop.TrainingError, match=r"--workdir=gs://bucket/run: .*mount the bucket"):
    loop.run(tiny_config, "gs://bucket/run")
  assert os.listdir(tmp_path) == []
