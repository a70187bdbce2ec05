"""Converts released-format sources (any subset) into one Orbax checkpoint of our components."""
from __future__ import annotations

from absl import logging
import jax

from flashworld_jax import checkpoint, sharding
from flashworld_jax.convert import sources


def _vae_config(path: str) -> dict:
  config = sources.source_config(path)
  if config is None:
    raise sources.ConversionError(
        f"--wan_vae={path}: expected the diffusers VAE config (latents_mean/std) in config.json "
        "next to the weights")
  return config


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
      states["dit"] = dit_convert.convert_dit(cfg.dit, sources.read_safetensors(wan_transformer),
                                              sources.source_config(wan_transformer))
    if wan_vae:
      logging.info("VAE from %s", wan_vae)
      vae_source = sources.read_safetensors(wan_vae)
      states["vae"] = vae_convert.convert_vae(cfg, vae_source, _vae_config(wan_vae))
      if init_gaussian_decoder_from_vae:
        states["gaussian_decoder"] = vae_convert.gaussian_decoder_from_vae(cfg, vae_source)
    if text_encoder:
      logging.info("Text encoder from %s", text_encoder)
      states["text_encoder"] = umt5_convert.convert_umt5(
          cfg.text, sources.read_safetensors(text_encoder), sources.source_config(text_encoder))
  if not states:
    raise sources.ConversionError(
        "nothing to convert: give at least one of --flashworld_ckpt, --wan_transformer, --wan_vae, "
        "--text_encoder")
  checkpoint.save_components(output, states, cfg)
  return sorted(states)
