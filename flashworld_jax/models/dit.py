"""The multi-view denoiser: Wan2.2-TI2V-5B's DiT with FlashWorld's channel extensions (spec §2, §3).

Channels-last throughout: `WanDiT(x [B, V, h, w, C_in], timestep, context) → [B, V, h, w, C_out]`.
All views' tokens form one sequence (order view, row, column) for a single full self-attention.
With every extension off (`use_raymap`, `condition_latent`, `feedback_feature`, `feedback_latent`,
`feature_head` False) this is exactly diffusers' `WanTransformer3DModel` (48 in / 48 out).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from flashworld_jax import sharding
from flashworld_jax.models import dit_layers as layers
from flashworld_jax.models import precision, stacked
from kernels.attention import IMPLEMENTATIONS
from kernels.attention import sequence_parallel

_F32 = jnp.float32
_PATCH = (1, 2, 2)
_REMAT_POLICIES = ("none", "full", "save_attention", "save_dots")
_TOKENS = ("act_batch", "act_length", "act_embed")


# ----------------------------------------------------------------------------- channel layout


def dit_input_channels(cfg: ml_collections.ConfigDict) -> int:
  """48 (+6 raymap) (+48 condition latent) (+feature_dim feedback) (+48 feedback latent)."""
  return sum(n for _, n in _input_parts(cfg))


def dit_output_channels(cfg: ml_collections.ConfigDict) -> int:
  """48 velocity channels (+feature_dim feature-head channels)."""
  return cfg.latent_channels + (cfg.feature_dim if cfg.feature_head else 0)


def _input_parts(cfg) -> list[tuple[str, int]]:
  """(name, channels) of the DiT input in the order of spec §3.1, enabled parts only."""
  parts = [("noisy", cfg.latent_channels)]
  if cfg.use_raymap:
    parts.append(("raymap", cfg.raymap_channels))
  if cfg.condition_latent:
    parts.append(("cond_latent", cfg.latent_channels))
  if cfg.feedback_feature:
    parts.append(("feedback_feature", cfg.feature_dim))
  if cfg.feedback_latent:
    parts.append(("feedback_latent", cfg.latent_channels))
  return parts


def assemble_dit_input(noisy: jax.Array, raymap: jax.Array | None, cond_latent: jax.Array | None,
                       feedback_feature: jax.Array | None, feedback_latent: jax.Array | None,
                       cfg: ml_collections.ConfigDict) -> jax.Array:
  """Concatenates the DiT input channels-last [B, V, h, w, C_in] in the order of spec §3.1.

  Only enabled extensions are used. `raymap` ([B, V, h, w, 6]) is required when `use_raymap`;
  the condition latent and the feedback inputs may be None, meaning zeros (no conditioning image,
  first sampling step). Passing a tensor for a disabled extension is an error.
  """
  given = {"noisy": noisy, "raymap": raymap, "cond_latent": cond_latent,
           "feedback_feature": feedback_feature, "feedback_latent": feedback_latent}
  parts = dict(_input_parts(cfg))
  for name, value in given.items():
    if name not in parts and value is not None:
      raise ValueError(f"assemble_dit_input: {name} was given but its extension is disabled in "
                       "the DiT config")
  if noisy.ndim != 5 or noisy.shape[-1] != cfg.latent_channels:
    raise ValueError(f"assemble_dit_input: noisy must be [B, V, h, w, {cfg.latent_channels}], got "
                     f"{noisy.shape}")
  if "raymap" in parts and raymap is None:
    raise ValueError("assemble_dit_input: raymap is required when cfg.use_raymap is on")
  pieces = []
  for name, channels in parts.items():
    value = given[name]
    expected = (*noisy.shape[:-1], channels)
    if value is None:
      value = jnp.zeros(expected, noisy.dtype)
    if tuple(value.shape) != expected:
      raise ValueError(f"assemble_dit_input: {name} must have shape {expected}, got {value.shape}")
    pieces.append(value.astype(noisy.dtype))
  return jnp.concatenate(pieces, axis=-1)


def split_dit_output(out: jax.Array, cfg: ml_collections.ConfigDict
                     ) -> tuple[jax.Array, jax.Array | None]:
  """[..., C_out] → (velocity [..., 48], feature [..., feature_dim] or None)."""
  if out.shape[-1] != dit_output_channels(cfg):
    raise ValueError(f"split_dit_output: expected {dit_output_channels(cfg)} channels, got "
                     f"{out.shape}")
  velocity = out[..., :cfg.latent_channels]
  return velocity, (out[..., cfg.latent_channels:] if cfg.feature_head else None)


# ----------------------------------------------------------------------------- model


def dims_from_config(cfg: ml_collections.ConfigDict) -> layers.DiTDims:
  """Validates the DiT config and extracts the hashable dimensions the layers need."""
  if tuple(cfg.patch_size) != _PATCH:
    raise ValueError(f"dit.patch_size={tuple(cfg.patch_size)}: only {_PATCH} is supported")
  if cfg.attention not in IMPLEMENTATIONS:
    raise ValueError(f"dit.attention={cfg.attention!r}: expected one of {IMPLEMENTATIONS}")
  # .get: model configs saved with older checkpoints have no sequence_parallel field.
  if cfg.get("sequence_parallel", "none") not in sequence_parallel.MODES:
    raise ValueError(f"dit.sequence_parallel={cfg.sequence_parallel!r}: expected one of "
                     f"{sequence_parallel.MODES}")
  if cfg.remat_policy not in _REMAT_POLICIES:
    raise ValueError(f"dit.remat_policy={cfg.remat_policy!r}: expected one of {_REMAT_POLICIES}")
  if cfg.head_dim % 2 or cfg.freq_dim % 2:
    raise ValueError(f"dit.head_dim={cfg.head_dim} and dit.freq_dim={cfg.freq_dim} must be even")
  return layers.DiTDims(
      width=cfg.num_heads * cfg.head_dim, num_heads=cfg.num_heads, head_dim=cfg.head_dim,
      ffn_dim=cfg.ffn_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, eps=cfg.eps,
      rope_theta=cfg.rope_theta, rope_max_seq_len=cfg.rope_max_seq_len,
      dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype), attention=cfg.attention,
      matmul_precision=precision.check(cfg.matmul_precision, "dit.matmul_precision"),
      sequence_parallel=cfg.get("sequence_parallel", "none"))


class ConditionEmbedder(nnx.Module):
  """Timestep → (temb, six-way modulation) in fp32; text → context in the matmul dtype."""

  def __init__(self, dims: layers.DiTDims, *, rngs: nnx.Rngs):
    self.freq_dim = dims.freq_dim
    self.time_embedder = layers.MLP(dims.freq_dim, dims.width, dims.width, "silu", dims,
                                    in_name="freq", dtype=_F32, rngs=rngs)
    self.time_proj = layers.dense(dims.width, 6 * dims.width, ("embed", "mlp"), dims, dtype=_F32,
                                  rngs=rngs)
    self.text_embedder = layers.MLP(dims.text_dim, dims.width, dims.width, "gelu_tanh", dims,
                                    in_name="text_embed", rngs=rngs)

  def __call__(self, timestep: jax.Array, context: jax.Array, dtype
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """timestep [B, T] (T = 1 or L) → temb [B, T, D], mod [B, T, 6, D]; context → [B, S, D]."""
    temb = self.time_embedder(layers.timestep_sinusoid(timestep, self.freq_dim))
    mod = self.time_proj(jax.nn.silu(temb))
    mod = mod.reshape(*mod.shape[:-1], 6, -1)
    return temb, mod, self.text_embedder(context.astype(dtype))


def _remat_policy(name: str):
  return {"full": None,
          "save_attention": jax.checkpoint_policies.save_only_these_names("attention"),
          "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


class WanDiT(nnx.Module):
  """Wan2.2 DiT with the FlashWorld extensions; `cfg` is `get_config(...).dit`."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dims = dims_from_config(cfg)
    self.dims = dims
    self.in_channels = dit_input_channels(cfg)
    self.out_channels = dit_output_channels(cfg)
    self.num_layers = cfg.num_layers
    self.scan_layers = bool(cfg.scan_layers)
    self.remat_policy = cfg.remat_policy
    patch = math.prod(_PATCH)
    self.patch_embedding = layers.dense(patch * self.in_channels, dims.width, ("patch_in", "embed"),
                                        dims, rngs=rngs)
    self.condition_embedder = ConditionEmbedder(dims, rngs=rngs)
    if self.scan_layers:
      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def stacked_blocks(rngs):
        return layers.Block(dims, rngs=rngs)
      self.blocks = stacked_blocks(rngs)
    else:
      self.blocks = nnx.List([layers.Block(dims, rngs=rngs) for _ in range(cfg.num_layers)])
    init = jax.random.normal(rngs.params(), (2, dims.width), _F32) / math.sqrt(dims.width)
    self.scale_shift_table = nnx.Param(init.astype(dims.param_dtype),
                                       out_sharding=("modulation", "embed"))
    # Rows = (p_h·2 + p_w)·C_out + c: the original's layout, kept so weights load unchanged.
    self.proj_out = layers.dense(dims.width, patch * self.out_channels, ("embed", "patch_out"), dims,
                                 preferred_element_type=_F32, rngs=rngs)

  def _check_inputs(self, x, timestep, context) -> tuple[int, int, int]:
    if x.ndim != 5 or x.shape[-1] != self.in_channels or x.shape[2] % 2 or x.shape[3] % 2:
      raise ValueError(f"WanDiT: x must be [B, V, h, w, {self.in_channels}] with even h and w, "
                       f"got {x.shape}")
    batch, views, height, width, _ = x.shape
    tokens = views * (height // 2) * (width // 2)
    if timestep.shape not in ((batch,), (batch, tokens)):
      raise ValueError(f"WanDiT: timestep must be [B] = ({batch},) or per token [B, V·h/2·w/2] = "
                       f"({batch}, {tokens}), got {timestep.shape}")
    if context.ndim != 3 or context.shape[0] != batch or context.shape[-1] != self.dims.text_dim:
      raise ValueError(f"WanDiT: context must be [{batch}, L_txt, {self.dims.text_dim}], got "
                       f"{context.shape}")
    return views, height // 2, width // 2

  def _run_blocks(self, x, context, mod, rope, keep_outputs: bool):
    def body(block, x):
      return block(x, context, mod, rope)

    remat = self.remat_policy != "none"
    policy = _remat_policy(self.remat_policy) if remat else None
    if self.scan_layers:
      return stacked.scan_blocks(self.blocks, x, body, remat_policy=policy, remat=remat,
                                 keep_outputs=keep_outputs)
    if remat:
      body = nnx.remat(body, policy=policy)
    outputs = []
    for block in self.blocks:
      x = body(block, x)
      outputs.append(x)
    return (x, jnp.stack(outputs)) if keep_outputs else x

  def __call__(self, x: jax.Array, timestep: jax.Array, context: jax.Array,
               hidden_layers: tuple[int, ...] = ()):
    """x [B, V, h, w, C_in]; timestep [B] or [B, V·h/2·w/2] (raw, in [0, 1000]); context
    [B, L_txt, text_dim] → [B, V, h, w, C_out] in fp32.

    With `hidden_layers` (block indices) also returns those blocks' output tokens
    [len(hidden_layers), B, V·h/2·w/2, width] (the distillation discriminator's features)."""
    grid = self._check_inputs(x, timestep, context)
    batch, dtype = x.shape[0], self.dims.dtype
    tokens = _patchify(x.astype(dtype))
    tokens = sharding.constrain(self.patch_embedding(tokens), _TOKENS)
    per_token_t = timestep.reshape(batch, -1)                              # [B, 1] or [B, L]
    temb, mod, context = self.condition_embedder(per_token_t, context, dtype)
    context = sharding.constrain(context, ("act_batch", "act_kv_length", "act_embed"))
    rope = layers.rope_tables(grid, self.dims)
    tokens = self._run_blocks(tokens, context, mod, rope, keep_outputs=bool(hidden_layers))
    if hidden_layers:
      tokens, every_block = tokens
      hidden = every_block[jnp.asarray(hidden_layers)]
    shift, scale = layers.modulation_rows(self.scale_shift_table[...], temb[:, :, None])
    tokens = (layers.layer_norm(tokens, self.dims.eps) * (1 + scale) + shift).astype(dtype)
    out = _unpatchify(self.proj_out(tokens), grid, self.out_channels)
    return (out, hidden) if hidden_layers else out


def param_count(cfg: ml_collections.ConfigDict) -> int:
  """Number of DiT parameters for a config, from abstract shapes (nothing is allocated)."""
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    model = nnx.eval_shape(lambda: WanDiT(cfg, rngs=nnx.Rngs(0)))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _patchify(x: jax.Array) -> jax.Array:
  """[B, V, h, w, C] → [B, V·h/2·w/2, 4·C], patch vector ordered (p_h, p_w, c)."""
  b, v, h, w, c = x.shape
  x = x.reshape(b, v, h // 2, 2, w // 2, 2, c).transpose(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(b, v * (h // 2) * (w // 2), 4 * c)


def _unpatchify(y: jax.Array, grid: tuple[int, int, int], channels: int) -> jax.Array:
  """[B, L, 4·C] with columns (p_h·2 + p_w)·C + c → [B, V, h, w, C]."""
  v, h2, w2 = grid
  y = y.reshape(y.shape[0], v, h2, w2, 2, 2, channels).transpose(0, 1, 2, 4, 3, 5, 6)
  return y.reshape(y.shape[0], v, 2 * h2, 2 * w2, channels)
