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
mismatches stop the conversion with the offending names and shapes. A config.json beside the
--wan_transformer, --wan_vae or --text_encoder weights must agree with --config field by field.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from flashworld_jax import checkpoint
from flashworld_jax.convert import sources
from flashworld_jax.convert.components import convert

_CONFIG = config_flags.DEFINE_config_file("config", "configs/flashworld.py:5b", "Model config.")
_OUTPUT = flags.DEFINE_string("output", None, "Orbax checkpoint directory to write.", required=True)
_FLASHWORLD = flags.DEFINE_string("flashworld_ckpt", None, "FlashWorld model.ckpt (or safetensors).")
_WAN_TRANSFORMER = flags.DEFINE_string("wan_transformer", None, "Diffusers Wan2.2 transformer.")
_WAN_VAE = flags.DEFINE_string("wan_vae", None, "Diffusers AutoencoderKLWan directory.")
_TEXT_ENCODER = flags.DEFINE_string("text_encoder", None, "Hugging Face UMT5 encoder.")
_INIT_DG = flags.DEFINE_bool("init_gaussian_decoder_from_vae", False,
                             "Initialise the Gaussian decoder from the VAE decoder (training).")


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
