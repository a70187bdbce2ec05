"""Per-view Wan2.2 VAE: layer closed forms (numpy) and parity with diffusers' AutoencoderKLWan (T = 1)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.convert.sources import read_safetensors
from flashworld_jax.convert.vae import convert_vae
from flashworld_jax.models import vae_layers as L
from flashworld_jax.models.vae import WanVAE

# The tiny Wan2.2-style VAE of spec jax.md §9.
TINY_DIFFUSERS_VAE = dict(
    base_dim=16, decoder_base_dim=24, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
    attn_scales=[], temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
    out_channels=12, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4)


def tiny_vae_config():
  cfg = get_config("tiny")
  cfg.vae.base_dim, cfg.vae.decoder_base_dim, cfg.vae.num_res_blocks = 16, 24, 1
  return cfg


def max_rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def test_avg_down_shortcut_closed_forms():
  x = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
  pooled = x.reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(L.avg_down_shortcut(jnp.asarray(x), 3, 1, 2), pooled, atol=1e-6)
  doubled = np.asarray(L.avg_down_shortcut(jnp.asarray(x), 6, 2, 2))
  np.testing.assert_array_equal(doubled[..., 0::2], 0.0)   # the causal zero frame
  np.testing.assert_allclose(doubled[..., 1::2], pooled, atol=1e-6)
  np.testing.assert_array_equal(L.avg_down_shortcut(jnp.asarray(x), 3, 1, 1), x)


def test_dup_up_shortcut_closed_forms():
  x = np.random.default_rng(1).normal(size=(1, 2, 3, 4)).astype(np.float32)
  nearest = np.asarray(L.dup_up_shortcut(jnp.asarray(x), 4, 2, 2))
  np.testing.assert_array_equal(nearest, x.repeat(2, axis=1).repeat(2, axis=2))
  pairs = np.asarray(L.dup_up_shortcut(jnp.asarray(x), 2, 1, 2))
  for o in range(2):
    for a in range(2):
      for b in range(2):
        np.testing.assert_array_equal(pairs[0, a::2, b::2, o], x[0, :, :, 2 * o + a])


def test_patchify_channel_order_and_round_trip():
  images = np.random.default_rng(2).normal(size=(2, 4, 6, 3)).astype(np.float32)
  patches = np.asarray(L.patchify(jnp.asarray(images), 2))
  for c in range(3):
    for dx in range(2):
      for dy in range(2):
        np.testing.assert_array_equal(patches[..., c * 4 + dx * 2 + dy], images[:, dy::2, dx::2, c])
  np.testing.assert_array_equal(L.unpatchify(jnp.asarray(patches), 2), images)
  with pytest.raises(ValueError, match="divisible"):
    L.patchify(jnp.zeros((1, 5, 4, 3)), 2)


def test_encode_validates_input(mesh1):
  # Shapes only (no weights are drawn): the checks come before any use of them.
  with jax.set_mesh(mesh1), sharding.rules():
    vae = nnx.eval_shape(lambda: WanVAE(get_config("tiny").vae, rngs=nnx.Rngs(0), with_decoder=False))
  with pytest.raises(ValueError, match="multiple of 16"):
    vae.encode(jnp.zeros((1, 24, 32, 3)))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    vae.encode(jnp.zeros((1, 32, 32)))
  with pytest.raises(ValueError, match="with_decoder=False"):
    vae.decode(jnp.zeros((1, 2, 2, 48)))


def test_latent_normalisation_round_trip(mesh1):
  cfg = get_config("tiny")
  cfg.vae.latents_mean = tuple(np.linspace(-1, 1, 48))
  cfg.vae.latents_std = tuple(np.linspace(0.5, 2, 48))
  with jax.set_mesh(mesh1), sharding.rules():
    vae = WanVAE(cfg.vae, rngs=nnx.Rngs(0), with_decoder=False)
  z = jax.random.normal(jax.random.key(0), (2, 2, 3, 48))
  zn = vae.normalize_latent(z)
  np.testing.assert_allclose(zn, (z - np.linspace(-1, 1, 48)) / np.linspace(0.5, 2, 48), rtol=1e-6)
  np.testing.assert_allclose(vae.unnormalize_latent(zn), z, atol=1e-6)
  assert not isinstance(vae.latents_mean, nnx.Param)


def make_diffusers_vae(path, seed=0):
  """Random tiny AutoencoderKLWan (all weights perturbed, incl. norm gains), saved to `path`."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(seed)
  model = diffusers.AutoencoderKLWan(**TINY_DIFFUSERS_VAE, latents_mean=[0.0] * 48,
                                     latents_std=[1.0] * 48).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("gamma"):
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.05 * torch.randn_like(p))
  model.save_pretrained(path)
  return model


@pytest.fixture(scope="module")
def converted_vae(tmp_path_factory):
  path = tmp_path_factory.mktemp("wan_vae")
  torch_model = make_diffusers_vae(path)
  with open(path / "config.json") as f:
    vae_config = json.load(f)
  cfg = tiny_vae_config()
  mesh = sharding.single_device_mesh()
  with jax.set_mesh(mesh), sharding.rules():
    state = convert_vae(cfg, read_safetensors(str(path)), vae_config)
    vae = WanVAE(cfg.vae, rngs=nnx.Rngs(1))
  nnx.update(vae, state)
  return torch_model, vae


@pytest.mark.oracle
def test_encode_matches_diffusers_one_frame(converted_vae):
  torch = pytest.importorskip("torch")
  torch_model, vae = converted_vae
  images = np.random.default_rng(3).uniform(-1, 1, size=(2, 32, 48, 3)).astype(np.float32)
  with torch.no_grad():
    video = torch.from_numpy(images).permute(0, 3, 1, 2)[:, :, None]  # [B, 3, T=1, H, W]
    dist = torch_model.encode(video).latent_dist
    ref_mean = dist.mean[:, :, 0].permute(0, 2, 3, 1).numpy()
    ref_logvar = dist.logvar[:, :, 0].permute(0, 2, 3, 1).numpy()
  mean, logvar = jax.jit(lambda x: vae.encode(x))(images)
  assert mean.shape == (2, 2, 3, 48)
  assert max_rel_err(mean, ref_mean) <= 1e-4
  assert max_rel_err(logvar, ref_logvar) <= 1e-4


@pytest.mark.oracle
def test_decode_matches_diffusers_one_frame(converted_vae):
  torch = pytest.importorskip("torch")
  from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify
  torch_model, vae = converted_vae
  z = np.random.default_rng(4).normal(size=(2, 2, 3, 48)).astype(np.float32)
  with torch.no_grad():
    zt = torch.from_numpy(z).permute(0, 3, 1, 2)[:, :, None]
    ref = torch_model.decode(zt).sample[:, :, 0].permute(0, 2, 3, 1).numpy()
    torch_model.clear_cache()   # the un-clamped output, with the first-chunk cache path of decode
    raw = torch_model.decoder(torch_model.post_quant_conv(zt), feat_cache=torch_model._feat_map,
                              feat_idx=torch_model._conv_idx, first_chunk=True)
    ref_raw = unpatchify(raw, 2)[:, :, 0].permute(0, 2, 3, 1).numpy()
  ours = jax.jit(lambda z: vae.decode(z))(z)
  ours_raw = jax.jit(lambda z: L.unpatchify(vae.decoder(vae.post_quant_conv(z)), 2))(z)
  assert ours.shape == (2, 32, 48, 3)
  assert max_rel_err(ours_raw, ref_raw) <= 1e-4
  assert max_rel_err(ours, ref) <= 1e-4


def test_encode_sharded_matches_single_device(mesh8):
  cfg = get_config("tiny")
  images = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    ref = nnx.jit(lambda v, x: v.encode(x)[0])(
        WanVAE(cfg.vae, rngs=nnx.Rngs(0), with_decoder=False), images)
  with jax.set_mesh(mesh8), sharding.rules():
    vae = WanVAE(cfg.vae, rngs=nnx.Rngs(0), with_decoder=False)
    assert vae.encoder.conv_out.kernel[...].sharding.spec == jax.P(None, None, None, "fsdp")
    mean = nnx.jit(lambda v, x: v.encode(x)[0])(vae, images)
  np.testing.assert_allclose(mean, ref, rtol=1e-4, atol=1e-5)


def test_encode_one_view_at_a_time_equals_all_views_in_outputs_and_gradients(mesh1, mesh8):
  """Distillation backpropagates through the encoder into its renders: the gradients with respect
  to the images and the weights must not change when each device scans its own views."""
  images = jax.random.uniform(jax.random.key(1), (8, 32, 48, 3), minval=-1, maxval=1)

  def run(one_at_a_time, mesh):
    cfg = get_config("tiny")
    cfg.vae.encode_views_one_at_a_time = one_at_a_time
    with jax.set_mesh(mesh), sharding.rules():
      vae = WanVAE(cfg.vae, rngs=nnx.Rngs(0), with_decoder=False)
      graphdef, params, rest = nnx.split(vae, nnx.Param, ...)

      def loss(params, images):
        mean, logvar = nnx.merge(graphdef, params, rest).encode(images)
        return jnp.sum(jnp.sin(mean)) + 0.1 * jnp.sum(logvar), (mean, logvar)

      (_, moments), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
          params, images)
    return moments, grads

  moments_one, grads_one = run(True, mesh8)
  moments_all, grads_all = run(False, mesh1)
  for a, b in zip(moments_one, moments_all):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert len(jax.tree.leaves(grads_one)) == len(jax.tree.leaves(grads_all))
  # Weight gradients reach ~100 and are summed over 8 devices in another order: atol is 1e-6 of that.
  for a, b in zip(jax.tree.leaves(grads_one), jax.tree.leaves(grads_all)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
