"""DiT weight import: a FlashWorld `transformer` state dict or a plain diffusers Wan2.2 transformer.

Source names are diffusers' `WanTransformer3DModel` (spec §2.4). A plain Wan2.2 checkpoint (48 in /
48 out) is extended on the fly to the configured FlashWorld channels exactly as the original does
(spec §3): zero input channels appended to the patch embedding; proj_out viewed as (4 patch
positions, 48, D) and a (4, feature_dim, D) block drawn from N(0, 0.02²) (fixed seed) appended on the
channel axis, with zero bias.
"""
from __future__ import annotations

from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx

from flashworld_jax import sharding
from flashworld_jax.convert import mapping
from flashworld_jax.convert.mapping import Rule
from flashworld_jax.convert.sources import ConversionError, TensorSource, check_config
from flashworld_jax.models import dit as dit_model

_PATCH_POSITIONS = 4                  # (1, 2, 2) patches
FEATURE_HEAD_SEED = 0
FEATURE_HEAD_STD = 0.02

# Per-block leaves: our path under blocks/ → diffusers name under blocks.{i}.
_LINEARS = {
    "attn1/to_q": "attn1.to_q", "attn1/to_k": "attn1.to_k", "attn1/to_v": "attn1.to_v",
    "attn1/to_out": "attn1.to_out.0",
    "attn2/to_q": "attn2.to_q", "attn2/to_k": "attn2.to_k", "attn2/to_v": "attn2.to_v",
    "attn2/to_out": "attn2.to_out.0",
    "ffn/linear_1": "ffn.net.0.proj", "ffn/linear_2": "ffn.net.2",
}
_VECTORS = {
    "attn1/norm_q/scale": "attn1.norm_q.weight", "attn1/norm_k/scale": "attn1.norm_k.weight",
    "attn2/norm_q/scale": "attn2.norm_q.weight", "attn2/norm_k/scale": "attn2.norm_k.weight",
    "norm2/scale": "norm2.weight", "norm2/bias": "norm2.bias",
}
_TOP_LINEARS = {
    "condition_embedder/time_embedder/linear_1": "condition_embedder.time_embedder.linear_1",
    "condition_embedder/time_embedder/linear_2": "condition_embedder.time_embedder.linear_2",
    "condition_embedder/time_proj": "condition_embedder.time_proj",
    "condition_embedder/text_embedder/linear_1": "condition_embedder.text_embedder.linear_1",
    "condition_embedder/text_embedder/linear_2": "condition_embedder.text_embedder.linear_2",
    "proj_out": "proj_out",
}


def _patch_embedding(w):
  """Conv3d (D, C, 1, 2, 2) → dense kernel (4·C, D) over patch vectors ordered (p_h, p_w, c)."""
  w = np.asarray(w)
  if w.ndim != 5 or w.shape[2] != 1:
    raise ConversionError(f"patch_embedding.weight: expected (D, C, 1, 2, 2), got {w.shape}")
  return w[:, :, 0].transpose(2, 3, 1, 0).reshape(-1, w.shape[0])


def _table(w):  # (1, K, D) → (K, D)
  return np.asarray(w).reshape(np.shape(w)[-2:])


def dit_rules(cfg: ml_collections.ConfigDict, num_layers: int) -> list[Rule]:
  """Mapping rows: our state paths ← diffusers names; per-block rows are stacked when scanned."""
  rules = [Rule("patch_embedding/kernel", ("patch_embedding.weight",), _patch_embedding),
           Rule("patch_embedding/bias", ("patch_embedding.bias",)),
           Rule("scale_shift_table", ("scale_shift_table",), _table)]
  for ours, theirs in _TOP_LINEARS.items():
    rules += [Rule(f"{ours}/kernel", (f"{theirs}.weight",), mapping.linear),
              Rule(f"{ours}/bias", (f"{theirs}.bias",))]
  per_block = [("scale_shift_table", "scale_shift_table", _table)]
  for ours, theirs in _LINEARS.items():
    per_block += [(f"{ours}/kernel", f"{theirs}.weight", mapping.linear),
                  (f"{ours}/bias", f"{theirs}.bias", lambda x: x)]
  per_block += [(ours, theirs, lambda x: x) for ours, theirs in _VECTORS.items()]
  for ours, theirs, transform in per_block:
    if cfg.scan_layers:
      rules.append(mapping.stacked_rules(f"blocks/{ours}", "blocks.{i}." + theirs, num_layers, transform))
    else:
      rules += [Rule(f"blocks/{i}/{ours}", (f"blocks.{i}.{theirs}",), transform)
                for i in range(num_layers)]
  return rules


def wan_diffusers_config(cfg_dit: ml_collections.ConfigDict) -> dict:
  """diffusers `WanTransformer3DModel(**kwargs)` with the same architecture and channel counts."""
  return dict(
      patch_size=tuple(cfg_dit.patch_size), num_attention_heads=cfg_dit.num_heads,
      attention_head_dim=cfg_dit.head_dim, in_channels=dit_model.dit_input_channels(cfg_dit),
      out_channels=dit_model.dit_output_channels(cfg_dit), text_dim=cfg_dit.text_dim,
      freq_dim=cfg_dit.freq_dim, ffn_dim=cfg_dit.ffn_dim, num_layers=cfg_dit.num_layers,
      cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=cfg_dit.eps, image_dim=None,
      added_kv_proj_dim=None, rope_max_seq_len=cfg_dit.rope_max_seq_len)


def feature_head_init(feature_dim: int, width: int, seed: int = FEATURE_HEAD_SEED) -> np.ndarray:
  """The new proj_out rows (4, feature_dim, D) ~ N(0, 0.02²), reproducible from `seed`."""
  rng = np.random.default_rng(seed)
  return rng.normal(0.0, FEATURE_HEAD_STD, (_PATCH_POSITIONS, feature_dim, width)).astype(np.float32)


def _extend_plain_wan(source: TensorSource, in_channels: int, out_channels: int) -> TensorSource:
  """A view of a plain Wan2.2 source with FlashWorld's extended patch_embedding and proj_out."""
  width, plain_in = source.shape("patch_embedding.weight")[:2]
  plain_out = source.shape("proj_out.weight")[0] // _PATCH_POSITIONS
  new_rows = out_channels - plain_out

  def patch_weight():
    w = source["patch_embedding.weight"]
    pad = np.zeros((width, in_channels - plain_in, *w.shape[2:]), w.dtype)
    return np.concatenate([w, pad], axis=1)

  def proj_weight():
    w = source["proj_out.weight"].reshape(_PATCH_POSITIONS, plain_out, width)
    block = feature_head_init(new_rows, width).astype(w.dtype)
    return np.concatenate([w, block], axis=1).reshape(-1, width)

  def proj_bias():
    b = source["proj_out.bias"].reshape(_PATCH_POSITIONS, plain_out)
    zeros = np.zeros((_PATCH_POSITIONS, new_rows), b.dtype)
    return np.concatenate([b, zeros], axis=1).reshape(-1)

  replaced = {"patch_embedding.weight": ((width, in_channels, 1, 2, 2), patch_weight),
              "proj_out.weight": ((_PATCH_POSITIONS * out_channels, width), proj_weight),
              "proj_out.bias": ((_PATCH_POSITIONS * out_channels,), proj_bias)}
  shapes = {k: replaced[k][0] if k in replaced else source.shape(k) for k in source}

  def read(name):
    return replaced[name][1]() if name in replaced else source[name]

  return TensorSource(shapes, read, f"{source.description} (plain Wan2.2, extended to "
                      f"{in_channels} in / {out_channels} out)")


def _channels(source: TensorSource) -> tuple[int, int]:
  for key in ("patch_embedding.weight", "proj_out.weight"):
    if key not in source:
      raise ConversionError(f"{source.description}: no {key!r}; not a Wan2.2 transformer")
  rows = source.shape("proj_out.weight")[0]
  if rows % _PATCH_POSITIONS:
    raise ConversionError(f"{source.description}: proj_out.weight has {rows} rows, not a multiple "
                          f"of {_PATCH_POSITIONS} patch positions")
  return source.shape("patch_embedding.weight")[1], rows // _PATCH_POSITIONS


# diffusers fields named differently from ours, and those our architecture fixes (no cfg field).
_OUR_NAMES = {"num_attention_heads": "cfg.dit.num_heads", "attention_head_dim": "cfg.dit.head_dim",
              **{field: f"WanDiT.{field}"
                 for field in ("cross_attn_norm", "qk_norm", "image_dim", "added_kv_proj_dim")}}


def check_wan_config(cfg_dit: ml_collections.ConfigDict, wan_config: Mapping,
                     channels: tuple[int, int], what: str) -> None:
  """Refuses a diffusers transformer config.json that disagrees with `cfg_dit`, every field named.

  Shapes alone miss some of these (a head split with the same product, eps, the RoPE length).
  `channels` (in, out) is the tensors' layout: a plain Wan2.2 one (`latent_channels` both ways,
  extended on import) is held to `latent_channels`, any other to the configured FlashWorld layout.
  """
  ours = wan_diffusers_config(cfg_dit)
  names = {field: _OUR_NAMES.get(field, f"cfg.dit.{field}") for field in ours}
  if channels == (cfg_dit.latent_channels,) * 2:
    ours["in_channels"] = ours["out_channels"] = cfg_dit.latent_channels
    names["in_channels"] = names["out_channels"] = "cfg.dit.latent_channels"
  else:
    names["in_channels"] = "dit_input_channels(cfg.dit)"
    names["out_channels"] = "dit_output_channels(cfg.dit)"
  check_config(wan_config, {field: (names[field], value) for field, value in ours.items()}, what)


def convert_dit(cfg_dit: ml_collections.ConfigDict, source: TensorSource,
                source_config: Mapping | None = None) -> nnx.State:
  """Builds the DiT state from `source` under the current mesh (single device if none is set).

  Accepts the FlashWorld layout (channels as configured) or a plain Wan2.2 transformer (48 / 48),
  which is extended when the config enables the FlashWorld channels. Any other channel count, and any
  missing, unexpected or mis-shaped tensor, raises ConversionError naming keys and shapes.
  `source_config` is the diffusers config.json beside the weights, when there is one (the released
  `model.ckpt` has none): any field that disagrees with `cfg_dit` is refused.
  """
  in_channels = dit_model.dit_input_channels(cfg_dit)
  out_channels = dit_model.dit_output_channels(cfg_dit)
  src_in, src_out = _channels(source)
  if source_config is not None:
    check_wan_config(cfg_dit, source_config, (src_in, src_out),
                     f"config.json of {source.description}")
  plain = cfg_dit.latent_channels
  if (src_in, src_out) == (plain, plain) and (in_channels, out_channels) != (plain, plain):
    source = _extend_plain_wan(source, in_channels, out_channels)
  elif (src_in, src_out) != (in_channels, out_channels):
    raise ConversionError(
        f"{source.description}: patch_embedding.weight {source.shape('patch_embedding.weight')} and "
        f"proj_out.weight {source.shape('proj_out.weight')} give {src_in} in / {src_out} out "
        f"channels; the config expects {in_channels} / {out_channels} (FlashWorld layout) or "
        f"{plain} / {plain} (plain Wan2.2, extended on import)")
  mesh = jax.sharding.get_mesh()
  if mesh.empty:
    mesh = sharding.single_device_mesh()
  with sharding.rules():
    _, abstract_state = nnx.get_abstract_model(
        lambda: dit_model.WanDiT(cfg_dit, rngs=nnx.Rngs(0)), mesh)
  return mapping.build_state(abstract_state, dit_rules(cfg_dit, cfg_dit.num_layers), source,
                             what="DiT")

