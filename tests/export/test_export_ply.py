"""3DGS PLY: exact INRIA layout (read with plyfile), round trip, reference layout, degrees, errors."""
import os

import numpy as np
import plyfile
import pytest

from flashworld_jax.export import ply, world_frame

STANDARD_NAMES = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                  + [f"f_rest_{i}" for i in range(24)]
                  + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def test_standard_layout_read_by_plyfile(tmp_path, gaussians):
  g = gaussians.copy()
  g[0, 3], g[1, 3] = 0.0, 1.0                          # clamped before the logit (quirk f)
  g[2, 7:11] *= 3.0                                    # written normalised
  path = str(tmp_path / "scene.ply")
  assert ply.write_ply(path, g) == len(g)

  with open(path, "rb") as f:
    head = f.read(4096)
  header = head[:head.index(b"end_header\n") + len(b"end_header\n")].decode("ascii")
  assert header == ("ply\nformat binary_little_endian 1.0\nelement vertex 257\n"
                    + "".join(f"property float {n}\n" for n in STANDARD_NAMES) + "end_header\n")
  assert os.path.getsize(path) == len(header) + 257 * 41 * 4

  data = plyfile.PlyData.read(path)
  assert not data.text and data.byte_order == "<"
  v = data["vertex"].data
  assert list(v.dtype.names) == STANDARD_NAMES
  assert all(v.dtype[n] == np.dtype("<f4") for n in STANDARD_NAMES)
  g64 = g.astype(np.float64)
  for axis, name in enumerate("xyz"):
    np.testing.assert_array_equal(v[name], g[:, axis])
    np.testing.assert_array_equal(v["n" + name], 0.0)
  for c in range(3):
    np.testing.assert_array_equal(v[f"f_dc_{c}"], g[:, 11 + c])
    for k in range(1, 9):
      np.testing.assert_array_equal(v[f"f_rest_{c * 8 + k - 1}"], g[:, 11 + 3 * k + c])
  o = np.clip(g64[:, 3], 1e-6, 1 - 1e-6)
  np.testing.assert_allclose(v["opacity"], np.log(o / (1 - o)), rtol=1e-6, atol=1e-6)
  assert np.isfinite(v["opacity"]).all() and abs(v["opacity"][0] + 13.8155) < 1e-3
  for i in range(3):
    np.testing.assert_allclose(v[f"scale_{i}"], np.log(g64[:, 4 + i] + 1e-8), rtol=1e-6, atol=1e-6)
  q = g64[:, 7:11] / np.linalg.norm(g64[:, 7:11], axis=1, keepdims=True)
  for i in range(4):
    np.testing.assert_allclose(v[f"rot_{i}"], q[:, i], rtol=0, atol=1e-7)


def test_round_trip(tmp_path, gaussians):
  path = str(tmp_path / "scene.ply")
  ply.write_ply(path, gaussians)
  back, degree = ply.read_ply(path)
  assert degree == 2 and back.dtype == np.float32 and back.shape == gaussians.shape
  np.testing.assert_array_equal(back[:, :3], gaussians[:, :3])
  np.testing.assert_array_equal(back[:, 11:], gaussians[:, 11:])
  np.testing.assert_allclose(back[:, 3], gaussians[:, 3], rtol=0, atol=1e-6)
  np.testing.assert_allclose(back[:, 4:7], gaussians[:, 4:7], rtol=1e-6, atol=2e-8)
  np.testing.assert_allclose(back[:, 7:11], gaussians[:, 7:11], rtol=0, atol=1e-6)


def test_opacity_threshold_and_opencv_flag(tmp_path, gaussians):
  path = str(tmp_path / "scene.ply")
  assert ply.write_ply(path, gaussians, opacity_threshold=0.5) == int((gaussians[:, 3] >= 0.5).sum())
  ply.write_ply(path, gaussians, opencv_world=True)
  raw = plyfile.PlyData.read(path)["vertex"].data
  np.testing.assert_allclose(raw["y"], -gaussians[:, 1], rtol=1e-6)
  np.testing.assert_allclose(raw["z"], -gaussians[:, 2], rtol=1e-6)
  back, _ = ply.read_ply(path, opencv_world=True)
  np.testing.assert_allclose(back[:, :3], gaussians[:, :3], rtol=0, atol=1e-5)
  np.testing.assert_allclose(back[:, 11:], gaussians[:, 11:], rtol=0, atol=1e-6)
  same_rotation = np.abs(np.sum(back[:, 7:11] * gaussians[:, 7:11], axis=1))
  np.testing.assert_allclose(same_rotation, 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="opacity_threshold"):
    ply.write_ply(path, gaussians, opacity_threshold=1.5)


def _write_with_plyfile(path, columns, *, text=False, byte_order="<", extra_element=False):
  dtype = [(name, "f4") for name in columns] + [("red", "u1")]
  n = len(next(iter(columns.values())))
  arr = np.zeros(n, dtype=dtype)
  for name, values in columns.items():
    arr[name] = values
  arr["red"] = 7
  elements = [plyfile.PlyElement.describe(arr, "vertex")]
  if extra_element:
    elements.insert(0, plyfile.PlyElement.describe(np.zeros(2, dtype=[("id", "i4")]), "camera"))
  plyfile.PlyData(elements, text=text, byte_order=byte_order).write(str(path))


def _base_columns(g):
  cols = {n: g[:, i] for i, n in enumerate("xyz")}
  cols["opacity"] = np.log(g[:, 3] / (1 - g[:, 3]))
  cols.update({f"scale_{i}": np.log(g[:, 4 + i]) for i in range(3)})
  cols.update({f"rot_{i}": g[:, 7 + i] for i in range(4)})
  return cols


def test_reference_layout_with_extra_properties_and_elements(tmp_path, gaussians):
  cols = _base_columns(gaussians)
  cols.update({f"f_dc_{i}": gaussians[:, 11 + i] for i in range(27)})   # coefficient-major (quirk a)
  path = tmp_path / "ref.ply"
  _write_with_plyfile(path, cols, extra_element=True)
  back, degree = ply.read_ply(str(path))
  assert degree == 2
  np.testing.assert_array_equal(back[:, 11:], gaussians[:, 11:])
  np.testing.assert_array_equal(back[:, :3], gaussians[:, :3])
  np.testing.assert_allclose(back[:, 3:7], gaussians[:, 3:7], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_other_degrees(tmp_path, gaussians, degree):
  rng = np.random.default_rng(degree)
  k = (degree + 1) ** 2
  sh = rng.normal(size=(len(gaussians), k, 3)).astype(np.float32)   # [N, coefficient, channel]
  cols = _base_columns(gaussians)
  cols.update({f"f_dc_{c}": sh[:, 0, c] for c in range(3)})
  cols.update({f"f_rest_{c * (k - 1) + j - 1}": sh[:, j, c] for c in range(3) for j in range(1, k)})
  path = tmp_path / f"d{degree}.ply"
  _write_with_plyfile(path, cols)
  back, file_degree = ply.read_ply(str(path))
  assert file_degree == degree
  expected = np.zeros((len(gaussians), 9, 3), np.float32)
  kept = min(k, 9)
  expected[:, :kept] = sh[:, :kept]
  np.testing.assert_array_equal(back[:, 11:], expected.reshape(len(gaussians), 27))


def test_rejects_ascii_big_endian_and_bad_layouts(tmp_path, gaussians):
  cols = _base_columns(gaussians[:4])
  cols.update({f"f_dc_{c}": gaussians[:4, 11 + c] for c in range(3)})
  for kwargs, match in [(dict(text=True), "ascii"), (dict(byte_order=">"), "big_endian")]:
    path = tmp_path / "bad.ply"
    _write_with_plyfile(path, cols, **kwargs)
    with pytest.raises(ValueError, match=match):
      ply.read_ply(str(path))
  bad_rest = dict(cols, **{f"f_rest_{i}": cols["x"] for i in range(10)})
  _write_with_plyfile(tmp_path / "rest.ply", bad_rest)
  with pytest.raises(ValueError, match="10 f_rest"):
    ply.read_ply(str(tmp_path / "rest.ply"))
  no_opacity = {k: v for k, v in cols.items() if k != "opacity"}
  _write_with_plyfile(tmp_path / "op.ply", no_opacity)
  with pytest.raises(ValueError, match="opacity"):
    ply.read_ply(str(tmp_path / "op.ply"))
  (tmp_path / "junk.ply").write_bytes(b"not a ply file")
  with pytest.raises(ValueError, match="not a PLY"):
    ply.read_ply(str(tmp_path / "junk.ply"))


def test_failed_write_leaves_existing_file(tmp_path, gaussians):
  path = str(tmp_path / "scene.ply")
  ply.write_ply(path, gaussians)
  before = open(path, "rb").read()
  bad = gaussians.copy()
  bad[5, 0] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    ply.write_ply(path, bad)
  with pytest.raises(ValueError, match=r"\[N, 38\]"):
    ply.write_ply(path, gaussians[:, :37])
  assert open(path, "rb").read() == before
  assert os.listdir(tmp_path) == ["scene.ply"]


def test_world_frame_then_ply_uses_world_positions(tmp_path, gaussians):
  c2w = np.eye(4)
  c2w[:3, 3] = [10.0, 0.0, 0.0]
  path = str(tmp_path / "scene.ply")
  ply.write_ply(path, world_frame.gaussians_to_world(gaussians, c2w, 2.0))
  back, _ = ply.read_ply(path)
  np.testing.assert_allclose(back[:, :3], 2.0 * gaussians[:, :3] + [10.0, 0.0, 0.0], rtol=1e-6)


@pytest.mark.oracle
def test_matches_gsplat_exporter(tmp_path, gaussians):
  """gsplat's independent PLY writer (no normals) holds the same values under the same names."""
  torch = pytest.importorskip("torch")
  exporter = pytest.importorskip("gsplat.exporter")
  g = gaussians.astype(np.float64)
  sh = torch.from_numpy(g[:, 11:].reshape(-1, 9, 3))
  o = np.clip(g[:, 3], 1e-6, 1 - 1e-6)
  theirs = str(tmp_path / "gsplat.ply")
  exporter.export_splats(
      means=torch.from_numpy(g[:, :3]), scales=torch.from_numpy(np.log(g[:, 4:7] + 1e-8)),
      quats=torch.from_numpy(g[:, 7:11] / np.linalg.norm(g[:, 7:11], axis=1, keepdims=True)),
      opacities=torch.from_numpy(np.log(o / (1 - o))), sh0=sh[:, :1], shN=sh[:, 1:],
      format="ply", save_to=theirs)
  ours = str(tmp_path / "ours.ply")
  ply.write_ply(ours, gaussians)
  a = plyfile.PlyData.read(ours)["vertex"].data
  b = plyfile.PlyData.read(theirs)["vertex"].data
  assert set(b.dtype.names) == set(STANDARD_NAMES) - {"nx", "ny", "nz"}
  for name in b.dtype.names:
    # Tolerance: float32 rounding of the log/logit (ours computes them from float32 inputs).
    np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6, err_msg=name)
  back, degree = ply.read_ply(theirs)
  assert degree == 2
  np.testing.assert_allclose(back, gaussians, rtol=1e-5, atol=1e-6)
