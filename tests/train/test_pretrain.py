"""The pre-training step: where gradients flow, the input-view loss, and the sharded step against the
one-device step (the NaN/Inf guard is tested on the loop's compiled step, test_loop)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flashworld_jax import sharding
from flashworld_jax.data import pipeline
from flashworld_jax.models.dit import dit_output_channels
from flashworld_jax.train import loop, pretrain


def _setup(cfg, mesh):
  return pretrain.build(cfg, mesh)


def _batch(cfg):
  dataset = pipeline.make_dataset(loop.sources(cfg), loop.sample_spec(cfg), cfg.data.batch_size,
                                  cfg.seed, tokenize=loop.make_tokenize(cfg))
  batch = next(pipeline.make_iterator(dataset, num_threads=1))
  return {k: jnp.asarray(v) for k, v in batch.items() if k not in ("text", "clip_id")}


def _render_loss_grads(cfg, graphdef, state, frozen, batch, key=jax.random.key(3)):
  """d loss_3d / d (params, frozen), through the step's own functions. (L_MV, the rest of the loss,
  is the velocity's MSE: inside the loss it touches neither the VAE nor the text encoder.)"""
  settings = loop.render_settings(cfg)
  inputs = pretrain.encode_inputs(nnx.merge(graphdef, state.params, frozen), batch,
                                  cfg.data.num_input_views, jax.random.key(1))

  def loss_3d(params, frozen_state):
    _, metrics = pretrain.pretrain_loss(params, frozen_state, graphdef, inputs, batch["view_mask"],
                                        key, cfg=cfg, settings=settings)
    return metrics["loss_3d"]

  # Both arguments differentiated: NNX wants the DiT's and the encoders' variables on one trace.
  return jax.jit(jax.grad(loss_3d, argnums=(0, 1)))(state.params, frozen)


def test_render_loss_reaches_the_feature_head_and_the_decoder_not_the_frozen_parts(tiny_config, mesh1):
  cfg = tiny_config
  # D_G's feature conv and its Gaussian head start at zero (REF), which stops every gradient to the
  # trunk and the feature head at init: give them the values one update would.
  cfg.pretrain.self_conditioning_prob = 0.0
  graphdef, state, frozen = _setup(cfg, mesh1)
  decoder = state.params["gaussian_decoder"]
  for i, kernel in enumerate((decoder["extra_conv_in"]["kernel"], decoder["gs_head"]["gs_proj"]["kernel"])):
    kernel[...] = jax.random.normal(jax.random.key(5 + i), kernel.shape) * 0.01
  grads, frozen_grads = _render_loss_grads(cfg, graphdef, state, frozen, _batch(cfg))
  # proj_out rows are (patch position, output channel): velocity channels first, then features.
  proj_out = np.asarray(grads["dit"]["proj_out"]["kernel"][...])
  channels = proj_out.reshape(proj_out.shape[0], 4, dit_output_channels(cfg.model.dit))
  velocity_part = channels[..., :cfg.model.dit.latent_channels]
  feature_part = channels[..., cfg.model.dit.latent_channels:]
  assert np.abs(feature_part).max() > 0
  assert np.abs(velocity_part).max() == 0          # x̂₀_MV enters D_G under stop-gradient
  decoder = jax.tree.leaves(grads["gaussian_decoder"])
  assert all(np.isfinite(g).all() for g in decoder)
  assert sum(float(np.abs(g).max() > 0) for g in decoder) > 0.8 * len(decoder)
  # The frozen VAE and text encoder are not trainable, and no gradient reaches their weights (the
  # latent statistics, buffers that un-normalise D_G's input, are constants of the run).
  assert set(state.params.keys()) == {"dit", "gaussian_decoder"}
  frozen_weights = nnx.filter_state(frozen_grads, nnx.Param)
  for name in ("vae", "text_encoder"):
    leaves = jax.tree.leaves(frozen_weights[name])
    assert leaves and all(float(np.abs(g).max()) == 0.0 for g in leaves), name


def _run_step(cfg, mesh, batch):
  graphdef, state, frozen = _setup(cfg, mesh)
  step = jax.jit(pretrain.make_step(cfg, graphdef, loop.render_settings(cfg)))
  with jax.set_mesh(mesh):
    return step(state, frozen, loop.global_batch(batch, mesh)), state


# Slow lane (170 s, most of it compiling the 8-device step); the sharded DiT, VAE and Gaussian
# decoder are compared with one device in the default suite (tests/models).
@pytest.mark.slow
def test_sharded_step_equals_the_one_device_step(tiny_config, mesh1):
  cfg = tiny_config
  cfg.data.batch_size = 4
  dataset = pipeline.make_dataset(loop.sources(cfg), loop.sample_spec(cfg), 4, 0,
                                  tokenize=loop.make_tokenize(cfg))
  batch = next(pipeline.make_iterator(dataset, num_threads=1))
  (one, one_metrics), _ = _run_step(cfg, mesh1, batch)
  mesh8 = sharding.make_mesh(data=2, fsdp=2, tensor=2, sequence=1)
  (eight, eight_metrics), _ = _run_step(cfg, mesh8, batch)
  np.testing.assert_allclose(float(eight_metrics["loss"]), float(one_metrics["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(eight_metrics["grad_norm"]), float(one_metrics["grad_norm"]),
                             rtol=1e-4)
  worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(eight.params)))
  assert worst < 1e-5, worst
  sharded = [x for x in jax.tree.leaves(eight.params) if not x.sharding.is_fully_replicated]
  assert sharded, "no parameter is sharded on the 8-device mesh"


def test_input_view_loss_adds_the_input_renders_and_leaves_the_novel_loss(tiny_config, mesh1):
  cfg = tiny_config
  cfg.pretrain.self_conditioning_prob = 0.0
  graphdef, state, frozen = _setup(cfg, mesh1)
  batch = _batch(cfg)
  settings = loop.render_settings(cfg)
  inputs = pretrain.encode_inputs(nnx.merge(graphdef, state.params, frozen), batch,
                                  cfg.data.num_input_views, jax.random.key(1))

  def metrics(weight):
    cfg.pretrain.input_view_loss_weight = weight
    return jax.jit(lambda p, f: pretrain.pretrain_loss(
        p, f, graphdef, inputs, batch["view_mask"], jax.random.key(3), cfg=cfg,
        settings=settings)[1])(state.params, frozen)

  plain, supervised = metrics(0.0), metrics(0.5)
  assert "loss_3d_input" not in plain
  np.testing.assert_allclose(float(supervised["loss_3d"]), float(plain["loss_3d"]), rtol=1e-6)
  np.testing.assert_allclose(float(supervised["loss"]), float(
      plain["loss"] + 0.5 * supervised["loss_3d_input"]), rtol=1e-6)
  assert 0 < float(supervised["loss_3d_input"]) < 4  # renders and frames lie in [−1, 1]
