"""Projection, covariance and SH vs gsplat 1.5.3's torch implementation (float64), values and
gradients (rasterizer.md §2.1-2.4, §3.3)."""
import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from flashworld_jax.render import projection, sh
from raster_scenes import cameras, scene

W, H = 64, 48


def edge_scene(seed=0):
  """§7 scene plus edge cases: behind the camera, straddling the near plane, beyond the sides,
  degenerate (flat) and huge scales."""
  s = scene(400, seed, sh_degree=2)
  rng = np.random.default_rng(seed)
  s["means"][:10, 2] = rng.uniform(-2, -0.1, 10)             # behind
  s["means"][10:20, 2] = rng.uniform(0.005, 0.03, 10)        # around near = 0.01
  s["means"][20:30, 0] = rng.uniform(3, 6, 10) * s["means"][20:30, 2]   # far off-screen
  s["scales"][30:40, 2] = 1e-7                               # degenerate
  s["scales"][40:45] = 3.0                                   # huge
  return s


@pytest.mark.oracle
def test_projection_matches_gsplat_values_and_gradients():
  torch = pytest.importorskip("torch")
  pytest.importorskip("gsplat")
  from oracle import project as torch_project
  s = edge_scene()
  viewmats, Ks = cameras(3, W, H)
  rng = np.random.default_rng(1)
  weights = [rng.normal(size=shape).astype(np.float32) for shape in ((3, 400, 2), (3, 400, 3), (3, 400))]

  def ours(means, quats, scales):
    covars = projection.quat_scale_to_covar(quats, scales)
    proj = jax.vmap(lambda v, k: projection.project(
        means, covars, jnp.ones(means.shape[0]), v, k, W, H, near_plane=0.01, far_plane=1e10,
        radius_clip=0.0, eps2d=0.3))(jnp.asarray(viewmats), jnp.asarray(Ks))
    visible = jnp.all(proj.radii > 0, -1)
    loss = sum(jnp.sum(jnp.where(visible[..., None] if w.ndim == 3 else visible, x * w, 0.0))
               for x, w in zip((proj.means2d, proj.conics, proj.depths), weights))
    return loss, proj

  args = [jnp.asarray(s[k]) for k in ("means", "quats", "scales")]
  (_, proj), grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2), has_aux=True))(*args)

  t = {k: torch.tensor(s[k], dtype=torch.float64, requires_grad=True) for k in ("means", "quats", "scales")}
  radii, means2d, depths, conics = torch_project(
      t["means"], t["quats"], t["scales"], torch.tensor(viewmats, dtype=torch.float64),
      torch.tensor(Ks, dtype=torch.float64), W, H)
  visible_ref = (radii > 0).all(-1)
  visible = np.asarray(jnp.all(proj.radii > 0, -1))
  # Opacity 1 → extent sqrt(2 ln 255) = 3.329 vs the oracle's 3.33: boxes can only shrink, by ≤ 1 px.
  assert not np.any(visible & ~visible_ref.numpy())
  assert np.mean(visible == visible_ref.numpy()) > 0.98
  assert visible.sum() > 500
  r_ours, r_ref = np.asarray(proj.radii)[visible], radii.numpy()[visible]
  assert np.all((r_ref - r_ours >= 0) & (r_ref - r_ours <= 1))
  for ours_x, ref_x, name in ((proj.means2d, means2d, "means2d"), (proj.depths, depths, "depths"),
                              (proj.conics, conics, "conics")):
    ref_v = ref_x.detach().numpy()[visible]
    np.testing.assert_allclose(np.asarray(ours_x)[visible], ref_v, rtol=2e-5,
                               atol=2e-5 * np.abs(ref_v).max(), err_msg=name)
  vis_t = torch.tensor(visible)
  loss = sum(torch.where(vis_t[..., None] if w.ndim == 3 else vis_t, x * torch.tensor(w, dtype=torch.float64), 0.0).sum()
             for x, w in zip((means2d, conics, depths), weights))
  loss.backward()
  for g, name in zip(grads, ("means", "quats", "scales")):
    ref_g = t[name].grad.numpy()
    assert np.all(np.isfinite(g)), name
    err = np.linalg.norm(np.asarray(g) - ref_g) / np.linalg.norm(ref_g)
    assert err < 1e-4, (name, err)


@pytest.mark.oracle
def test_covariance_matches_gsplat():
  torch = pytest.importorskip("torch")
  gs = pytest.importorskip("gsplat.cuda._torch_impl")
  s = scene(200, 3)
  rng = np.random.default_rng(7)
  quats = (s["quats"] * rng.uniform(0.2, 5.0, (200, 1))).astype(np.float32)   # not unit length
  weights = rng.normal(size=(200, 3, 3))
  t_quats = torch.tensor(quats, dtype=torch.float64, requires_grad=True)
  t_scales = torch.tensor(s["scales"], dtype=torch.float64, requires_grad=True)
  ref, _ = gs._quat_scale_to_covar_preci(t_quats, t_scales, compute_preci=False)
  (ref * torch.tensor(weights)).sum().backward()
  ours = projection.quat_scale_to_covar(jnp.asarray(quats), jnp.asarray(s["scales"]))
  np.testing.assert_allclose(ours, ref.detach().numpy(), rtol=1e-5, atol=1e-9)
  grads = jax.grad(lambda q, sc: jnp.sum(projection.quat_scale_to_covar(q, sc) * weights),
                   argnums=(0, 1))(jnp.asarray(quats), jnp.asarray(s["scales"]))
  for ours_g, ref_g in zip(grads, (t_quats.grad.numpy(), t_scales.grad.numpy())):
    assert np.linalg.norm(np.asarray(ours_g) - ref_g) / np.linalg.norm(ref_g) < 1e-5


@pytest.mark.oracle
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_gsplat(degree):
  torch = pytest.importorskip("torch")
  gs = pytest.importorskip("gsplat.cuda._torch_impl")
  from oracle import sh_colors
  rng = np.random.default_rng(degree)
  dirs = rng.normal(size=(300, 3)).astype(np.float32)
  coeffs = (rng.normal(size=(300, 16, 3)) * 0.5).astype(np.float32)
  unit = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
  n_bases = (degree + 1) ** 2
  gs_basis = gs._eval_sh_bases_fast(n_bases, torch.tensor(unit, dtype=torch.float64))
  np.testing.assert_allclose(sh.sh_basis(degree, jnp.asarray(unit)), gs_basis, atol=2e-6)
  from oracle import sh_basis
  np.testing.assert_allclose(sh_basis(degree, torch.tensor(unit, dtype=torch.float64)), gs_basis,
                             atol=1e-15)
  weights = rng.normal(size=(300, 3)).astype(np.float32)
  value, (g_dirs, g_coeffs) = jax.value_and_grad(
      lambda d, c: jnp.sum(sh.sh_to_rgb(degree, d, c) * weights), argnums=(0, 1))(
          jnp.asarray(dirs), jnp.asarray(coeffs))
  td = torch.tensor(dirs, dtype=torch.float64, requires_grad=True)
  tc = torch.tensor(coeffs, dtype=torch.float64, requires_grad=True)
  rgb = sh_colors(degree, td, tc)
  ref_plain = torch.clamp_min(gs._spherical_harmonics(degree, td.detach(), tc.detach()) + 0.5, 0.0)
  np.testing.assert_allclose(rgb.detach().numpy(), ref_plain.numpy(), atol=1e-12)
  (rgb * torch.tensor(weights, dtype=torch.float64)).sum().backward()
  np.testing.assert_allclose(value, float((rgb.detach() * torch.tensor(weights, dtype=torch.float64)).sum()),
                             rtol=1e-5)
  np.testing.assert_allclose(g_coeffs, tc.grad.numpy(), atol=1e-5)
  ref_g_dirs = np.zeros_like(dirs) if td.grad is None else td.grad.numpy()   # degree 0: constant
  np.testing.assert_allclose(g_dirs, ref_g_dirs, atol=1e-5)


@pytest.mark.parametrize("coeff_lead", [(), (1,), (3,)])
def test_sh_coefficients_broadcast_over_cameras(coeff_lead):
  """Coefficients shared by 3 cameras (no or a size-1 camera axis) give the values and gradients of
  coefficients copied to every camera: the written-out VJP sums over the broadcast axes."""
  rng = np.random.default_rng(7)
  dirs = jnp.asarray(rng.normal(size=(3, 50, 3)), jnp.float32)
  coeffs = jnp.asarray(rng.normal(size=coeff_lead + (50, 9, 3)) * 0.5, jnp.float32)
  weights = jnp.asarray(rng.normal(size=(3, 50, 3)), jnp.float32)

  def loss(sh_fn, d, c):
    return jnp.sum(sh_fn(d, c) * weights)

  ours = jax.value_and_grad(functools.partial(loss, functools.partial(sh.sh_to_rgb, 2)),
                            argnums=(0, 1))(dirs, coeffs)
  copied = jax.value_and_grad(functools.partial(
      loss, lambda d, c: sh.sh_to_rgb(2, d, jnp.broadcast_to(c, (3, 50, 9, 3)))), argnums=(0, 1))(
          dirs, coeffs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(copied)):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_sh_rejects_too_few_coefficients():
  with pytest.raises(ValueError, match="sh_degree=2"):
    sh.sh_to_rgb(2, jnp.ones((4, 3)), jnp.ones((4, 4, 3)))


@pytest.mark.oracle
def test_antialiased_opacity_compensation_matches_gsplat():
  torch = pytest.importorskip("torch")
  gs = pytest.importorskip("gsplat.cuda._torch_impl")
  s = scene(300, 4, scale_range=(0.001, 0.05))
  viewmats, Ks = cameras(1, W, H)
  covars = projection.quat_scale_to_covar(jnp.asarray(s["quats"]), jnp.asarray(s["scales"]))
  proj = jax.jit(lambda c: projection.project(
      jnp.asarray(s["means"]), c, jnp.asarray(s["opacities"]), jnp.asarray(viewmats[0]),
      jnp.asarray(Ks[0]), W, H, near_plane=0.01, far_plane=1e10, radius_clip=0.0, eps2d=0.3,
      antialiased=True))(covars)
  t_covars, _ = gs._quat_scale_to_covar_preci(torch.tensor(s["quats"], dtype=torch.float64),
                                              torch.tensor(s["scales"], dtype=torch.float64),
                                              compute_preci=False)
  radii, _, _, _, comp = gs._fully_fused_projection(
      torch.tensor(s["means"], dtype=torch.float64), t_covars, torch.tensor(viewmats, dtype=torch.float64),
      torch.tensor(Ks, dtype=torch.float64), W, H, eps2d=0.3, calc_compensations=True)
  visible = np.asarray(jnp.all(proj.radii > 0, -1))
  assert visible.sum() > 100
  expected = (comp[0].numpy() * s["opacities"])[visible]
  np.testing.assert_allclose(np.asarray(proj.opacities)[visible], expected, rtol=1e-4, atol=1e-6)
