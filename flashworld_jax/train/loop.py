"""The one training loop of every stage: mesh → data → model and optimizer → shardings → step →
checkpoint → evaluation → loop.

A stage (`STAGES`) supplies the trainable components and its pure step function, and optionally the
components it exports (`COMPONENTS`), per-sample constants (`batch_constants`) and its own held-out
evaluation (`evaluate`, default: the 3D mode's); everything else —
exact resume from the latest checkpoint (state and data order), a NaN/Inf guard that skips the update
and stops after `max_consecutive_nonfinite` in a row, render capacities grown on overflow (the same
batch re-runs), progress bar, JSONL and TensorBoard metrics, periodic held-out evaluation and
SIGTERM (preemption) saves — is shared.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from flashworld_jax import checkpoint as model_checkpoint
from flashworld_jax import executables
from flashworld_jax import sharding
from flashworld_jax.data import ood, pipeline, sampling
from flashworld_jax.io import atomic
from flashworld_jax.models.tokenizer import load_tokenizer
from flashworld_jax.sampling import sampler
from flashworld_jax.train import autoencoder, checkpoints, distill, evaluation, metric_writer, pretrain

STAGES = {"vae": autoencoder, "pretrain": pretrain, "distill": distill}
_HOST_ONLY = ("text", "clip_id")          # strings stay on the host; tokens go to the devices


class TrainingError(RuntimeError):
  """The run cannot go on (bad data location, repeated non-finite updates); the message says why."""


class _Preemption:
  """Remembers a SIGTERM so the loop can save and exit between steps."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint after the current step, then exiting")
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def sample_spec(cfg: ml_collections.ConfigDict) -> sampling.SampleSpec:
  d = cfg.data
  return sampling.SampleSpec(
      num_input_views=d.num_input_views, num_novel_views=d.num_novel_views, height=d.height,
      width=d.width, min_frame_stride=d.min_frame_stride, max_frame_stride=d.max_frame_stride,
      p_image_condition=d.p_image_condition, p_drop_text=d.p_drop_text,
      p_drop_image=d.p_drop_image, caption_prefix=cfg.model.text.prefix)


def sources(cfg: ml_collections.ConfigDict) -> list[pipeline.SourceSpec]:
  specs = [pipeline.SourceSpec(cfg.data.train_dir, cfg.data.train_split)]
  for entry in cfg.data.extra_sources:
    folder, split, weight = entry.rsplit(":", 2)
    specs.append(pipeline.SourceSpec(folder, split, float(weight)))
  for spec in specs:
    if not os.path.exists(os.path.join(spec.data_dir, "dataset_info.json")):
      raise TrainingError(f"data folder {spec.data_dir!r} holds no built dataset; build it with "
                          "`python -m flashworld_jax.data.build` (README, \"Training data\")")
  return specs


def ood_mix(cfg: ml_collections.ConfigDict) -> dict:
  """Distillation's single images and prompts and their share of the samples (spec §13.4)."""
  d = cfg.get("distill")
  if d is None or d.ood_weight <= 0:
    return {}
  if d.ood_images_dir or d.ood_prompts:
    sources_ = ood.load_sources(d.ood_images_dir or None, d.ood_prompts or None,
                                d.ood_image_captions or None, d.p_template_trajectory)
  elif d.ood_from_dataset:
    folder, split = d.ood_from_dataset.rsplit(":", 1)
    sources_ = ood.from_multiview(folder, split, d.p_template_trajectory)
  else:
    return {}
  return {"ood_sources": sources_, "ood_weight": d.ood_weight}


def make_tokenize(cfg: ml_collections.ConfigDict):
  tokenizer = load_tokenizer(cfg.model.text.tokenizer)

  def tokenize(text: str) -> dict:
    ids, mask = tokenizer.encode_batch([text], cfg.model.text.max_length)
    return {"token_ids": np.asarray(ids[0], np.int32), "token_mask": np.asarray(mask[0], np.int32)}

  return tokenize


def render_settings(cfg: ml_collections.ConfigDict) -> sampler.RenderSettings:
  """Per-view render capacity of the training renders (one view of one scene at a time)."""
  d, g = cfg.data, cfg.model.gaussian_decoder
  num_gaussians = d.num_input_views * g.gaussians_per_pixel * (d.height // 2) * (d.width // 2)
  capacity = sampler.initial_capacity(cfg.model, num_gaussians)
  # No tile can list more Gaussians than the scene has: small scenes never outgrow that capacity.
  capacity = capacity._replace(tile_capacity=min(capacity.tile_capacity,
                                                 -(-num_gaussians // 128) * 128))
  return sampler.RenderSettings(d.height, d.width, capacity, near_plane=cfg.model.render.near_plane,
                                far_plane=cfg.model.render.far_plane, backend=cfg.model.render.backend)


def with_constants(batch: dict, constants: dict) -> dict:
  """The batch with a stage's per-sample constants (e.g. the unconditional prompt) repeated."""
  size = len(batch["kind"])
  return {**batch, **{k: np.broadcast_to(v, (size,) + np.shape(v)) for k, v in constants.items()}}


def global_batch(batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """Per-host numpy batch → global arrays split over the mesh's batch axes."""
  batch_sharding = sharding.batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
          for k, v in batch.items() if k not in _HOST_ONLY}


def components(stage, graphdef, state, frozen) -> dict[str, nnx.State]:
  """The model in `generate`'s checkpoint layout, with the EMA weights of the trained parts."""
  model = stage.flashworld(graphdef, state, frozen)
  names = getattr(stage, "COMPONENTS", model_checkpoint.COMPONENTS)
  return {name: nnx.state(getattr(model, name)) for name in names}


def grown_settings(settings: sampler.RenderSettings, needed) -> sampler.RenderSettings:
  return dataclasses.replace(settings, capacity=sampler.grown_capacity(
      settings.capacity, int(needed[0]), int(needed[1])))


def _shardings(tree):
  return jax.tree.map(lambda x: x.sharding, tree)


def _compile_step(stage, cfg, graphdef, settings, state, frozen, batch):
  """The step compiled for these arguments' shapes and shardings (the state is donated); a program
  this process compiled before (a resumed run, the same config again) is not compiled again."""
  step = jax.jit(stage.make_step(cfg, graphdef, settings),
                 in_shardings=(_shardings(state), _shardings(frozen), _shardings(batch)),
                 out_shardings=(_shardings(state), None), donate_argnums=0)
  return executables.compile(step.lower(state, frozen, batch))[0]


def run(cfg: ml_collections.ConfigDict, workdir: str, max_steps: int | None = None) -> dict:
  """Trains until `cfg.num_steps` (or `max_steps` more steps in this call); returns a summary."""
  stage = STAGES.get(cfg.stage)
  if stage is None:
    raise TrainingError(f"config stage {cfg.stage!r}: expected one of {sorted(STAGES)}")
  if "://" in workdir:
    raise TrainingError(f"--workdir={workdir}: the loop writes through the filesystem; mount the "
                        "bucket (gcsfuse, as launch/tpu_pod.py does) and pass the mount's path")
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    atomic.write_text(os.path.join(workdir, "config.json"), cfg.to_json(indent=1) + "\n")

  # ------------------------------------------------------------------ mesh
  mesh = sharding.mesh_from_config(cfg.model.mesh)
  batch_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  if cfg.data.batch_size % batch_ways:
    raise TrainingError(f"data.batch_size={cfg.data.batch_size} must divide by the mesh's data × fsdp "
                        f"= {batch_ways} devices (model.mesh: {dict(mesh.shape)})")

  # ------------------------------------------------------------------ data
  tokenize = make_tokenize(cfg)
  dataset = pipeline.make_dataset(sources(cfg), sample_spec(cfg), cfg.data.batch_size, cfg.seed,
                                  tokenize=tokenize, **ood_mix(cfg),
                                  rows=sharding.process_batch_rows(mesh, cfg.data.batch_size))
  d = cfg.data
  eval_scenes = (evaluation.load_scenes(
      d.eval_dir, d.eval_split,
      evaluation.eval_spec(d.num_input_views, d.num_novel_views, d.height, d.width), tokenize,
      cfg.eval.num_scenes) if d.eval_dir and cfg.eval_every else [])

  # ------------------------------------------------------------------ model and optimizer
  graphdef, state, frozen = stage.build(cfg, mesh)
  constants = stage.batch_constants(cfg, tokenize) if hasattr(stage, "batch_constants") else {}

  # ------------------------------------------------------------------ render capacity and step
  settings = render_settings(cfg)
  step_fn = None                  # compiled for the first batch
  eval_settings = dataclasses.replace(settings)

  # ------------------------------------------------------------------ checkpoint
  mngr = checkpoints.manager(workdir, cfg.keep_checkpoints)
  writer = metric_writer.MetricWriter(workdir)
  restored = checkpoints.restore(mngr, state)
  next_batch = 0
  if restored is not None:
    state, data_position, start = restored
    next_batch = _next_batch(data_position, cfg, start)
    writer.truncate_after(start)
    logging.info("resumed from %s at step %d", checkpoints.directory(workdir), start)
  iterator = pipeline.make_iterator(dataset[next_batch:], cfg.data.num_threads, cfg.data.prefetch)
  start = int(state.step)
  end = cfg.num_steps if max_steps is None else min(cfg.num_steps, start + max_steps)

  # ------------------------------------------------------------------ loop
  preemption = _Preemption()
  nonfinite_streak, step, last_saved = 0, start, None
  interval, interval_start = [], time.perf_counter()
  summary = {"start_step": start}
  try:
    with jax.set_mesh(mesh), tqdm(total=end, initial=start, desc=f"{cfg.stage}",
                                  unit="step", disable=jax.process_index() != 0) as bar:
      # Under the mesh like the later evaluations, which then reuse its compiled sampler.
      if eval_scenes and start == 0:
        summary["eval_initial"], eval_settings = _evaluate(
            stage, cfg, stage.flashworld(graphdef, state, frozen), eval_scenes, eval_settings, 0,
            writer)
      while step < end:
        batch = global_batch(with_constants(next(iterator), constants), mesh)
        if step_fn is None:
          step_fn = _compile_step(stage, cfg, graphdef, settings, state, frozen, batch)
        while True:
          state, metrics = step_fn(state, frozen, batch)
          if not bool(metrics["overflow"]):
            break
          settings = grown_settings(settings, np.asarray(metrics["needed"]))
          step_fn = _compile_step(stage, cfg, graphdef, settings, state, frozen, batch)
        step += 1
        scalars = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
        nonfinite_streak = nonfinite_streak + 1 if scalars["nonfinite"] else 0
        if nonfinite_streak:
          logging.warning("step %d: non-finite loss or gradients, update skipped (%d in a row)",
                          step, nonfinite_streak)
          if nonfinite_streak >= cfg.max_consecutive_nonfinite:
            raise TrainingError(f"{nonfinite_streak} non-finite updates in a row at step {step}; "
                                f"the last good checkpoint is step {last_saved or start}")
        interval.append(scalars)
        bar.update(1)
        bar.set_postfix({k: f"{scalars[k]:.4f}" for k in ("loss", "loss_3d") if k in scalars})
        if step % cfg.log_every == 0 or step == end:
          seconds = (time.perf_counter() - interval_start) / len(interval)
          means = {k: float(np.mean([s[k] for s in interval])) for k in interval[0]}
          writer.write_scalars(step, {**means, "step_seconds": seconds,
                                      "samples_per_second": cfg.data.batch_size / seconds,
                                      "learning_rate": float(_learning_rate(cfg, step))})
          interval, interval_start = [], time.perf_counter()
        if eval_scenes and (step % cfg.eval_every == 0 or step == end):
          eval_metrics, eval_settings = _evaluate(stage, cfg,
                                                  stage.flashworld(graphdef, state, frozen),
                                                  eval_scenes, eval_settings, step, writer)
          summary["eval"] = eval_metrics
          interval_start = time.perf_counter()
        if step % cfg.checkpoint_every == 0 or step == end or preemption.requested:
          checkpoints.save(mngr, step, state, cfg, components(stage, graphdef, state, frozen))
          last_saved = step
          interval_start = time.perf_counter()
        if preemption.requested:
          break
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    preemption.restore()
  summary.update(end_step=step, preempted=preemption.requested)
  return summary


def _next_batch(data_position: dict, cfg, step: int) -> int:
  """The global batch a resumed run reads next; refuses a position this run cannot continue."""
  if "next_batch" not in data_position:
    raise TrainingError(f"checkpoint step {step}: its data position {data_position} predates "
                        "process-count-independent batches; start a new workdir")
  if data_position["batch_size"] != cfg.data.batch_size:
    raise TrainingError(f"checkpoint step {step} was trained with data.batch_size="
                        f"{data_position['batch_size']}, the config has {cfg.data.batch_size}: "
                        "global batch k would hold other samples; resume with the same batch size")
  return int(data_position["next_batch"])


def _learning_rate(cfg, step: int) -> float:
  warmup = max(cfg.optimizer.warmup_steps, 1)
  return cfg.optimizer.learning_rate * min(1.0, step / warmup)


def _evaluate(stage, cfg, model, scenes, settings, step, writer):
  start = time.perf_counter()
  evaluate = getattr(stage, "evaluate", evaluation.evaluate_3d)
  metrics, strips, settings = evaluate(model, scenes, cfg, settings)
  metrics = {f"eval/{k}": v for k, v in metrics.items()}
  metrics["eval/seconds"] = time.perf_counter() - start
  writer.write_scalars(step, metrics)
  writer.write_images(step, {f"eval/scene{i}": s for i, s in enumerate(strips[:cfg.eval.saved_scenes])})
  logging.info("step %d: %s", step, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
  return metrics, settings
