"""Mid-size DiT forward: ours (jit, fp32) vs diffusers WanTransformer3DModel (torch fp32, 2 threads).

  python -m bench.denoiser [--layers 6 --heads 6 --views 8 --repeats 5]

Config: 6 layers, width 768 (6 heads × 128), FFN 3584 (Wan's 14336/3072 ratio), text_dim 4096,
8 views of 16×22 latents (704 tokens), 64 text tokens, plain Wan channels (48 in / 48 out). Both sides
hold the same random weights (diffusers' init, imported with our converter). Prints one JSON object:
best / median seconds per forward, the speed-up (torch median / ours median) and the max relative
difference of the outputs.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.timing import timed_interleaved
from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.convert import dit as dit_convert
from flashworld_jax.convert import sources
from flashworld_jax.models import dit

_EXTENSIONS = ("use_raymap", "condition_latent", "feedback_feature", "feedback_latent",
               "feature_head")


def bench_config(layers: int, heads: int):
  cfg = copy.deepcopy(get_config("5b").dit)
  cfg.num_layers, cfg.num_heads, cfg.head_dim, cfg.ffn_dim = layers, heads, 128, 3584
  cfg.dtype, cfg.attention = "float32", "xla"
  for name in _EXTENSIONS:
    cfg[name] = False
  return cfg


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  for name, default in (("layers", 6), ("heads", 6), ("views", 8), ("height", 16), ("width", 22),
                        ("text_len", 64), ("repeats", 5)):
    parser.add_argument(f"--{name}", type=int, default=default)
  args = parser.parse_args()

  import torch  # pylint: disable=import-outside-toplevel
  import diffusers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  torch.manual_seed(0)
  cfg = bench_config(args.layers, args.heads)
  torch_model = diffusers.WanTransformer3DModel(**dit_convert.wan_diffusers_config(cfg)).eval()
  arrays = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    state = dit_convert.convert_dit(cfg, sources.from_arrays(arrays, "diffusers Wan transformer"))
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: dit.WanDiT(cfg, rngs=nnx.Rngs(0))))

  @jax.jit
  def forward(state, x, t, context):
    return nnx.merge(graphdef, state)(x, t, context)

  rng = np.random.default_rng(0)
  x = rng.standard_normal((1, args.views, args.height, args.width, 48), np.float32)
  t = np.array([700.0], np.float32)
  context = rng.standard_normal((1, args.text_len, cfg.text_dim), np.float32)
  x_j, t_j, context_j = jnp.asarray(x), jnp.asarray(t), jnp.asarray(context)
  start = time.perf_counter()
  ours_out = np.asarray(forward(state, x_j, t_j, context_j))  # also the warm-up of ours
  compile_s = time.perf_counter() - start

  x_t = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()
  t_t, context_t = torch.from_numpy(t), torch.from_numpy(context)

  def run_torch():
    with torch.inference_mode():
      return torch_model(x_t, t_t, context_t, return_dict=False)[0]

  ref_out = run_torch().permute(0, 2, 3, 4, 1).numpy()        # warm-up of torch
  times = timed_interleaved({
      "ours": lambda: forward(state, x_j, t_j, context_j).block_until_ready(),
      "diffusers": run_torch}, args.repeats)
  tokens = args.views * (args.height // 2) * (args.width // 2)
  print(json.dumps({
      "benchmark": "denoiser_forward",
      "config": {"layers": args.layers, "width": cfg.num_heads * cfg.head_dim, "heads": cfg.num_heads,
                 "ffn": cfg.ffn_dim, "views": args.views, "latent_hw": [args.height, args.width],
                 "tokens": tokens, "text_tokens": args.text_len, "dtype": "float32"},
      "backend": jax.default_backend(), "torch_threads": torch.get_num_threads(),
      "ours": times["ours"], "diffusers": times["diffusers"], "ours_compile_s": compile_s,
      "speedup_median": times["diffusers"]["median_s"] / times["ours"]["median_s"],
      "max_rel_diff": float(np.max(np.abs(ours_out - ref_out)) / np.max(np.abs(ref_out))),
  }))


if __name__ == "__main__":
  main()
