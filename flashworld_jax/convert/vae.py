"""Weight import for the per-view VAE and the Gaussian decoder D_G.

Sources:
- the Wan2.2 `vae/` folder (diffusers `AutoencoderKLWan` safetensors + `config.json`): causal
  3×3×3 convs keep their last temporal tap, `time_conv` weights are unused per view (spec §4.3);
- the FlashWorld checkpoint's `recon_decoder` state dict (spec §16): causal convs already sliced to one
  tap, plus `extra_conv_in`, the new `decoder.norm_out` and `gs_head.{gs_proj, lrs_mul}`.

Rule tables are built per module type by walking the abstract model, so every row names its target
path and its PyTorch key explicitly.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import ml_collections
import numpy as np
from flax import nnx

from flashworld_jax.convert import mapping
from flashworld_jax.convert.mapping import Rule
from flashworld_jax.convert.sources import ConversionError, TensorSource, check_config
from flashworld_jax.models import vae_layers as L
from flashworld_jax.models.gaussian_decoder import GaussianDecoder
from flashworld_jax.models.vae import WanVAE, WanVAEDecoder, WanVAEEncoder

# Temporal convs of the video VAE never run on a single frame (spec §4.3).
VAE_IGNORED = (r"encoder\.down_blocks\.\d+\.downsampler\.time_conv\.(weight|bias)",
               r"decoder\.up_blocks\.\d+\.upsampler\.time_conv\.(weight|bias)")
RECON_DECODER_PREFIX = "recon_decoder"
CONFIG_PREFIX = "config"


def _abstract(create: Callable[[], nnx.Module]) -> tuple[nnx.Module, nnx.State]:
  """The abstract module (for its structure) and its state, sharded on the current mesh if any."""
  model = nnx.eval_shape(create)
  mesh = jax.sharding.get_mesh()
  if mesh.empty:
    return model, nnx.state(model)
  return model, nnx.get_abstract_model(create, mesh)[1]


def _conv(target: str, source: str, causal: bool = True) -> list[Rule]:
  transform = mapping.causal_conv_last_tap if causal else mapping.conv2d
  return [Rule(f"{target}/kernel", (f"{source}.weight",), transform),
          Rule(f"{target}/bias", (f"{source}.bias",))]


def _norm(target: str, source: str) -> list[Rule]:
  return [Rule(f"{target}/scale", (f"{source}.gamma",), mapping.flatten)]


def _resnet(block: L.ResidualBlock, target: str, source: str) -> list[Rule]:
  rules = (_norm(f"{target}/norm1", f"{source}.norm1")
           + _conv(f"{target}/conv1", f"{source}.conv1")
           + _norm(f"{target}/norm2", f"{source}.norm2")
           + _conv(f"{target}/conv2", f"{source}.conv2"))
  if block.conv_shortcut is not None:
    rules += _conv(f"{target}/conv_shortcut", f"{source}.conv_shortcut")
  return rules


def _mid_block(block: L.MidBlock, target: str, source: str) -> list[Rule]:
  rules = []
  for j, resnet in enumerate(block.resnets):
    rules += _resnet(resnet, f"{target}/resnets/{j}", f"{source}.resnets.{j}")
  attention_t, attention_s = f"{target}/attentions/0", f"{source}.attentions.0"
  return rules + (_norm(f"{attention_t}/norm", f"{attention_s}.norm")
                  + _conv(f"{attention_t}/to_qkv", f"{attention_s}.to_qkv", causal=False)
                  + _conv(f"{attention_t}/proj", f"{attention_s}.proj", causal=False))


def _resampling_blocks(blocks, name: str, resampler: str, target: str, source: str) -> list[Rule]:
  """Rules of down_blocks / up_blocks: each block's resnets, then its down/upsampler conv."""
  rules = []
  for i, block in enumerate(blocks):
    for j, resnet in enumerate(block.resnets):
      rules += _resnet(resnet, f"{target}/{name}/{i}/resnets/{j}", f"{source}.{name}.{i}.resnets.{j}")
    if getattr(block, resampler) is not None:
      rules += _conv(f"{target}/{name}/{i}/{resampler}/conv",
                     f"{source}.{name}.{i}.{resampler}.resample.1", causal=False)
  return rules


def encoder_rules(encoder: WanVAEEncoder, target: str = "encoder",
                  source: str = "encoder") -> list[Rule]:
  rules = _conv(f"{target}/conv_in", f"{source}.conv_in")
  rules += _resampling_blocks(encoder.down_blocks, "down_blocks", "downsampler", target, source)
  rules += _mid_block(encoder.mid_block, f"{target}/mid_block", f"{source}.mid_block")
  return (rules + _norm(f"{target}/norm_out", f"{source}.norm_out")
          + _conv(f"{target}/conv_out", f"{source}.conv_out"))


def decoder_rules(decoder: WanVAEDecoder, target: str = "decoder", source: str = "decoder",
                  with_norm_out: bool = True) -> list[Rule]:
  """`with_norm_out=False` leaves the output norm out (D_G's is new, not the VAE's)."""
  rules = _conv(f"{target}/conv_in", f"{source}.conv_in")
  rules += _mid_block(decoder.mid_block, f"{target}/mid_block", f"{source}.mid_block")
  rules += _resampling_blocks(decoder.up_blocks, "up_blocks", "upsampler", target, source)
  if with_norm_out:
    rules += _norm(f"{target}/norm_out", f"{source}.norm_out")
  if decoder.conv_out is not None:
    rules += _conv(f"{target}/conv_out", f"{source}.conv_out")
  return rules


def _with_arrays(source: TensorSource, arrays: Mapping[str, np.ndarray]) -> TensorSource:
  """`source` plus values from the VAE config under `config.*`, so they go through the same checks."""
  extra = {f"{CONFIG_PREFIX}.{k}": v for k, v in arrays.items()}
  shapes = {k: source.shape(k) for k in source} | {k: v.shape for k, v in extra.items()}
  return TensorSource(shapes, lambda k: extra[k] if k in extra else source[k], source.description)


def _latent_stats(vae_config: Mapping, z_dim: int) -> dict[str, np.ndarray]:
  stats = {}
  for name in ("latents_mean", "latents_std"):
    values = vae_config.get(name)
    if values is None or len(values) != z_dim:
      raise ConversionError(f"vae_config[{name!r}] must hold {z_dim} values (Wan2.2 "
                            f"vae/config.json), got {values!r:.80}")
    stats[name] = np.asarray(values, np.float32)
  if np.any(stats["latents_std"] <= 0):
    raise ConversionError(f"vae_config['latents_std'] must be positive, got {stats['latents_std']}")
  return stats


def _check_vae_config(cfg: ml_collections.ConfigDict, vae_config: Mapping, what: str) -> None:
  same = ("base_dim", "decoder_base_dim", "z_dim", "num_res_blocks", "patch_size", "dim_mult",
          "is_residual")
  fields = {name: name for name in same} | {"temperal_downsample": "temporal_downsample"}
  check_config(vae_config, {theirs: (f"cfg.vae.{ours}", cfg.vae[ours])
                            for theirs, ours in fields.items()}, what)


def convert_vae(cfg: ml_collections.ConfigDict, source: TensorSource, vae_config: Mapping,
                *, with_decoder: bool = True) -> nnx.State:
  """diffusers `AutoencoderKLWan` weights + its config dict → `WanVAE` state (sharded when called
  under a mesh). `with_decoder=False` imports only encoder, quant_conv and the latent statistics."""
  _check_vae_config(cfg, vae_config, f"config.json of {source.description}")
  model, abstract = _abstract(
      lambda: WanVAE(cfg.vae, rngs=nnx.Rngs(0), with_decoder=with_decoder))
  stats = _latent_stats(vae_config, cfg.vae.z_dim)
  rules = encoder_rules(model.encoder) + _conv("quant_conv", "quant_conv")
  ignored = list(VAE_IGNORED)
  if with_decoder:
    rules += _conv("post_quant_conv", "post_quant_conv") + decoder_rules(model.decoder)
  else:
    ignored += [r"decoder\..*", r"post_quant_conv\..*"]
  rules += [Rule(name, (f"{CONFIG_PREFIX}.{name}",)) for name in stats]
  return mapping.build_state(abstract, rules, _with_arrays(source, stats), ignored, what="VAE")


def _gaussian_decoder_trunk_rules(model: GaussianDecoder, with_norm_out: bool) -> list[Rule]:
  return (_conv("post_quant_conv", "post_quant_conv")
          + decoder_rules(model.decoder, with_norm_out=with_norm_out))


def convert_gaussian_decoder(cfg: ml_collections.ConfigDict, source: TensorSource) -> nnx.State:
  """FlashWorld `recon_decoder` state dict (or the whole `model.ckpt`) → `GaussianDecoder` state."""
  if any(k.startswith(RECON_DECODER_PREFIX + ".") for k in source):
    source = source.subset(RECON_DECODER_PREFIX)
  model, abstract = _abstract(lambda: GaussianDecoder(cfg, rngs=nnx.Rngs(0)))
  rules = (_gaussian_decoder_trunk_rules(model, with_norm_out=True)
           + _conv("extra_conv_in", "extra_conv_in")
           + _conv("gs_head/gs_proj", "gs_head.gs_proj", causal=False)
           + [Rule("gs_head/lrs_mul", ("gs_head.lrs_mul",))])
  return mapping.build_state(abstract, rules, source, what="Gaussian decoder")


def gaussian_decoder_from_vae(cfg: ml_collections.ConfigDict, source: TensorSource,
                              *, seed: int = 0) -> nnx.State:
  """D_G for training from scratch: post_quant_conv and the decoder trunk from the Wan2.2 VAE,
  everything new (extra_conv_in, norm_out, gs_head) at its initialisation."""
  model = GaussianDecoder(cfg, rngs=nnx.Rngs(seed))
  structure, abstract = _abstract(lambda: GaussianDecoder(cfg, rngs=nnx.Rngs(seed)))
  rules = _gaussian_decoder_trunk_rules(structure, with_norm_out=False)
  wanted = {r.target for r in rules}
  imported = nnx.from_flat_state([
      (path, leaf) for path, leaf in nnx.to_flat_state(abstract)
      if "/".join(str(p) for p in path) in wanted])
  ignored = VAE_IGNORED + (r"encoder\..*", r"quant_conv\..*", r"decoder\.norm_out\..*",
                           r"decoder\.conv_out\..*")
  state = mapping.build_state(imported, rules, source, ignored, what="Gaussian decoder (from VAE)")
  nnx.update(model, state)
  return nnx.state(model)
