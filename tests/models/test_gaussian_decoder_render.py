"""render_gaussians camera handling, and the tiny 3D-mode loop: F → D_G → render → VAE encode."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.models.gaussian_decoder import GaussianDecoder
from flashworld_jax.models.gaussian_render import render_gaussians
from flashworld_jax.models.vae import WanVAE
from flashworld_jax.render import estimate_capacity
from flashworld_jax.geometry.cameras import intrinsics_matrix, world_to_camera_opencv

from test_gaussian_decoder import random_cameras


def test_initial_gaussians_project_to_their_pixels(mesh1):
  """At init every Gaussian sits at depth 1 on its pixel-centre ray, so rendering at the input camera
  (at twice the head grid) must place it at that pixel's centre: rays and renderer agree."""
  cfg = get_config("tiny")
  with jax.set_mesh(mesh1), sharding.rules():
    dg = GaussianDecoder(cfg, rngs=nnx.Rngs(0))
  cams = jnp.asarray(random_cameras(np.random.default_rng(0), 2))
  feature = jnp.zeros((2, 1, 2, cfg.dit.feature_dim))
  gaussians = jax.jit(lambda f, z, c: dg(f, z, c, lambda u: u))(feature, jnp.zeros((2, 1, 2, 48)), cams)
  h2, w2 = 8, 16
  rgb, depth, alpha, meta = render_gaussians(gaussians, cams, 2 * h2, 2 * w2)
  assert rgb.shape == (2, 16, 32, 3) and depth.shape == (2, 16, 32, 1) and alpha.shape == (2, 16, 32, 1)
  means2d = np.asarray(meta["means2d"]).reshape(2, 2, 2, h2, w2, 2)  # camera, view, point, row, col
  cols, rows = np.meshgrid(np.arange(w2) + 0.5, np.arange(h2) + 0.5)
  for v in range(2):
    np.testing.assert_allclose(means2d[v, v, :, ..., 0], np.broadcast_to(2 * cols, (2, h2, w2)), atol=2e-3)
    np.testing.assert_allclose(means2d[v, v, :, ..., 1], np.broadcast_to(2 * rows, (2, h2, w2)), atol=2e-3)
  # SH are zero at init: colour 0.5 where covered, white background elsewhere; rgb = 2c − 1.
  expected = 2 * (0.5 * alpha + (1 - alpha)) - 1
  np.testing.assert_allclose(rgb, np.broadcast_to(expected, rgb.shape), atol=1e-5)


def test_render_validates_shapes():
  with pytest.raises(ValueError, match=r"gaussians must be \[N, 38\]"):
    render_gaussians(jnp.zeros((4, 14)), jnp.zeros((1, 11)), 16, 16)
  with pytest.raises(ValueError, match=r"cams must be \[V, 11\]"):
    render_gaussians(jnp.zeros((4, 38)), jnp.zeros((11,)), 16, 16)


def test_features_to_gaussians_to_render_to_latents_jit_grad(mesh1):
  cfg = get_config("tiny")
  with jax.set_mesh(mesh1), sharding.rules():
    dg = GaussianDecoder(cfg, rngs=nnx.Rngs(0))
    vae = WanVAE(cfg.vae, rngs=nnx.Rngs(1), with_decoder=False)
  rng = np.random.default_rng(1)
  # Non-zero extra_conv_in and head weights so every Gaussian parameter depends on the features.
  dg.gs_head.gs_proj.kernel[...] = jnp.asarray(0.02 * rng.normal(size=(3, 3, 8, 76)), jnp.float32)
  dg.extra_conv_in.kernel[...] = jnp.asarray(0.02 * rng.normal(size=dg.extra_conv_in.kernel.shape),
                                             jnp.float32)
  cams = jnp.asarray(random_cameras(rng, 2))
  feature = jnp.asarray(rng.normal(size=(2, 2, 2, cfg.dit.feature_dim)), jnp.float32)
  latent_mv = jnp.asarray(rng.normal(size=(2, 2, 2, 48)), jnp.float32)
  height = width = 32

  gaussians = jax.jit(lambda f: dg(f, latent_mv, cams, vae.unnormalize_latent))(feature)
  g = jax.lax.stop_gradient(gaussians)
  capacity = estimate_capacity(g[:, :3], g[:, 7:11], g[:, 4:7], g[:, 3],
                               world_to_camera_opencv(cams), intrinsics_matrix(cams, height, width),
                               width, height, near_plane=0.01, far_plane=1000.0, headroom=2.0)

  def three_d_latent(dg, feature):
    gaussians = dg(feature, latent_mv, cams, vae.unnormalize_latent)
    rgb, _, _, meta = render_gaussians(gaussians, cams, height, width, capacity=capacity)
    mean, _ = vae.encode(rgb)
    return vae.normalize_latent(mean), meta["overflow"]

  def loss(dg, feature):
    latent, overflow = three_d_latent(dg, feature)
    return jnp.mean(jnp.square(latent)), overflow

  (value, overflow), (g_model, g_feature) = nnx.jit(
      nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True))(dg, feature)
  assert not bool(overflow)
  assert np.isfinite(float(value))
  assert np.all(np.isfinite(g_feature)) and float(jnp.max(jnp.abs(g_feature))) > 0
  leaves = jax.tree.leaves(nnx.state(g_model, nnx.Param))
  assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
  assert float(jnp.max(jnp.abs(g_model.gs_head.gs_proj.kernel[...]))) > 0
