"""The FlashWorld networks as one NNX module, built from a config and filled from a checkpoint.

Inference needs four components: the DiT, the VAE (encoder for the condition image and re-encoding),
the Gaussian decoder D_G and the UMT5 text encoder. Each is loaded from an Orbax checkpoint when it
holds that component, otherwise random-initialised (toy configs, tests) with a loud warning.
"""
from __future__ import annotations

import ml_collections
from absl import logging
import jax
from flax import nnx

from flashworld_jax import checkpoint, sharding
from flashworld_jax.models.dit import WanDiT
from flashworld_jax.models.gaussian_decoder import GaussianDecoder, init_from_vae
from flashworld_jax.models.umt5 import UMT5Encoder
from flashworld_jax.models.vae import WanVAE


class FlashWorld(nnx.Module):
  """Holds `dit`, `vae`, `gaussian_decoder` and `text_encoder` (the checkpoint component names)."""

  def __init__(self, dit: WanDiT, vae: WanVAE, gaussian_decoder: GaussianDecoder,
               text_encoder: UMT5Encoder):
    self.dit = dit
    self.vae = vae
    self.gaussian_decoder = gaussian_decoder
    self.text_encoder = text_encoder


def _constructors(cfg: ml_collections.ConfigDict, seed: int):
  # Distinct streams per component, so loading one from a checkpoint leaves the others unchanged.
  # Random init only serves toy configs and tests: the "rbg" generator compiles an order of
  # magnitude faster than threefry for the many small parameter shapes.
  rngs = lambda offset: nnx.Rngs(jax.random.key(seed + offset, impl="rbg"))
  return {
      "dit": lambda: WanDiT(cfg.dit, rngs=rngs(0)),
      "vae": lambda: WanVAE(cfg.vae, rngs=rngs(1)),
      "gaussian_decoder": lambda: GaussianDecoder(cfg, rngs=rngs(2)),
      "text_encoder": lambda: UMT5Encoder(cfg.text, rngs=rngs(3)),
  }


def build_flashworld(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                     checkpoint_dir: str | None = None, seed: int = 0,
                     for_training: bool = False) -> tuple[FlashWorld, tuple[str, ...]]:
  """Builds every component under `mesh`; returns the model and the names that are random.

  Components found in `checkpoint_dir` are restored without being initialised first. For inference
  the Gaussian head's learning-rate multipliers are folded (fp32) and random components draw a loud
  warning; a trainer keeps the multipliers (they act under Adam) and starts from random on purpose,
  a missing Gaussian decoder from the loaded VAE's decoder (the stage after VAE training).
  """
  present = checkpoint.available_components(checkpoint_dir) if checkpoint_dir else set()
  parts, random = {}, []
  with jax.set_mesh(mesh), sharding.rules():
    for name, create in _constructors(cfg, seed).items():
      if name in present:
        parts[name] = checkpoint.load_component(checkpoint_dir, name, create, mesh)
      else:
        parts[name] = create()
        random.append(name)
    if for_training and "gaussian_decoder" in random and "vae" not in random:
      init_from_vae(parts["gaussian_decoder"], parts["vae"])
      logging.info("gaussian_decoder: trunk initialised from the loaded VAE decoder")
    if not for_training:
      parts["gaussian_decoder"].fold_lr_multipliers()
  if random and for_training:
    logging.info("initialised randomly: %s", ", ".join(random))
  elif random:
    logging.warning(
        "\n%s\nRANDOM WEIGHTS for %s: %s. The generated scene is NOISE, useful only to exercise the "
        "pipeline. Convert the released weights with `python -m flashworld_jax.convert` and pass "
        "--checkpoint.\n%s", "!" * 100, ", ".join(random),
        "no --checkpoint given" if not checkpoint_dir else f"not in {checkpoint_dir}", "!" * 100)
  return FlashWorld(**parts), tuple(random)
