"""Hugging Face `UMT5EncoderModel` safetensors → `UMT5Encoder` state (one rule per target leaf)."""
from __future__ import annotations

from collections.abc import Mapping

import jax
import ml_collections
from flax import nnx

from flashworld_jax import sharding
from flashworld_jax.convert import mapping
from flashworld_jax.convert.sources import TensorSource, check_config
from flashworld_jax.models.umt5 import UMT5Encoder

# The encoder reads `encoder.embed_tokens`; `shared` is the same (tied) table in released files.
EMBEDDING_KEYS = ("encoder.embed_tokens.weight", "shared.weight")

_BLOCK = "encoder.block.{i}.layer"
_PER_LAYER = (  # (target under blocks/, source under encoder.block.{i}.layer, transform)
    ("attention_norm/scale", "0.layer_norm.weight", None),
    ("attention/q/kernel", "0.SelfAttention.q.weight", mapping.linear),
    ("attention/k/kernel", "0.SelfAttention.k.weight", mapping.linear),
    ("attention/v/kernel", "0.SelfAttention.v.weight", mapping.linear),
    ("attention/o/kernel", "0.SelfAttention.o.weight", mapping.linear),
    ("attention/relative_attention_bias", "0.SelfAttention.relative_attention_bias.weight", None),
    ("ffn_norm/scale", "1.layer_norm.weight", None),
    ("ffn/wi_0/kernel", "1.DenseReluDense.wi_0.weight", mapping.linear),
    ("ffn/wi_1/kernel", "1.DenseReluDense.wi_1.weight", mapping.linear),
    ("ffn/wo/kernel", "1.DenseReluDense.wo.weight", mapping.linear),
)


def umt5_rules(num_layers: int, embedding_key: str = EMBEDDING_KEYS[0]) -> list[mapping.Rule]:
  rules = [
      mapping.Rule("token_embedding/embedding", (embedding_key,)),
      mapping.Rule("final_norm/scale", ("encoder.final_layer_norm.weight",)),
  ]
  for target, source, transform in _PER_LAYER:
    rules.append(mapping.stacked_rules(f"blocks/{target}", f"{_BLOCK}.{source}", num_layers,
                                       transform or (lambda x: x)))
  return rules


_SAME_NAMES = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
               "relative_attention_num_buckets", "relative_attention_max_distance")


def check_umt5_config(cfg_text: ml_collections.ConfigDict, hf_config: Mapping, what: str) -> None:
  """Refuses a transformers config.json that disagrees with `cfg_text`, every field named.

  Shapes alone miss the bucket edges (max distance), eps, the activation and a head split with the
  same product.
  """
  expected = {field: (f"cfg.text.{field}", cfg_text[field]) for field in _SAME_NAMES}
  expected["layer_norm_epsilon"] = ("cfg.text.eps", cfg_text.eps)
  expected["feed_forward_proj"] = ("UMT5Encoder.feed_forward", "gated-gelu")
  check_config(hf_config, expected, what)


def convert_umt5(cfg_text: ml_collections.ConfigDict, source: TensorSource,
                 source_config: Mapping | None = None) -> nnx.State:
  """Builds the `UMT5Encoder(cfg_text)` state from `source`, sharded for the current mesh.

  Every parameter must come from the source and every source tensor must be used, except the tied
  duplicate of the token embedding; otherwise `ConversionError` names the offending keys/shapes.
  `source_config` is the transformers config.json beside the weights, when there is one: any field
  that disagrees with `cfg_text` is refused.
  """
  if source_config is not None:
    check_umt5_config(cfg_text, source_config, f"config.json of {source.description}")
  present = [k for k in EMBEDDING_KEYS if k in source]
  embedding_key = present[0] if present else EMBEDDING_KEYS[0]
  ignored = [k for k in EMBEDDING_KEYS if k != embedding_key]
  mesh = jax.sharding.get_mesh()
  if mesh.empty:
    mesh = sharding.single_device_mesh()
  with sharding.rules():
    _, abstract_state = nnx.get_abstract_model(lambda: UMT5Encoder(cfg_text, nnx.Rngs(0)), mesh)
  return mapping.build_state(abstract_state, umt5_rules(cfg_text.num_layers, embedding_key), source,
                             ignored=[k.replace(".", r"\.") for k in ignored], what="UMT5 encoder")
