r"""Converts released weights into one Orbax checkpoint that every entry point loads.

  python -m flashworld_jax.convert --config=configs/flashworld.py:5b --output=checkpoints/flashworld \
      --flashworld_ckpt=FlashWorld/model.ckpt \
      --wan_vae=Wan2.2-TI2V-5B-Diffusers/vae \
      --text_encoder=Wan2.2-TI2V-5B-Diffusers/text_encoder

Sources (any subset; each fills the components named):
  --flashworld_ckpt  the released `model.ckpt` (tensor-only unpickling) or a safetensors export of it:
                     `transformer` → dit, `recon_decoder` → gaussian_decoder
  --wan_transformer  a diffusers Wan2.2 transformer (directory, index JSON or file) → dit, extended
                     with FlashWorld's zero-initialised channels when the config enables them
  --wan_vae          a diffusers AutoencoderKLWan directory (config.json + safetensors) → vae; with
                     --init_gaussian_decoder_from_vae also the gaussian_decoder (training from scratch)
  --text_encoder     a Hugging Face UMT5EncoderModel (directory, index JSON or file) → text_encoder
Every source tensor must be used or explicitly ignored, and every model parameter must be produced:
mismatches stop the conversion with the offending names and shapes.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from flashworld_jax import checkpoint, sharding
from flashworld_jax.convert import sources

_CONFIG = config_flags.DEFINE_config_file("config", "configs/flashworld.py:5b", "Model config.")
_OUTPUT = flags.DEFINE_string("output", None, "Orbax checkpoint directory to write.", required=True)
_FLASHWORLD = flags.DEFINE_string("flashworld_ckpt", None, "FlashWorld model.ckpt (or safetensors).")
_WAN_TRANSFORMER = flags.DEFINE_string("wan_transformer", None, "Diffusers Wan2.2 transformer.")
_WAN_VAE = flags.DEFINE_string("wan_vae", None, "Diffusers AutoencoderKLWan directory.")
_TEXT_ENCODER = flags.DEFINE_string("text_encoder", None, "Hugging Face UMT5 encoder.")
_INIT_DG = flags.DEFINE_bool("init_gaussian_decoder_from_vae", False,
                             "Initialise the Gaussian decoder from the VAE decoder (training).")


def _vae_config(path: str) -> dict:
  config_path = os.path.join(path if os.path.isdir(path) else os.path.dirname(path), "config.json")
  if not os.path.isfile(config_path):
    raise sources.ConversionError(
        f"--wan_vae={path}: expected the diffusers VAE config (latents_mean/std) at {config_path}")
  with open(config_path) as f:
    return json.load(f)


def convert(cfg, output: str, *, flashworld_ckpt=None, wan_transformer=None, wan_vae=None,
            text_encoder=None, init_gaussian_decoder_from_vae=False) -> dict:
  """Converts the given sources and writes them as one checkpoint; returns the component names."""
  # Imported here so that `--help` stays fast and each converter loads only when used.
  from flashworld_jax.convert import dit as dit_convert  # pylint: disable=import-outside-toplevel
  from flashworld_jax.convert import umt5 as umt5_convert  # pylint: disable=import-outside-toplevel
  from flashworld_jax.convert import vae as vae_convert  # pylint: disable=import-outside-toplevel

  if flashworld_ckpt and wan_transformer:
    raise sources.ConversionError("give either --flashworld_ckpt or --wan_transformer for the DiT")
  if init_gaussian_decoder_from_vae and (flashworld_ckpt or not wan_vae):
    raise sources.ConversionError(
        "--init_gaussian_decoder_from_vae needs --wan_vae and no --flashworld_ckpt")
  states = {}
  mesh = sharding.single_device_mesh()
  with jax.set_mesh(mesh), sharding.rules():
    if flashworld_ckpt:
      source = sources.read_any(flashworld_ckpt)
      logging.info("DiT from %s", flashworld_ckpt)
      states["dit"] = dit_convert.convert_dit(cfg.dit, source.subset("transformer"))
      logging.info("Gaussian decoder from %s", flashworld_ckpt)
      states["gaussian_decoder"] = vae_convert.convert_gaussian_decoder(
          cfg, source.subset("recon_decoder"))
    if wan_transformer:
      logging.info("DiT from %s", wan_transformer)
      states["dit"] = dit_convert.convert_dit(cfg.dit, sources.read_safetensors(wan_transformer))
    if wan_vae:
      logging.info("VAE from %s", wan_vae)
      vae_source = sources.read_safetensors(wan_vae)
      states["vae"] = vae_convert.convert_vae(cfg, vae_source, _vae_config(wan_vae))
      if init_gaussian_decoder_from_vae:
        states["gaussian_decoder"] = vae_convert.gaussian_decoder_from_vae(cfg, vae_source)
    if text_encoder:
      logging.info("Text encoder from %s", text_encoder)
      states["text_encoder"] = umt5_convert.convert_umt5(
          cfg.text, sources.read_safetensors(text_encoder))
  if not states:
    raise sources.ConversionError(
        "nothing to convert: give at least one of --flashworld_ckpt, --wan_transformer, --wan_vae, "
        "--text_encoder")
  checkpoint.save_components(output, states, cfg)
  return sorted(states)


def main(argv):
  del argv
  try:
    names = convert(_CONFIG.value, _OUTPUT.value, flashworld_ckpt=_FLASHWORLD.value,
                    wan_transformer=_WAN_TRANSFORMER.value, wan_vae=_WAN_VAE.value,
                    text_encoder=_TEXT_ENCODER.value,
                    init_gaussian_decoder_from_vae=_INIT_DG.value)
  except (sources.ConversionError, checkpoint.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote {', '.join(names)} to {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
