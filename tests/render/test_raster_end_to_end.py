"""`rasterization` end to end vs the torch oracle (gsplat projection/SH + §5.3 compositor, float64):
images, alphas and gradients for every input; modes, backgrounds, SH degrees, cameras, edge cases,
capacities under jit/vmap, overflow and input validation (rasterizer.md §6)."""
import importlib

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.test_util import check_grads

from flashworld_jax.render import RasterCapacity, estimate_capacity, rasterization

# The package re-exports the function `rasterization`, which shadows the submodule attribute.
raster_module = importlib.import_module("flashworld_jax.render.rasterization")
from raster_scenes import cameras, scene

ARG_NAMES = ("means", "quats", "scales", "opacities", "colors")


def edge_case_scene(n, seed, sh_degree, n_colors=3, per_camera_colors=0):
  """§7 scene plus: behind the camera, straddling the near plane, off-screen, degenerate and huge
  scales, zero and below-threshold opacity, and an opaque patch that saturates pixels."""
  s = scene(n, seed, sh_degree=sh_degree, n_colors=n_colors, scale_range=(0.01, 0.1))
  rng = np.random.default_rng(seed)
  s["means"][:8, 2] = -rng.uniform(0.1, 2, 8)
  s["means"][8:16, 2] = rng.uniform(0.005, 0.05, 8)
  s["means"][16:24, :2] *= 3.0
  s["scales"][24:32, 1] = 1e-6
  s["scales"][32:36] = 0.8
  s["opacities"][36:44] = 0.0
  s["opacities"][44:52] = 0.003
  s["means"][52:152, :2] = rng.uniform(-0.15, 0.15, (100, 2))
  s["means"][52:152, 2] = 2.0
  s["opacities"][52:152] = 0.995
  s["scales"][52:152] = 0.08
  if per_camera_colors:
    s["colors"] = np.stack([s["colors"] * (1 + 0.1 * c) for c in range(per_camera_colors)])
  return s


def torch_render(torch, s, viewmats, Ks, width, height, **kw):
  from oracle import render
  t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in s.items()}
  out = render(t["means"], t["quats"], t["scales"], t["opacities"], t["colors"],
               torch.tensor(viewmats, dtype=torch.float64), torch.tensor(Ks, dtype=torch.float64),
               width, height, **kw)
  return t, out


def assert_images_close(ours, ref, name):
  diff = np.abs(np.asarray(ours, np.float64) - ref)
  assert diff.mean() < 1e-5 and np.percentile(diff, 99.9) < 1e-3 and diff.max() < 1e-2, (
      name, diff.mean(), np.percentile(diff, 99.9), diff.max())


def rel_l2(ours, ref):
  ref = np.asarray(ref, np.float64)
  return np.linalg.norm(np.asarray(ours, np.float64) - ref) / max(np.linalg.norm(ref), 1e-30)


CASES = [  # sh_degree, n_colors, per-camera colours, render_mode, backgrounds, cameras, width, height
    (3, 3, 0, "RGB+D", True, 2, 64, 48),
    (1, 3, 0, "D", True, 1, 33, 17),
    pytest.param((0, 3, 0, "RGB", False, 1, 40, 24), marks=pytest.mark.slow),
    pytest.param((2, 3, 3, "RGB", True, 3, 48, 32), marks=pytest.mark.slow),
    pytest.param((None, 5, 2, "RGB+D", True, 2, 24, 40), marks=pytest.mark.slow),
]
CASE_IDS = ["sh3-RGB+D-bg-C2-64x48", "sh1-D-bg-C1-33x17", "sh0-RGB-C1-40x24", "sh2-RGB-bg-C3-48x32",
            "features5-RGB+D-bg-C2-24x40"]


@pytest.mark.oracle
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_oracle_images_and_gradients(case):
  torch = pytest.importorskip("torch")
  pytest.importorskip("gsplat")
  sh_degree, n_colors, per_camera, mode, with_bg, n_cams, width, height = case
  s = edge_case_scene(1200, 0, sh_degree, n_colors, per_camera)
  viewmats, Ks = cameras(n_cams, width, height)
  rng = np.random.default_rng(5)
  bg = rng.uniform(0, 1, (n_cams, 3 if sh_degree is not None else n_colors)).astype(np.float32)
  n_out = {"RGB": bg.shape[1], "D": 1, "RGB+D": bg.shape[1] + 1}[mode]
  r_img = rng.normal(size=(n_cams, height, width, n_out)).astype(np.float32)
  r_alpha = rng.normal(size=(n_cams, height, width, 1)).astype(np.float32)
  kw = dict(sh_degree=sh_degree, render_mode=mode)

  def loss(args, backgrounds):
    img, alpha, meta = rasterization(*args, jnp.asarray(viewmats), jnp.asarray(Ks), width, height,
                                     backgrounds=backgrounds, **kw)
    return jnp.sum(img * r_img) + jnp.sum(alpha * r_alpha), (img, alpha, meta)

  args = tuple(jnp.asarray(s[k]) for k in ARG_NAMES)
  bg_arg = jnp.asarray(bg) if with_bg else None
  (_, (img, alpha, meta)), (g_args, g_bg) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      args, bg_arg)
  assert not bool(meta["overflow"]) and int(meta["n_isects"]) > 0

  bg_t = torch.tensor(bg, dtype=torch.float64, requires_grad=True)
  t, (ref_img, ref_alpha) = torch_render(torch, s, viewmats, Ks, width, height,
                                         backgrounds=bg_t if with_bg else None, **kw)
  assert_images_close(img, ref_img.detach().numpy(), "image")
  assert_images_close(alpha, ref_alpha.detach().numpy(), "alpha")
  ((ref_img * torch.tensor(r_img, dtype=torch.float64)).sum()
   + (ref_alpha * torch.tensor(r_alpha, dtype=torch.float64)).sum()).backward()
  grads = dict(zip(ARG_NAMES, g_args), backgrounds=g_bg)
  refs = {name: t[name].grad for name in ARG_NAMES}
  if with_bg:
    refs["backgrounds"] = bg_t.grad
  for name, ref_g in refs.items():
    g = grads[name]
    assert np.all(np.isfinite(g)), name
    if ref_g is None:   # unused input, e.g. colours or backgrounds in depth-only mode
      np.testing.assert_array_equal(g, 0.0)
      continue
    assert rel_l2(g, ref_g.numpy()) < 2e-3, (name, rel_l2(g, ref_g.numpy()))


def small_inputs(n=300, seed=1, n_cams=2, width=40, height=24, sh_degree=2):
  s = edge_case_scene(n, seed, sh_degree)
  viewmats, Ks = cameras(n_cams, width, height)
  return tuple(jnp.asarray(s[k]) for k in ARG_NAMES) + (jnp.asarray(viewmats), jnp.asarray(Ks))


def test_jit_vmap_and_eager_agree():
  scenes = [small_inputs(seed=seed) for seed in (1, 2)]
  caps = [estimate_capacity(*x[:4], *x[5:], 40, 24) for x in scenes]
  cap = RasterCapacity(max(c.max_isects for c in caps), max(c.tile_capacity for c in caps))
  render = lambda *x: rasterization(*x, 40, 24, sh_degree=2, render_mode="RGB+D", capacity=cap)[:2]
  stacked = jax.tree.map(lambda *a: jnp.stack(a), *scenes)
  batched_img, batched_alpha = jax.jit(jax.vmap(render))(*stacked)
  for i, x in enumerate(scenes):
    eager_img, eager_alpha, meta = rasterization(*x, 40, 24, sh_degree=2, render_mode="RGB+D",
                                                 capacity=cap)
    assert not bool(meta["overflow"])
    np.testing.assert_allclose(batched_img[i], eager_img, atol=1e-6)
    np.testing.assert_allclose(batched_alpha[i], eager_alpha, atol=1e-6)


def test_forced_overflow_flag_and_growth_when_eager(monkeypatch):
  x = small_inputs()
  ref_img, _, _ = rasterization(*x, 40, 24, sh_degree=2)
  metas = []
  real_render = raster_module._rasterize

  def recording_render(*args, **kwargs):
    out = real_render(*args, **kwargs)
    metas.append((kwargs["capacity"], out[2]))
    return out

  monkeypatch.setattr(raster_module, "estimate_capacity", lambda *a, **k: RasterCapacity(1024, 128))
  monkeypatch.setattr(raster_module, "_rasterize", recording_render)
  img, _, meta = rasterization(*x, 40, 24, sh_degree=2)
  assert len(metas) == 2
  (small, small_meta), (grown, _) = metas
  # The first render reports the overflow (as a jitted caller would see it) with the true counts.
  assert bool(small_meta["overflow"]) and int(small_meta["max_tile_count"]) > small.tile_capacity
  assert grown.tile_capacity >= int(small_meta["max_tile_count"]) and not bool(meta["overflow"])
  np.testing.assert_allclose(img, ref_img, atol=1e-6)


def test_capacity_required_under_jit():
  x = small_inputs()
  with pytest.raises(ValueError, match="capacity"):
    jax.jit(lambda *a: rasterization(*a, 40, 24, sh_degree=2))(*x)


def test_empty_scene_culled_scene_and_one_pixel_image():
  viewmats, Ks = cameras(2, 1, 1)
  bg = jnp.asarray([[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]])
  empty = (jnp.zeros((0, 3)), jnp.zeros((0, 4)), jnp.zeros((0, 3)), jnp.zeros((0,)), jnp.zeros((0, 3)))
  img, alpha, meta = rasterization(*empty, jnp.asarray(viewmats), jnp.asarray(Ks), 1, 1,
                                   backgrounds=bg, render_mode="RGB+D")
  assert img.shape == (2, 1, 1, 4) and int(meta["n_isects"]) == 0
  np.testing.assert_allclose(img[:, 0, 0], np.concatenate([bg, np.zeros((2, 1))], -1))
  np.testing.assert_array_equal(alpha, 0.0)
  s = scene(50, 3, sh_degree=None)
  s["means"][:, 2] = -s["means"][:, 2]         # all behind the camera
  img, alpha, meta = rasterization(*(jnp.asarray(s[k]) for k in ARG_NAMES), jnp.asarray(viewmats),
                                   jnp.asarray(Ks), 1, 1, backgrounds=bg)
  np.testing.assert_allclose(img[:, 0, 0], bg)
  assert int(jnp.sum(meta["radii"])) == 0 and int(meta["n_isects"]) == 0    # binning's skip branch
  assert int(jnp.sum(meta["tile_counts"])) == 0 and not bool(meta["overflow"])
  # One pixel, one Gaussian right in front of it: α = o·exp(0).
  one = (jnp.asarray([[0.0, 0.0, 2.0]]), jnp.asarray([[1.0, 0, 0, 0]]), jnp.full((1, 3), 0.1),
         jnp.asarray([0.5]), jnp.asarray([[1.0, 0.0, 0.0]]))
  K1 = jnp.asarray([[[10.0, 0, 0.5], [0, 10.0, 0.5], [0, 0, 1]]])
  img, alpha, _ = rasterization(*one, jnp.eye(4)[None], K1, 1, 1)
  np.testing.assert_allclose(alpha[0, 0, 0, 0], 0.5, rtol=1e-6)
  np.testing.assert_allclose(img[0, 0, 0], [0.5, 0.0, 0.0], rtol=1e-6)


@pytest.mark.slow   # the gsplat oracle cases above check the same gradients in the fast suite
def test_finite_differences():
  # The image is discontinuous where α crosses 1/255 or T crosses 1e-4. Gaussians much wider than the
  # 16×16 image (σ ≈ 20 px, α ≥ 0.5·o everywhere) with o ≤ 0.7 (T ≥ 0.3⁶) avoid every threshold, so
  # central differences are valid.
  rng = np.random.default_rng(0)
  n = 6
  means = np.concatenate([rng.uniform(-0.3, 0.3, (n, 2)), rng.uniform(2, 3, (n, 1))], 1)
  quats, scales = rng.normal(size=(n, 4)), rng.uniform(2.0, 4.0, (n, 3))
  opac, coeffs = rng.uniform(0.3, 0.7, n), rng.normal(size=(n, 4, 3)) * 0.2
  viewmats, Ks = cameras(1, 16, 16)
  bg = rng.uniform(0, 1, (1, 3))
  weights = jnp.asarray(rng.normal(size=(1, 16, 16, 4)), jnp.float32)
  cap = RasterCapacity(1024, 128)

  def f(means, quats, scales, opac, coeffs, bg):
    img, alpha, _ = rasterization(means, quats, scales, opac, coeffs, jnp.asarray(viewmats),
                                  jnp.asarray(Ks), 16, 16, sh_degree=1, backgrounds=bg,
                                  render_mode="RGB+D", capacity=cap)
    return jnp.sum(img * weights) + jnp.sum(alpha)

  args = [jnp.asarray(a, jnp.float32) for a in (means, quats, scales, opac, coeffs, bg)]
  check_grads(jax.jit(f), args, order=1, modes=("rev",), eps=1e-3, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("change, match", [
    (dict(render_mode="RGBD"), "render_mode"),
    (dict(tile_size=8), "tile_size"),
    (dict(near_plane=0.0), "near_plane"),
    (dict(width=0), "width"),
    (dict(height=2.5), "height"),
    (dict(sh_degree=3), "sh_degree=3"),
    (dict(sh_degree=4), "sh_degree"),
    (dict(rasterize_mode="fast"), "rasterize_mode"),
    (dict(backend="cuda"), "backend"),
    (dict(backgrounds=jnp.zeros((2, 4))), "backgrounds"),
    (dict(quats=jnp.zeros((299, 4))), "quats"),
    (dict(Ks=jnp.zeros((3, 3, 3))), "Ks"),
])
def test_input_validation(change, match):
  names = ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")
  kwargs = dict(zip(names, small_inputs()), width=40, height=24, sh_degree=2)
  kwargs.update(change)
  with pytest.raises(ValueError, match=match):
    rasterization(**kwargs)
