"""VAE / D_G weight import: validation errors, D_G initialised from the VAE, Orbax round trip."""
import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from flashworld_jax import checkpoint, sharding
from flashworld_jax.convert.sources import ConversionError, from_arrays, read_safetensors
from flashworld_jax.convert.vae import (convert_gaussian_decoder, convert_vae,
                                        gaussian_decoder_from_vae)
from flashworld_jax.models.gaussian_decoder import GaussianDecoder
from flashworld_jax.models.vae import WanVAE

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "models"))
from test_gaussian_decoder import recon_decoder_state_dict  # noqa: E402
from test_vae import make_diffusers_vae, tiny_vae_config  # noqa: E402


@pytest.fixture(scope="module")
def wan_vae(tmp_path_factory):
  """(numpy state dict, config dict) of a tiny diffusers AutoencoderKLWan."""
  path = tmp_path_factory.mktemp("wan_vae")
  torch_model = make_diffusers_vae(path, seed=2)
  with open(path / "config.json") as f:
    vae_config = json.load(f)
  vae_config["latents_mean"] = list(np.linspace(-1, 1, 48))
  vae_config["latents_std"] = list(np.linspace(0.5, 2, 48))
  source = read_safetensors(str(path))
  return {k: source[k] for k in source}, vae_config, torch_model


def convert(arrays, vae_config, **kw):
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    return convert_vae(tiny_vae_config(), from_arrays(arrays, "wan_vae"), vae_config, **kw)


def test_vae_conversion_errors_name_the_problem(wan_vae):
  arrays, vae_config, _ = wan_vae
  missing = {k: v for k, v in arrays.items() if k != "encoder.conv_in.bias"}
  with pytest.raises(ConversionError, match=r"missing source tensor.*encoder\.conv_in\.bias"):
    convert(missing, vae_config)
  with pytest.raises(ConversionError, match=r"unexpected source tensor.*encoder\.extra\.weight"):
    convert({**arrays, "encoder.extra.weight": np.zeros(3, np.float32)}, vae_config)
  bad_shape = dict(arrays)
  bad_shape["quant_conv.weight"] = np.zeros((96, 95, 1, 1, 1), np.float32)
  with pytest.raises(ConversionError, match=r"shape mismatch:\n.*quant_conv/kernel"):
    convert(bad_shape, vae_config)
  with pytest.raises(ConversionError, match=r"latents_mean.*48 values"):
    convert(arrays, {**vae_config, "latents_mean": [0.0] * 16})
  with pytest.raises(ConversionError, match=r"base_dim=96 \(ours: cfg\.vae\.base_dim=16\)"):
    convert(arrays, {**vae_config, "base_dim": 96})


def test_vae_state_and_orbax_round_trip(wan_vae, tmp_path):
  arrays, vae_config, _ = wan_vae
  state = convert(arrays, vae_config, with_decoder=False)
  np.testing.assert_allclose(state["latents_std"][...], np.linspace(0.5, 2, 48), rtol=1e-6)
  np.testing.assert_array_equal(state["quant_conv"]["kernel"][...],
                                arrays["quant_conv.weight"][:, :, 0].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(  # causal 3×3×3 conv: the last temporal tap
      state["encoder"]["conv_in"]["kernel"][...],
      arrays["encoder.conv_in.weight"][:, :, 2].transpose(2, 3, 1, 0))
  checkpoint.save_components(str(tmp_path / "ckpt"), {"vae": state}, tiny_vae_config())
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    vae = WanVAE(tiny_vae_config().vae, rngs=nnx.Rngs(7), with_decoder=False)
  checkpoint.restore_component(str(tmp_path / "ckpt"), "vae", vae)
  np.testing.assert_allclose(vae.latents_mean[...], np.linspace(-1, 1, 48), rtol=1e-6)
  np.testing.assert_array_equal(vae.encoder.conv_out.bias[...], arrays["encoder.conv_out.bias"])


def test_gaussian_decoder_from_vae_keeps_new_tensors_at_init(wan_vae):
  arrays, _, _ = wan_vae
  cfg = tiny_vae_config()
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    state = gaussian_decoder_from_vae(cfg, from_arrays(arrays, "wan_vae"), seed=3)
    fresh = nnx.state(GaussianDecoder(cfg, rngs=nnx.Rngs(3)))
  np.testing.assert_array_equal(
      state["decoder"]["up_blocks"][2]["upsampler"]["conv"]["kernel"][...],
      arrays["decoder.up_blocks.2.upsampler.resample.1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(state["post_quant_conv"]["bias"][...], arrays["post_quant_conv.bias"])
  np.testing.assert_array_equal(state["extra_conv_in"]["kernel"][...], 0.0)
  np.testing.assert_array_equal(state["decoder"]["norm_out"]["scale"][...], 1.0)
  for name in ("gs_proj",):
    np.testing.assert_array_equal(state["gs_head"][name]["bias"][...],
                                  fresh["gs_head"][name]["bias"][...])
  np.testing.assert_array_equal(state["gs_head"]["lrs_mul"][...], fresh["gs_head"]["lrs_mul"][...])


def test_convert_gaussian_decoder_from_whole_checkpoint_and_errors(wan_vae):
  _, _, torch_model = wan_vae
  cfg = tiny_vae_config()
  sd = recon_decoder_state_dict(torch_model, cfg.dit.feature_dim)
  whole = {f"recon_decoder.{k}": v for k, v in sd.items()}
  whole["transformer.proj_out.bias"] = np.zeros(8, np.float32)   # the DiT's half is not ours
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    state = convert_gaussian_decoder(cfg, from_arrays(whole, "model.ckpt"))
    np.testing.assert_array_equal(state["gs_head"]["lrs_mul"][...], sd["gs_head.lrs_mul"])
    np.testing.assert_array_equal(state["extra_conv_in"]["kernel"][...],
                                  sd["extra_conv_in.weight"][:, :, 0].transpose(2, 3, 1, 0))
    without_head = {k: v for k, v in sd.items() if not k.startswith("gs_head.gs_proj")}
    with pytest.raises(ConversionError, match=r"missing source tensor.*gs_head\.gs_proj\.bias"):
      convert_gaussian_decoder(cfg, from_arrays(without_head, "recon_decoder"))
    with pytest.raises(ConversionError, match=r"unexpected.*decoder\.conv_out\.weight"):
      convert_gaussian_decoder(cfg, from_arrays(
          {**sd, "decoder.conv_out.weight": np.zeros((12, 24, 1, 3, 3), np.float32)}, "recon_decoder"))
