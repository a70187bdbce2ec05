"""UMT5 encoder forward: ours (jit) vs transformers (torch, 2 threads), same weights, one run.

  python -m bench.text_encoder [--layers 6 --d_model 512 --heads 8 --d_kv 64 --d_ff 1024
                                --batch 2 --length 512 --repeats 3]

Prints one JSON object: best / median seconds per forward for both, the speed-up (torch median /
ours median) and the max relative difference of the outputs.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.timing import timed
from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.convert import sources
from flashworld_jax.convert.umt5 import convert_umt5
from flashworld_jax.models.umt5 import UMT5Encoder


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  for name, default in (("layers", 6), ("d_model", 512), ("heads", 8), ("d_kv", 64), ("d_ff", 1024),
                        ("vocab", 32128), ("batch", 2), ("length", 512), ("repeats", 3)):
    parser.add_argument(f"--{name}", type=int, default=default)
  args = parser.parse_args()

  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  torch.manual_seed(0)
  hf_config = transformers.UMT5Config(
      vocab_size=args.vocab, d_model=args.d_model, d_kv=args.d_kv, d_ff=args.d_ff,
      num_layers=args.layers, num_heads=args.heads, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, dropout_rate=0.0, feed_forward_proj="gated-gelu",
      is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False)
  hf_model = transformers.UMT5EncoderModel(hf_config).eval()

  rng = np.random.default_rng(0)
  lengths = np.linspace(args.length, args.length // 2, args.batch).astype(int)
  mask = (np.arange(args.length)[None] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask > 0, rng.integers(3, args.vocab, (args.batch, args.length)), 0).astype(np.int32)

  cfg = get_config("tiny").text
  cfg.update(dict(vocab_size=args.vocab, d_model=args.d_model, num_layers=args.layers,
                  num_heads=args.heads, d_kv=args.d_kv, d_ff=args.d_ff, dtype="float32"))
  arrays = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
  arrays = {k: v for k, v in arrays.items() if k != "encoder.embed_tokens.weight"}  # tied copy
  mesh = sharding.single_device_mesh()
  with jax.set_mesh(mesh), sharding.rules():
    encoder = UMT5Encoder(cfg, nnx.Rngs(0))
    nnx.update(encoder, convert_umt5(cfg, sources.from_arrays(arrays, "torch model")))
  graphdef, state = nnx.split(encoder)

  @jax.jit
  def forward(state, ids, mask):
    return nnx.merge(graphdef, state)(ids, mask)

  ids_j, mask_j = jnp.asarray(ids), jnp.asarray(mask)
  start = time.perf_counter()
  ours_out = np.asarray(forward(state, ids_j, mask_j))
  compile_s = time.perf_counter() - start
  ours = timed(lambda: forward(state, ids_j, mask_j).block_until_ready(), args.repeats)

  ids_t, mask_t = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
  with torch.inference_mode():
    ref_out = hf_model(ids_t, mask_t).last_hidden_state.numpy()
    ref = timed(lambda: hf_model(ids_t, mask_t), args.repeats)

  print(json.dumps({
      "benchmark": "text_encoder (UMT5 encoder forward, fp32)",
      "config": {k: getattr(args, k) for k in ("layers", "d_model", "heads", "d_kv", "d_ff", "vocab",
                                                "batch", "length")},
      "prompt_lengths": lengths.tolist(),
      "device": str(jax.devices()[0]),
      "ours_jax_jit": dict(ours, first_call_incl_compile_s=compile_s),
      "transformers_torch_2_threads": ref,
      "speedup_median": ref["median_s"] / ours["median_s"],
      "speedup_best": ref["best_s"] / ours["best_s"],
      "max_rel_diff": float(np.abs(ours_out - ref_out).max() / np.abs(ref_out).max()),
  }, indent=1))


if __name__ == "__main__":
  main()
