"""Torch oracle for the rasterizer tests (rasterizer.md §5.3-5.4). Test-only; import it lazily.

Projection, covariance and SH come from gsplat 1.5.3's pure-torch `_torch_impl` (never
`gsplat.rasterization()`, which needs CUDA); the compositor is written here from the rules in §2.6.
All functions take and return torch tensors and work in any float dtype (float64 for exactness).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from gsplat.cuda import _torch_impl as gs

ALPHA_THRESHOLD = 1.0 / 255.0


def sh_basis(degree: int, unit: torch.Tensor) -> torch.Tensor:
  """The real SH basis of rasterizer.md §2.4, written with autograd (gsplat's torch basis runs under
  no_grad, while its CUDA backward does give direction gradients). Checked against gsplat's values."""
  x, y, z = unit.unbind(-1)
  basis = [torch.full_like(x, 0.2820947917738781)]
  if degree >= 1:
    basis += [-0.48860251190292 * y, 0.48860251190292 * z, -0.48860251190292 * x]
  if degree >= 2:
    z2, c1, s1 = z * z, x * x - y * y, 2 * x * y
    basis += [0.5462742152960395 * s1, -1.092548430592079 * z * y, 0.9461746957575601 * z2 -
              0.3153915652525201, -1.092548430592079 * z * x, 0.5462742152960395 * c1]
  if degree >= 3:
    c2, s2 = x * c1 - y * s1, x * s1 + y * c1
    tmp = -2.285228997322329 * z2 + 0.4570457994644658
    basis += [-0.5900435899266435 * s2, 1.445305721320277 * z * s1, tmp * y,
              z * (1.865881662950577 * z2 - 1.119528997770346), tmp * x, 1.445305721320277 * z * c1,
              -0.5900435899266435 * c2]
  return torch.stack(basis, -1)


def sh_colors(degree: int, dirs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
  """max(SH(normalize(dirs)) + 0.5, 0), differentiable w.r.t. dirs and coeffs."""
  unit = F.normalize(dirs, p=2, dim=-1)
  n_bases = (degree + 1) ** 2
  return torch.clamp_min((sh_basis(degree, unit)[..., None] * coeffs[..., :n_bases, :]).sum(-2) + 0.5,
                         0.0)


def project(means, quats, scales, viewmats, Ks, width, height, *, eps2d=0.3, near_plane=0.01,
            far_plane=1e10):
  """gsplat's torch projection: (radii [C,N,2], means2d [C,N,2], depths [C,N], conics [C,N,3])."""
  covars, _ = gs._quat_scale_to_covar_preci(quats, scales, compute_preci=False)
  radii, means2d, depths, conics, _ = gs._fully_fused_projection(
      means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane,
      far_plane=far_plane)
  return radii, means2d, depths, conics


def depth_order(depths: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
  """Indices of visible Gaussians sorted by depth, ties to the lower index."""
  idx = torch.nonzero(visible).flatten()
  order = torch.sort(depths[idx], stable=True).indices
  return idx[order]


def composite_dense(means2d, conics, opacities, feats, width, height):
  """§5.3 step 3 on one camera's full depth-sorted list: (acc [H,W,D], T_final [H,W]).

  Valid without tiles because a Gaussian outside a tile's box has α < 1/255 in it (§2.3).
  """
  ys, xs = torch.meshgrid(torch.arange(height, dtype=means2d.dtype) + 0.5,
                          torch.arange(width, dtype=means2d.dtype) + 0.5, indexing="ij")
  px, py = xs.reshape(-1, 1), ys.reshape(-1, 1)
  dx = means2d[None, :, 0] - px
  dy = means2d[None, :, 1] - py
  a, b, c = conics[:, 0], conics[:, 1], conics[:, 2]
  sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
  alpha = torch.clamp_max(opacities * torch.exp(-sigma), 0.999)
  skip = (sigma < 0) | (alpha < ALPHA_THRESHOLD)
  alpha = torch.where(skip, torch.zeros_like(alpha), alpha)
  t_after = torch.cumprod(1 - alpha, dim=1)
  inc = t_after > 1e-4
  t_before = torch.cat([torch.ones_like(t_after[:, :1]), t_after[:, :-1]], dim=1)
  w = torch.where(inc, alpha * t_before, torch.zeros_like(alpha))
  acc = w @ feats
  t_final = torch.prod(torch.where(inc, 1 - alpha, torch.ones_like(alpha)), dim=1)
  return acc.reshape(height, width, -1), t_final.reshape(height, width)


def render(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, sh_degree=None,
           backgrounds=None, render_mode="RGB", near_plane=0.01, far_plane=1e10, eps2d=0.3):
  """End-to-end oracle image, mirroring `rasterization` (classic): (colors [C,H,W,X], alphas [C,H,W,1])."""
  radii, means2d, depths, conics = project(means, quats, scales, viewmats, Ks, width, height,
                                           eps2d=eps2d, near_plane=near_plane, far_plane=far_plane)
  images, alphas = [], []
  for cam in range(viewmats.shape[0]):
    parts = []
    if render_mode in ("RGB", "RGB+D"):
      cam_colors = colors if colors.dim() == (2 if sh_degree is None else 3) else colors[cam]
      if sh_degree is None:
        parts.append(cam_colors)
      else:
        campos = torch.linalg.inv(viewmats[cam])[:3, 3]
        parts.append(sh_colors(sh_degree, means - campos, cam_colors))
    if render_mode in ("D", "RGB+D"):
      parts.append(depths[cam][:, None])
    feats = torch.cat(parts, dim=-1)
    order = depth_order(depths[cam], (radii[cam] > 0).all(-1))
    acc, t_final = composite_dense(means2d[cam][order], conics[cam][order], opacities[order],
                                   feats[order], width, height)
    if backgrounds is not None and render_mode != "D":
      bg = torch.zeros(acc.shape[-1], dtype=acc.dtype)
      bg = torch.cat([backgrounds[cam], bg[backgrounds.shape[-1]:]])
      acc = acc + t_final[..., None] * bg
    images.append(acc)
    alphas.append(1 - t_final[..., None])
  return torch.stack(images), torch.stack(alphas)

