"""VAE training stage: the loss against numpy, the latent statistics it exports, learning, and the
Gaussian decoder that the next stage starts from the trained decoder."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flashworld_jax import checkpoint, sharding
from flashworld_jax.models.flashworld import build_flashworld
from flashworld_jax.train import autoencoder, checkpoints, export, loop


def _vae_config(cfg):
  cfg.stage = "vae"
  cfg.optimizer.learning_rate = 3e-3
  return cfg


def test_kl_divergence_matches_the_gaussian_formula():
  rng = np.random.default_rng(0)
  mean, logvar = rng.normal(size=(2, 3, 4, 5))
  expected = np.log(1.0 / np.exp(0.5 * logvar)) + (np.exp(logvar) + mean ** 2) / 2.0 - 0.5
  np.testing.assert_allclose(autoencoder.kl_divergence(jnp.asarray(mean), jnp.asarray(logvar)),
                             expected, rtol=1e-5, atol=1e-6)


def test_loss_is_the_weighted_l1_and_kl_of_the_posterior_sample(make_tiny_config):
  cfg = _vae_config(make_tiny_config())
  mesh = sharding.single_device_mesh()
  graphdef, state, frozen = autoencoder.build(cfg, mesh)
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, size=(3, 32, 64, 3)).astype(np.float32)
  weights = np.array([1.0, 0.0, 1.0], np.float32)
  key = jax.random.key(2)
  loss, (metrics, moments) = autoencoder.reconstruction_loss(
      state.params, frozen, graphdef, jnp.asarray(images), jnp.asarray(weights), key, kl_weight=0.5)

  vae = nnx.merge(graphdef, state.params, frozen).vae
  mean, logvar = (np.asarray(x, np.float64) for x in vae.encode(jnp.asarray(images)))
  z = vae.sample_posterior(jnp.asarray(mean, jnp.float32), jnp.asarray(logvar, jnp.float32), key)
  recon = np.asarray(vae.decode(z, clip=False), np.float64)
  kept = weights > 0
  l1 = np.abs(recon - images)[kept].mean()
  kl = (0.5 * (mean ** 2 + np.exp(logvar) - 1.0 - logvar))[kept].mean()
  np.testing.assert_allclose(float(metrics["loss_l1"]), l1, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["kl"]), kl, rtol=1e-4)
  np.testing.assert_allclose(float(loss), l1 + 0.5 * kl, rtol=1e-5)
  z = np.asarray(z, np.float64)[kept]
  np.testing.assert_allclose(moments[0], z.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(moments[1], (z ** 2).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def vae_run(make_tiny_config, tmp_path_factory):
  cfg = _vae_config(make_tiny_config())
  cfg.num_steps = 200
  cfg.checkpoint_every = 200
  cfg.log_every = 50
  cfg.eval_every = 200
  workdir = str(tmp_path_factory.mktemp("vae_run"))
  return cfg, workdir, loop.run(cfg, workdir)


def test_vae_stage_learns_to_reconstruct(vae_run):
  _, _, summary = vae_run
  before, after = summary["eval_initial"], summary["eval"]
  assert after["eval/psnr_reconstruction"] > before["eval/psnr_reconstruction"] + 1.5, (before, after)


def test_exported_vae_carries_the_latent_statistics_and_no_dit(vae_run):
  cfg, workdir, _ = vae_run
  exported = checkpoints.directory(workdir)
  assert checkpoint.available_components(exported) == {"vae", "text_encoder"}
  mesh = sharding.single_device_mesh()
  model, random = build_flashworld(cfg.model, mesh, exported, for_training=True)
  assert set(random) == {"dit", "gaussian_decoder"}
  _, template, _ = autoencoder.build(cfg, mesh)
  with checkpoints.manager(workdir, cfg.keep_checkpoints) as mngr:
    state, _, _ = checkpoints.restore(mngr, template)
  mean, std = autoencoder.latent_statistics(state.latent_moments)
  np.testing.assert_array_equal(model.vae.latents_mean[...], mean)
  np.testing.assert_array_equal(model.vae.latents_std[...], std)
  assert not np.allclose(std, 1.0)


def test_gaussian_decoder_starts_from_the_trained_vae_decoder(vae_run):
  cfg, workdir, _ = vae_run
  mesh = sharding.single_device_mesh()
  model, _ = build_flashworld(cfg.model, mesh, f"{workdir}/checkpoints", for_training=True)
  vae_params = dict(nnx.to_flat_state(nnx.state(model.vae.decoder, nnx.Param)))
  trunk_params = dict(nnx.to_flat_state(nnx.state(model.gaussian_decoder.decoder, nnx.Param)))
  copied = [path for path in trunk_params if path[0] not in ("norm_out",)]
  assert copied and all(path in vae_params for path in copied)
  for path in copied:
    np.testing.assert_array_equal(trunk_params[path][...], vae_params[path][...])
    # Own buffers: D_G's state is donated by the training step, the frozen VAE's must survive it.
    assert (trunk_params[path][...].unsafe_buffer_pointer()
            != vae_params[path][...].unsafe_buffer_pointer()), path
  np.testing.assert_array_equal(model.gaussian_decoder.post_quant_conv.kernel[...],
                                model.vae.post_quant_conv.kernel[...])
  # The trained norm_out is not copied: D_G's own starts fresh.
  assert not np.array_equal(trunk_params[("norm_out", "scale")][...],
                            vae_params[("norm_out", "scale")][...])


def test_export_keeps_the_model_only(vae_run, tmp_path):
  cfg, workdir, _ = vae_run
  output = str(tmp_path / "model")
  assert export.export(workdir, output) == {"vae", "text_encoder"}
  assert checkpoint.available_components(output) == {"vae", "text_encoder"}
  assert (json.loads(checkpoint.restore_config(output).to_json())
          == json.loads(cfg.model.to_json()))
  step_items = set(os.listdir(os.path.join(output, "0")))
  assert not step_items & {checkpoints.STATE, checkpoints.DATA_ITERATOR}, step_items
  mesh = sharding.single_device_mesh()
  exported, _ = build_flashworld(cfg.model, mesh, output, for_training=True)
  trained, _ = build_flashworld(cfg.model, mesh, checkpoints.directory(workdir), for_training=True)
  np.testing.assert_array_equal(exported.vae.decoder.conv_out.kernel[...],
                                trained.vae.decoder.conv_out.kernel[...])
