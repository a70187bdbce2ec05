"""Gaussian decoder D_G: trunk vs diffusers' decoder internals, head vs a float64 numpy derivation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.convert.sources import from_arrays
from flashworld_jax.convert.vae import convert_gaussian_decoder
from flashworld_jax.models.gaussian_decoder import GaussianDecoder
from flashworld_jax.models.gaussian_head import PixelAlignedGaussianHead, trunc_exp

from test_vae import TINY_DIFFUSERS_VAE, max_rel_err, tiny_vae_config


def random_cameras(rng, v):
  q = rng.normal(size=(v, 4))
  q[:, 0] = np.abs(q[:, 0]) + 1.0
  t = rng.normal(size=(v, 3))
  intr = np.stack([rng.uniform(0.8, 1.2, v), rng.uniform(1.0, 1.5, v),
                   rng.uniform(0.4, 0.6, v), rng.uniform(0.4, 0.6, v)], axis=-1)
  return np.concatenate([q, t, intr], axis=-1).astype(np.float32)


def quat_to_rotmat64(q):
  r, i, j, k = q
  s = 2.0 / np.dot(q, q)
  return np.array([
      [1 - s * (j * j + k * k), s * (i * j - k * r), s * (i * k + j * r)],
      [s * (i * j + k * r), 1 - s * (i * i + k * k), s * (j * k - i * r)],
      [s * (i * k - j * r), s * (j * k + i * r), 1 - s * (i * i + j * j)]])


def conv3x3_64(x, kernel, bias):
  """float64 'same' 3×3 conv, x [V, h, w, C], kernel HWIO."""
  v, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((v, h, w, kernel.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      out += padded[:, dy:dy + h, dx:dx + w] @ kernel[dy, dx]
  return out + bias


def head_reference64(x, kernel, bias, multipliers, cams):
  """Spec §5.2 written out in float64; Gaussians in the original's order."""
  x, cams = x.astype(np.float64), cams.astype(np.float64)
  v, h, w, _ = x.shape
  raw = conv3x3_64(x, kernel * multipliers, bias * multipliers).reshape(v, h, w, 2, 38)
  out = np.zeros((v, 2, h, w, 38))
  for view in range(v):
    rot = quat_to_rotmat64(cams[view, :4])
    fx, fy, cx, cy = cams[view, 7:11]
    for p in range(2):
      r = raw[view, :, :, p]
      col = np.arange(w)[None, :] + 0.5 + r[..., 27] * cx * w
      row = np.arange(h)[:, None] + 0.5 + r[..., 28] * cy * h
      d_cam = np.stack([(col - cx * w) / (fx * w), -(row - cy * h) / (fy * h), -np.ones((h, w))], -1)
      d = d_cam @ rot.T
      d /= np.linalg.norm(d, axis=-1, keepdims=True)
      depth = np.exp(r[..., 29:30])
      pixel_size = math.sqrt((fx / w) ** 2 + (fy / h) ** 2) * depth
      q = r[..., 34:38] / np.linalg.norm(r[..., 34:38], axis=-1, keepdims=True)
      out[view, p] = np.concatenate([
          cams[view, 4:7] + depth * d, 1 / (1 + np.exp(-r[..., 30:31])),
          16 / (1 + np.exp(-r[..., 31:34])) * pixel_size, q, r[..., :27]], axis=-1)
  return out.reshape(-1, 38)


def make_head(rngs_seed=0, embed=8):
  g = get_config("tiny").gaussian_decoder
  return PixelAlignedGaussianHead(
      embed, gaussians_per_pixel=2, sh_degree=2, depth_bias=g.depth_bias,
      opacity_init=g.opacity_init, scale_init=g.scale_init, depth_grad_clamp=g.depth_grad_clamp,
      rngs=nnx.Rngs(rngs_seed))


def test_head_matches_float64_derivation(mesh1):
  rng = np.random.default_rng(0)
  with jax.set_mesh(mesh1), sharding.rules():
    head = make_head()
  head.gs_proj.kernel[...] = jnp.asarray(0.1 * rng.normal(size=(3, 3, 8, 76)), jnp.float32)
  head.gs_proj.bias[...] = head.gs_proj.bias[...] + jnp.asarray(0.1 * rng.normal(size=76), jnp.float32)
  x = rng.normal(size=(2, 4, 6, 8)).astype(np.float32)
  cams = random_cameras(rng, 2)
  ours = np.asarray(jax.jit(lambda x, c: head(x, c))(x, cams)).reshape(-1, 38)
  ref = head_reference64(x, np.asarray(head.gs_proj.kernel[...], np.float64),
                         np.asarray(head.gs_proj.bias[...], np.float64),
                         np.asarray(head.lrs_mul[...], np.float64), cams)
  names = {"xyz": slice(0, 3), "opacity": slice(3, 4), "scales": slice(4, 7),
           "rotation": slice(7, 11), "sh": slice(11, 38)}
  for name, s in names.items():
    np.testing.assert_allclose(ours[:, s], ref[:, s], rtol=1e-5, atol=1e-5, err_msg=name)


def test_head_initialisation_and_fold(mesh1):
  rng = np.random.default_rng(1)
  with jax.set_mesh(mesh1), sharding.rules():
    head = make_head()
  m = np.asarray(head.lrs_mul[...])
  np.testing.assert_allclose(m[:38], [1] * 3 + [0.5] * 24 + [0.01] * 2 + [1] * 9)
  np.testing.assert_array_equal(m[38:], m[:38])
  np.testing.assert_array_equal(head.gs_proj.kernel[...], 0.0)
  cams = random_cameras(rng, 1)
  x = rng.normal(size=(1, 3, 5, 8)).astype(np.float32)
  g = np.asarray(head(x, cams)).reshape(1, 2, 3, 5, 38)
  fx, fy = cams[0, 7], cams[0, 8]
  np.testing.assert_allclose(g[..., 3], 0.1, rtol=1e-6)                       # opacity
  np.testing.assert_allclose(g[..., 4:7], math.hypot(fx / 5, fy / 3), rtol=1e-5)  # 1 pixel, depth 1
  np.testing.assert_allclose(g[..., 7:11], np.broadcast_to([1, 0, 0, 0], g[..., 7:11].shape))
  np.testing.assert_array_equal(g[..., 11:], 0.0)
  np.testing.assert_allclose(np.linalg.norm(g[..., :3] - cams[0, 4:7], axis=-1), 1.0, rtol=1e-5)
  head.gs_proj.kernel[...] = jnp.asarray(0.1 * rng.normal(size=(3, 3, 8, 76)), jnp.float32)
  before = head(x, cams)
  head.fold_lr_multipliers()
  np.testing.assert_array_equal(head.lrs_mul[...], 1.0)
  np.testing.assert_allclose(head(x, cams), before, rtol=1e-5, atol=1e-6)


def test_trunc_exp_gradient_clamped():
  xs = jnp.asarray([-12.0, -10.0, 0.5, 10.0, 12.0])
  np.testing.assert_allclose(trunc_exp(xs), np.exp(np.asarray(xs, np.float64)), rtol=1e-6)
  grads = jax.vmap(jax.grad(trunc_exp))(xs)
  np.testing.assert_allclose(grads, np.exp([-10.0, -10.0, 0.5, 10.0, 10.0]), rtol=1e-6)
  grads5 = jax.vmap(jax.grad(lambda x: trunc_exp(x, 5.0)))(xs)
  np.testing.assert_allclose(grads5, np.exp([-5.0, -5.0, 0.5, 5.0, 5.0]), rtol=1e-6)


def test_decoder_validates_inputs_and_blocks_latent_gradient(mesh1):
  cfg = get_config("tiny")
  with jax.set_mesh(mesh1), sharding.rules():
    dg = GaussianDecoder(cfg, rngs=nnx.Rngs(0))
  feature = jnp.ones((2, 2, 3, cfg.dit.feature_dim))
  latent = jnp.ones((2, 2, 3, 48))
  cams = jnp.asarray(random_cameras(np.random.default_rng(2), 2))
  with pytest.raises(ValueError, match="latent_mv"):
    dg(feature, latent[:, :, :2], cams, lambda z: z)
  with pytest.raises(ValueError, match="feature"):
    dg(feature[..., :4], latent, cams, lambda z: z)
  with pytest.raises(ValueError, match="cams"):
    dg(feature, latent, cams[:1], lambda z: z)

  def loss(feature, latent):
    out = dg(feature, latent, cams, lambda z: 2.0 * z + 1.0)
    return jnp.sum(out[:, :3] ** 2), out

  (_, out), (g_feature, g_latent) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
      feature, latent)
  assert out.shape == (2 * 2 * 16 * 24, 38) and out.dtype == jnp.float32
  np.testing.assert_array_equal(g_latent, 0.0)
  assert np.all(np.isfinite(g_feature))


def recon_decoder_state_dict(torch_model, feature_dim, seed=0):
  """A FlashWorld-style `recon_decoder` state dict built from a diffusers VAE (spec §16 layout)."""
  rng = np.random.default_rng(seed)
  sd = {}
  for name, p in torch_model.state_dict().items():
    if not (name.startswith("decoder.") or name.startswith("post_quant_conv.")):
      continue
    if "time_conv" in name or name.startswith(("decoder.conv_out.", "decoder.norm_out.")):
      continue
    a = p.numpy()
    if a.ndim == 5:
      a = a[:, :, -1:]   # the reference slices causal convs to their last tap
    sd[name] = a
  top, bottom = 4 * TINY_DIFFUSERS_VAE["decoder_base_dim"], TINY_DIFFUSERS_VAE["decoder_base_dim"]
  sd["extra_conv_in.weight"] = (0.05 * rng.normal(size=(top, feature_dim, 1, 3, 3))).astype(np.float32)
  sd["extra_conv_in.bias"] = (0.05 * rng.normal(size=top)).astype(np.float32)
  sd["decoder.norm_out.gamma"] = (1 + 0.2 * rng.normal(size=(bottom, 1, 1, 1))).astype(np.float32)
  sd["gs_head.gs_proj.weight"] = (0.05 * rng.normal(size=(76, bottom, 3, 3))).astype(np.float32)
  sd["gs_head.gs_proj.bias"] = (0.1 * rng.normal(size=76)).astype(np.float32)
  sd["gs_head.lrs_mul"] = np.tile([1] * 3 + [0.5] * 24 + [0.01] * 2 + [1] * 9, 2).astype(np.float32)
  return sd


@pytest.mark.oracle
def test_trunk_matches_diffusers_decoder_internals(tmp_path):
  torch = pytest.importorskip("torch")
  from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm
  from test_vae import make_diffusers_vae
  torch_model = make_diffusers_vae(tmp_path, seed=1)
  cfg = tiny_vae_config()
  sd = recon_decoder_state_dict(torch_model, cfg.dit.feature_dim)
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    state = convert_gaussian_decoder(cfg, from_arrays({f"recon_decoder.{k}": v for k, v in sd.items()}))
    dg = GaussianDecoder(cfg, rngs=nnx.Rngs(3))
  nnx.update(dg, state)

  rng = np.random.default_rng(5)
  z = rng.normal(size=(2, 2, 3, 48)).astype(np.float32)
  feature = rng.normal(size=(2, 2, 3, cfg.dit.feature_dim)).astype(np.float32)

  def to_torch(a):
    return torch.from_numpy(a).permute(0, 3, 1, 2)[:, :, None]

  def to_numpy(t):
    return t[:, :, 0].permute(0, 2, 3, 1).numpy()

  # The reference's decode: diffusers modules, no feature cache, first_chunk=True (time_conv unused).
  refs = []
  with torch.no_grad():
    extra = torch.nn.functional.conv2d(to_torch(feature)[:, :, 0],
                                       torch.from_numpy(sd["extra_conv_in.weight"][:, :, 0]),
                                       torch.from_numpy(sd["extra_conv_in.bias"]), padding=1)
    x = torch_model.decoder.conv_in(torch_model.post_quant_conv(to_torch(z))) + extra[:, :, None]
    x = torch_model.decoder.mid_block(x, None, [0])
    refs.append(to_numpy(x))
    for block in torch_model.decoder.up_blocks:
      x = block(x, None, [0], first_chunk=True)
      refs.append(to_numpy(x))
    norm_out = WanRMS_norm(24, images=False)
    norm_out.gamma.copy_(torch.from_numpy(sd["decoder.norm_out.gamma"]))
    refs.append(to_numpy(torch.nn.functional.silu(norm_out(x))))

  @jax.jit
  def ours(z, feature):
    outs = []
    x = dg.decoder.conv_in(dg.post_quant_conv(z)) + dg.extra_conv_in(feature)
    x = dg.decoder.mid_block(x)
    outs.append(x)
    for block in dg.decoder.up_blocks:
      x = block(x)
      outs.append(x)
    return outs + [dg.trunk(feature, z)]

  for i, (a, b) in enumerate(zip(ours(z, feature), refs)):
    assert a.shape == b.shape, (i, a.shape, b.shape)
    assert max_rel_err(a, b) <= 1e-4, f"stage {i}: {max_rel_err(a, b)}"

  # Head on top of the trunk, with the stored multipliers.
  cams = random_cameras(rng, 2)
  head_in = refs[-1]
  expected = head_reference64(head_in, sd["gs_head.gs_proj.weight"].transpose(2, 3, 1, 0).astype(np.float64),
                              sd["gs_head.gs_proj.bias"].astype(np.float64),
                              sd["gs_head.lrs_mul"].astype(np.float64), cams)
  got = jax.jit(lambda f, z, c: dg(f, z, c, lambda u: u))(feature, z, cams)
  assert max_rel_err(got, expected) <= 1e-4


def test_5b_shapes_match_the_checkpoint_layout(mesh1):
  """Abstract 5B D_G and VAE (no memory): widths and head shapes of spec §4.1, §5.1 and §16."""
  cfg = get_config("5b")
  with jax.set_mesh(mesh1), sharding.rules():
    dg = nnx.eval_shape(lambda: GaussianDecoder(cfg, rngs=nnx.Rngs(0)))
  assert dg.extra_conv_in.kernel.shape == (3, 3, 1024, 1024)
  assert dg.decoder.conv_in.kernel.shape == (3, 3, 48, 1024)
  assert dg.decoder.norm_out.scale.shape == (256,)
  assert dg.gs_head.gs_proj.kernel.shape == (3, 3, 256, 76)
  assert dg.decoder.conv_out is None
  assert [len(b.resnets) for b in dg.decoder.up_blocks] == [3, 3, 3, 3]
  assert [b.upsampler is not None for b in dg.decoder.up_blocks] == [True, True, True, False]
  assert dg.decoder.up_blocks[2].resnets[0].conv_shortcut.kernel.shape == (1, 1, 1024, 512)
  feature = jax.ShapeDtypeStruct((1, 30, 44, 1024), jnp.float32)
  latent = jax.ShapeDtypeStruct((1, 30, 44, 48), jnp.float32)
  cams = jax.ShapeDtypeStruct((1, 11), jnp.float32)
  with jax.set_mesh(mesh1), sharding.rules():
    out = jax.eval_shape(lambda f, z, c: GaussianDecoder(cfg, rngs=nnx.Rngs(0))(f, z, c, lambda u: u),
                         feature, latent, cams)
  assert out.shape == (2 * 240 * 352, 38)


def test_sharded_decoder_matches_single_device(mesh8):
  cfg = get_config("tiny")
  rng = np.random.default_rng(6)
  feature = jnp.asarray(rng.normal(size=(2, 2, 2, cfg.dit.feature_dim)), jnp.float32)
  latent = jnp.asarray(rng.normal(size=(2, 2, 2, 48)), jnp.float32)
  cams = jnp.asarray(random_cameras(rng, 2))

  def run(mesh):
    with jax.set_mesh(mesh), sharding.rules():
      dg = GaussianDecoder(cfg, rngs=nnx.Rngs(0))
      dg.extra_conv_in.kernel[...] = 0.05 * jnp.ones_like(dg.extra_conv_in.kernel[...])
      return np.asarray(nnx.jit(lambda m, f, z: m(f, z, cams, lambda u: u))(dg, feature, latent))

  np.testing.assert_allclose(run(mesh8), run(sharding.single_device_mesh()), rtol=1e-4, atol=1e-5)


def test_one_view_at_a_time_equals_all_views_in_outputs_and_gradients(mesh1, mesh8):
  """On the 8-device mesh each device scans its own views (`sharding.map_local_batch`)."""
  rng = np.random.default_rng(8)
  feature = jnp.asarray(rng.normal(size=(4, 2, 3, get_config("tiny").dit.feature_dim)), jnp.float32)
  latent = jnp.asarray(rng.normal(size=(4, 2, 3, 48)), jnp.float32)
  cams = jnp.asarray(random_cameras(rng, 4))

  def run(one_at_a_time, mesh):
    cfg = get_config("tiny")
    cfg.gaussian_decoder.views_one_at_a_time = one_at_a_time
    with jax.set_mesh(mesh), sharding.rules():
      dg = GaussianDecoder(cfg, rngs=nnx.Rngs(0))
      dg.extra_conv_in.kernel[...] = 0.05 * jnp.ones_like(dg.extra_conv_in.kernel[...])
      graphdef, params, rest = nnx.split(dg, nnx.Param, ...)

      def loss(params, feature):
        out = nnx.merge(graphdef, params, rest)(feature, latent, cams, lambda u: 2.0 * u)
        return jnp.sum(jnp.sin(out)), out

      grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
      (_, out), grads = grad(params, feature)
    return out, grads

  out_one, grads_one = run(True, mesh8)
  out_all, grads_all = run(False, mesh1)
  np.testing.assert_allclose(out_one, out_all, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(grads_one), jax.tree.leaves(grads_all)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
