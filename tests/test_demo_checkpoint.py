"""The shipped demo model (`checkpoints/demo`) and its held-out request: present, complete, within
the 25 MB budget, trained (not random), and the request's ground truth matches its image."""
import os

import jax
import numpy as np
from flax import nnx

from configs import flashworld
from flashworld_jax import checkpoint, sharding
from flashworld_jax.models.vae import WanVAE
from flashworld_jax.io import ground_truth
from flashworld_jax.io.request import load_request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "checkpoints", "demo")
SCENE = os.path.join(REPO, "examples", "held-out-scene")
BUDGET_BYTES = 25 * 1024 * 1024


def test_the_demo_checkpoint_is_complete_and_small():
  assert checkpoint.available_components(DEMO) == {"dit", "vae", "gaussian_decoder", "text_encoder"}
  size = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(DEMO)
             for f in files)
  assert size <= BUDGET_BYTES, size


def test_the_demo_checkpoint_holds_the_demo_config_and_trained_latent_statistics():
  cfg = checkpoint.restore_config(DEMO)
  demo = flashworld.get_config("demo")
  for section in ("dit", "vae", "gaussian_decoder"):
    for key in ("num_layers", "num_heads", "head_dim", "base_dim", "z_dim", "gaussians_per_pixel"):
      if key in demo[section]:
        assert cfg[section][key] == demo[section][key], (section, key)
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    vae = checkpoint.load_component(DEMO, "vae", lambda: WanVAE(demo.vae, rngs=nnx.Rngs(0)),
                                    sharding.single_device_mesh())
  # The VAE stage's moving moments, not a random model's placeholders (mean 0, std 1).
  std = np.asarray(vae.latents_std[...])
  assert np.all(std > 0) and not np.allclose(std, 1.0)


def test_the_held_out_request_and_its_ground_truth_agree():
  request = load_request(os.path.join(SCENE, "held-out-scene.json"))
  truth = ground_truth.load_views(os.path.join(SCENE, "ground_truth"), request.num_views,
                                  request.height, request.width)
  np.testing.assert_array_equal(truth[request.image_index], request.image)
  assert request.text_prompt
