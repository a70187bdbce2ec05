"""Full-size Wan2.2 VAE encoder, per-view: ours (jit, fp32) vs diffusers (torch, 2 threads), one run.

  python -m bench.vae [--batch 4 --size 256 --repeats 3]

Both sides hold the same random weights (diffusers' init, imported with our converter). Prints one
JSON object: best / median seconds per encode (4 frames as 4 one-frame views for ours, one
[B, 3, T=1, H, W] call for diffusers), the speed-up (torch median / ours median) and the max
relative difference of the posterior means.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.timing import timed_interleaved
from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.convert import sources
from flashworld_jax.convert.vae import convert_vae
from flashworld_jax.models.vae import WanVAE


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  for name, default in (("batch", 4), ("size", 256), ("repeats", 3)):
    parser.add_argument(f"--{name}", type=int, default=default)
  args = parser.parse_args()

  import torch  # pylint: disable=import-outside-toplevel
  import diffusers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  torch.manual_seed(0)
  cfg = get_config("5b")
  cfg.vae.dtype = "float32"
  vae_config = dict(base_dim=cfg.vae.base_dim, decoder_base_dim=cfg.vae.decoder_base_dim,
                    z_dim=cfg.vae.z_dim, dim_mult=list(cfg.vae.dim_mult),
                    num_res_blocks=cfg.vae.num_res_blocks, attn_scales=[],
                    temperal_downsample=list(cfg.vae.temporal_downsample), is_residual=True,
                    in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                    scale_factor_temporal=4, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
  torch_vae = diffusers.AutoencoderKLWan(**vae_config).eval()

  arrays = {k: v.detach().numpy() for k, v in torch_vae.state_dict().items()}
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    ours = WanVAE(cfg.vae, rngs=nnx.Rngs(0), with_decoder=False)
    nnx.update(ours, convert_vae(cfg, sources.from_arrays(arrays, "diffusers VAE"), vae_config,
                                 with_decoder=False))
  graphdef, state = nnx.split(ours)

  @jax.jit
  def encode(state, images):
    return nnx.merge(graphdef, state).encode(images)[0]

  images = np.random.default_rng(0).uniform(
      -1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
  images_j = jnp.asarray(images)
  start = time.perf_counter()
  ours_mean = np.asarray(encode(state, images_j))  # also the warm-up of ours
  compile_s = time.perf_counter() - start

  video = torch.from_numpy(images).permute(0, 3, 1, 2)[:, :, None].contiguous()
  with torch.inference_mode():
    ref_mean = torch_vae.encode(video).latent_dist.mean[:, :, 0].permute(0, 2, 3, 1).numpy()
    timings = timed_interleaved({"ours": lambda: encode(state, images_j).block_until_ready(),
                                  "torch": lambda: torch_vae.encode(video)}, args.repeats)
  ours_t, torch_t = timings["ours"], timings["torch"]

  err = float(np.max(np.abs(ours_mean - ref_mean)) / np.max(np.abs(ref_mean)))
  print(json.dumps({
      "benchmark": "wan2.2 VAE encoder (base_dim 160), fp32, per-view",
      "batch": args.batch, "height": args.size, "width": args.size,
      "jax_backend": jax.default_backend(), "torch_threads": torch.get_num_threads(),
      "ours_jax_jit": {**ours_t, "first_call_incl_compile_s": compile_s},
      "diffusers_torch": torch_t,
      "speedup_torch_over_ours": torch_t["median_s"] / ours_t["median_s"],
      "speedup_best": torch_t["best_s"] / ours_t["best_s"],
      "max_rel_err_mean": err,
  }))


if __name__ == "__main__":
  main()
