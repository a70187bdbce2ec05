"""WanDiT: parity with diffusers' WanTransformer3DModel (plain and FlashWorld-extended), sharding,
remat, parameter count and the input/output channel helpers."""
import copy
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.convert import dit as dit_convert
from flashworld_jax.convert import sources
from flashworld_jax.models import dit

PARITY_RTOL = 1e-5          # max |ours − torch| / max |torch|, fp32
_EXTENSIONS = ("use_raymap", "condition_latent", "feedback_feature", "feedback_latent",
               "feature_head")


def _tiny_cfg(extended: bool, scan_layers: bool = True):
  """The tiny oracle architecture of the brief: 2 heads × 24, ffn 64, text 32, freq 32, 2 layers."""
  cfg = copy.deepcopy(get_config("tiny").dit)
  cfg.freq_dim, cfg.rope_max_seq_len = 32, 64
  cfg.dtype, cfg.matmul_precision = "float32", "highest"   # full fp32 on GPUs (TF32) and TPUs too
  cfg.scan_layers = scan_layers
  for name in _EXTENSIONS:
    cfg[name] = extended
  return cfg


def _torch_wan(cfg, seed=0, **overrides):
  """A random diffusers model; every tensor is perturbed so that ones/zeros inits are exercised."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(seed)
  model = diffusers.WanTransformer3DModel(**{**dit_convert.wan_diffusers_config(cfg), **overrides})
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def _save_and_convert(torch_model, cfg, tmp_path, mesh):
  torch_model.save_pretrained(tmp_path / "transformer")
  source = sources.read_safetensors(str(tmp_path / "transformer"))
  with jax.set_mesh(mesh), sharding.rules():
    state = dit_convert.convert_dit(cfg, source)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: dit.WanDiT(cfg, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, state)


def _inputs(cfg, key, *, batch=2, views=3, height=4, width=6, text_len=7, per_token=False):
  kx, kt, kc = jax.random.split(key, 3)
  x = jax.random.normal(kx, (batch, views, height, width, dit.dit_input_channels(cfg)))
  tokens = views * (height // 2) * (width // 2)
  t_shape = (batch, tokens) if per_token else (batch,)
  t = jax.random.uniform(kt, t_shape, minval=0.0, maxval=1000.0)
  context = jax.random.normal(kc, (batch, text_len, cfg.text_dim))
  return x, t, context


def _torch_forward(torch_model, x, t, context):
  torch = pytest.importorskip("torch")
  to_torch = lambda a: torch.from_numpy(np.asarray(a))
  with torch.no_grad():
    out = torch_model(to_torch(x).permute(0, 4, 1, 2, 3), to_torch(t), to_torch(context),
                      return_dict=False)[0]
  return out.permute(0, 2, 3, 4, 1).numpy()          # back to channels-last


def _relative_error(ours, ref):
  return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


def _forward(model, x, t, context):
  return nnx.jit(lambda m, x, t, c: m(x, t, c))(model, x, t, context)


@pytest.mark.oracle
@pytest.mark.parametrize("per_token, scan_layers", [(False, True), (True, False)])
def test_plain_wan_matches_diffusers(per_token, scan_layers, tmp_path, mesh1):
  cfg = _tiny_cfg(extended=False, scan_layers=scan_layers)
  torch_model = _torch_wan(cfg)
  model = _save_and_convert(torch_model, cfg, tmp_path, mesh1)
  x, t, context = _inputs(cfg, jax.random.key(0), per_token=per_token)
  ours = _forward(model, x, t, context)
  ref = _torch_forward(torch_model, x, t, context)
  assert ours.shape == ref.shape == (2, 3, 4, 6, 48)
  assert _relative_error(ours, ref) <= PARITY_RTOL


@pytest.mark.oracle
def test_flashworld_checkpoint_matches_extended_diffusers(tmp_path, mesh1):
  """A FlashWorld-layout transformer (182 in / 80 out, every channel non-zero) loads directly."""
  cfg = _tiny_cfg(extended=True)
  torch_model = _torch_wan(cfg, seed=1)
  model = _save_and_convert(torch_model, cfg, tmp_path, mesh1)
  x, t, context = _inputs(cfg, jax.random.key(1))
  ours, ref = _forward(model, x, t, context), _torch_forward(torch_model, x, t, context)
  for ours_part, ref_part in zip(dit.split_dit_output(ours, cfg), dit.split_dit_output(ref, cfg)):
    assert _relative_error(ours_part, ref_part) <= PARITY_RTOL


@pytest.mark.oracle
def test_plain_wan_extended_on_import_matches_torch_extension(tmp_path, mesh1):
  """Plain Wan weights + the original's torch-side extension ≡ our converter's extension."""
  torch = pytest.importorskip("torch")
  cfg = _tiny_cfg(extended=True)
  plain_cfg = _tiny_cfg(extended=False)
  plain = _torch_wan(plain_cfg, seed=2)
  model = _save_and_convert(plain, cfg, tmp_path, mesh1)

  # The original's extension, in torch: zero-pad the patch-embedding input channels; view proj_out
  # as (4, 48, D) and concatenate the new (4, F, D) block (our fixed-seed draw) and zero bias.
  extended = _torch_wan(cfg, seed=3)
  weights = {k: v.clone() for k, v in plain.state_dict().items()}
  w = weights["patch_embedding.weight"]
  pad = dit.dit_input_channels(cfg) - w.shape[1]
  weights["patch_embedding.weight"] = torch.cat([w, w.new_zeros(w.shape[0], pad, *w.shape[2:])], 1)
  width, feature = w.shape[0], cfg.feature_dim
  new_rows = torch.from_numpy(dit_convert.feature_head_init(feature, width))
  weights["proj_out.weight"] = torch.cat(
      [weights["proj_out.weight"].view(4, 48, width), new_rows], 1).reshape(-1, width)
  weights["proj_out.bias"] = torch.cat(
      [weights["proj_out.bias"].view(4, 48), torch.zeros(4, feature)], 1).reshape(-1)
  extended.load_state_dict(weights, strict=True)

  x, t, context = _inputs(cfg, jax.random.key(2))
  ours, ref = _forward(model, x, t, context), _torch_forward(extended, x, t, context)
  velocity, features = dit.split_dit_output(ours, cfg)
  ref_velocity, ref_features = dit.split_dit_output(ref, cfg)
  assert _relative_error(velocity, ref_velocity) <= PARITY_RTOL
  assert _relative_error(features, ref_features) <= PARITY_RTOL
  # Zero-initialised input channels: the velocity is the plain Wan velocity on the 48 latents.
  plain_ref = _torch_forward(plain, x[..., :48], t, context)
  assert _relative_error(velocity, plain_ref) <= PARITY_RTOL


@pytest.mark.oracle
def test_param_count_5b_matches_diffusers_plus_extensions():
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  cfg = get_config("5b").dit
  with torch.device("meta"):
    wan = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48,
        out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
  wan_count = sum(p.numel() for p in wan.parameters())
  width, patch = 3072, 4
  extension = (width * patch * (1174 - 48)              # zero-padded patch-embedding inputs
               + (width + 1) * patch * (1072 - 48))      # new proj_out rows and biases
  ours = dit.param_count(cfg)
  assert ours == wan_count + extension
  assert 4.9e9 < ours < 5.1e9


def _sharding_cfg():
  cfg = _tiny_cfg(extended=True)
  cfg.num_heads, cfg.head_dim = 4, 12      # heads divide the 4-way tensor axis
  return cfg


def _output_loss_and_grads(model, x, t, context, cotangent):
  """One jitted pass: (output, Σ output·cotangent, d loss / d params)."""
  def loss(model):
    out = model(x, t, context)
    return jnp.sum(out * cotangent), out
  (loss_value, out), grads = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
  return out, loss_value, grads


def _assert_grads_close(grads, ref_grads, rtol):
  flat, ref_flat = nnx.to_flat_state(grads), nnx.to_flat_state(ref_grads)
  assert [p for p, _ in flat] == [p for p, _ in ref_flat]
  for (path, g), (_, ref) in zip(flat, ref_flat):
    g, ref = np.asarray(g[...]), np.asarray(ref[...])
    np.testing.assert_allclose(g, ref, rtol=0, atol=rtol * max(np.max(np.abs(ref)), 1e-3),
                               err_msg="/".join(map(str, path)))


def test_sharded_forward_and_backward_match_unsharded(mesh1, mesh8):
  """fsdp=2 × tensor=4: outputs and parameter gradients equal the 1-device ones to 1e-5."""
  cfg = _sharding_cfg()
  x, t, context = _inputs(cfg, jax.random.key(3))
  cotangent = jax.random.normal(jax.random.key(4), x.shape[:-1] + (dit.dit_output_channels(cfg),))
  results = []
  for mesh in (mesh1, mesh8):
    with jax.set_mesh(mesh), sharding.rules():
      model = dit.WanDiT(cfg, rngs=nnx.Rngs(0))
      results.append(_output_loss_and_grads(model, x, t, context, cotangent))
  kernel = nnx.state(model, nnx.Param)["blocks"]["attn1"]["to_q"]["kernel"]
  assert kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  (out1, loss1, grads1), (out8, loss8, grads8) = results
  assert out8.sharding.spec[0] in ("fsdp", ("data", "fsdp"))   # batch stays sharded to the output
  np.testing.assert_allclose(out8, out1, rtol=0, atol=1e-5 * np.max(np.abs(out1)))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  _assert_grads_close(grads8, grads1, 1e-5)


@pytest.mark.parametrize("policy", ["full", pytest.param("save_attention", marks=pytest.mark.slow),
                                    pytest.param("save_dots", marks=pytest.mark.slow)])
def test_remat_policy_does_not_change_outputs_or_grads(policy, mesh1):
  cfg = _tiny_cfg(extended=False)
  x, t, context = _inputs(cfg, jax.random.key(5), batch=1, views=2)
  cotangent = jax.random.normal(jax.random.key(6), x.shape)
  results = []
  for name in ("none", policy):
    cfg.remat_policy = name
    with jax.set_mesh(mesh1), sharding.rules():
      results.append(_output_loss_and_grads(dit.WanDiT(cfg, rngs=nnx.Rngs(0)), x, t, context,
                                            cotangent))
  (out, _, grads), (out_remat, _, grads_remat) = results
  np.testing.assert_allclose(out_remat, out, rtol=0, atol=1e-6 * np.max(np.abs(out)))
  _assert_grads_close(grads_remat, grads, 1e-5)


def test_bf16_forward_is_close_to_fp32(mesh1):
  cfg = _tiny_cfg(extended=True)
  x, t, context = _inputs(cfg, jax.random.key(7), batch=1)
  outs = {}
  for dtype in ("float32", "bfloat16"):
    cfg.dtype = dtype
    with jax.set_mesh(mesh1), sharding.rules():
      outs[dtype] = _forward(dit.WanDiT(cfg, rngs=nnx.Rngs(0)), x, t, context)
  assert outs["bfloat16"].dtype == jnp.float32
  assert _relative_error(outs["bfloat16"], np.asarray(outs["float32"])) < 3e-2


@pytest.mark.parametrize("name", ["default", "highest"])
def test_matmul_precision_reaches_every_matmul(name, mesh1):
  """Dense layers and both attention einsums (which take no precision argument) follow it."""
  cfg = _tiny_cfg(extended=False)
  cfg.matmul_precision = name
  x, t, context = _inputs(cfg, jax.random.key(9), batch=1, views=1)
  with jax.set_mesh(mesh1), sharding.rules():
    graphdef, state = nnx.split(dit.WanDiT(cfg, rngs=nnx.Rngs(0)))
    forward = jax.jit(lambda s, x, t, c: nnx.merge(graphdef, s)(x, t, c))
    hlo = forward.lower(state, x, t, context).as_text()
  dots = re.findall(r"stablehlo\.dot_general .*", hlo)
  highest = [d for d in dots if "precision = [HIGHEST, HIGHEST]" in d]
  # 7 outside the blocks; per (scanned) block 8 dense layers, 2 × 2 attention einsums, 2 FFN.
  assert len(dots) >= 7 + 14
  assert len(highest) == (len(dots) if name == "highest" else 0)


def test_assemble_and_split_follow_the_spec_channel_order():
  cfg = get_config("tiny").dit
  assert dit.dit_input_channels(cfg) == 48 + 6 + 48 + 32 + 48
  assert dit.dit_output_channels(cfg) == 48 + 32
  five_b = get_config("5b").dit
  assert (dit.dit_input_channels(five_b), dit.dit_output_channels(five_b)) == (1174, 1072)
  shape = (1, 2, 4, 6)
  parts = [jnp.full(shape + (c,), float(i + 1)) for i, c in enumerate((48, 6, 48, 32, 48))]
  x = dit.assemble_dit_input(*parts, cfg)
  bounds = np.cumsum([0, 48, 6, 48, 32, 48])
  for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
    assert np.all(x[..., lo:hi] == i + 1)
  # Missing condition latent and feedback mean zeros (no image, first step).
  x = dit.assemble_dit_input(parts[0], parts[1], None, None, None, cfg)
  assert x.shape[-1] == 182 and np.all(x[..., 54:] == 0)
  velocity, feature = dit.split_dit_output(jnp.zeros(shape + (80,)), cfg)
  assert velocity.shape[-1] == 48 and feature.shape[-1] == 32
  plain = _tiny_cfg(extended=False)
  assert dit.assemble_dit_input(parts[0], None, None, None, None, plain).shape[-1] == 48
  assert dit.split_dit_output(jnp.zeros(shape + (48,)), plain)[1] is None


def test_bad_inputs_raise_value_errors(mesh1):
  cfg = get_config("tiny").dit
  shape = (1, 2, 4, 6)
  noisy = jnp.zeros(shape + (48,))
  with pytest.raises(ValueError, match="raymap is required"):
    dit.assemble_dit_input(noisy, None, None, None, None, cfg)
  with pytest.raises(ValueError, match=r"feedback_feature must have shape \(1, 2, 4, 6, 32\)"):
    dit.assemble_dit_input(noisy, jnp.zeros(shape + (6,)), None, jnp.zeros(shape + (8,)), None,
                           cfg)
  with pytest.raises(ValueError, match="raymap was given but its extension is disabled"):
    dit.assemble_dit_input(noisy, jnp.zeros(shape + (6,)), None, None, None, _tiny_cfg(False))
  bad = copy.deepcopy(cfg)
  bad.remat_policy = "sometimes"
  with pytest.raises(ValueError, match="remat_policy='sometimes'"):
    dit.dims_from_config(bad)
  bad.remat_policy, bad.matmul_precision = "none", "tf32"
  with pytest.raises(ValueError, match=r"dit\.matmul_precision='tf32': expected one of"):
    dit.dims_from_config(bad)
  # Shapes only (no weights are drawn): the checks raise while the call is traced.
  x, t, context = _inputs(cfg, jax.random.key(8), batch=1)
  with pytest.raises(ValueError, match="timestep must be"):
    _abstract_call(cfg, mesh1, x, jnp.zeros((1, 5)), context)
  with pytest.raises(ValueError, match="x must be"):
    _abstract_call(cfg, mesh1, x[..., :48], t, context)
  with pytest.raises(ValueError, match="context must be"):
    _abstract_call(cfg, mesh1, x, t, context[..., :8])
  with pytest.raises(ValueError, match="rope_max_seq_len"):
    small = copy.deepcopy(cfg)
    small.rope_max_seq_len = 2
    _abstract_call(small, mesh1, x, t, context)
  out = _abstract_call(cfg, mesh1, x, t, context)
  assert out.shape == x.shape[:-1] + (dit.dit_output_channels(cfg),)


def _abstract_call(cfg, mesh, *inputs):
  """The DiT's output (shape and dtype) for inputs (arrays or ShapeDtypeStructs), traced from an
  abstract model: no weights are drawn."""
  with jax.set_mesh(mesh), sharding.rules():
    graphdef, state = nnx.split(nnx.eval_shape(lambda: dit.WanDiT(cfg, rngs=nnx.Rngs(0))))
    return jax.eval_shape(lambda s, *a: nnx.merge(graphdef, s)(*a), state, *inputs)


def test_5b_forward_shapes_for_the_released_resolution(mesh1):
  """24 views of 30×44 latents (7,920 tokens), 512 text tokens: traced abstractly, no allocation."""
  out = _abstract_call(get_config("5b").dit, mesh1,
                       jax.ShapeDtypeStruct((1, 24, 30, 44, 1174), jnp.float32),
                       jax.ShapeDtypeStruct((1,), jnp.float32),
                       jax.ShapeDtypeStruct((1, 512, 4096), jnp.bfloat16))
  assert (out.shape, out.dtype) == ((1, 24, 30, 44, 1072), jnp.float32)
