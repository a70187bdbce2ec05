"""SPZ v2/v3: header, per-quantity quantisation error, bit-level packing, range handling, errors."""
import gzip
import struct

import numpy as np
import pytest

from flashworld_jax.export import spz


def rotation_angle(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
  dot = np.abs(np.sum(q1 * q2, axis=1)) / (np.linalg.norm(q1, axis=1) * np.linalg.norm(q2, axis=1))
  return 2 * np.arccos(np.clip(dot, 0, 1))


def payload(path) -> bytes:
  with open(path, "rb") as f:
    data = f.read()
  assert data[:2] == b"\x1f\x8b"
  return gzip.decompress(data)


def test_header_and_stream_sizes(tmp_path, gaussians):
  path = tmp_path / "scene.spz"
  assert spz.write_spz(str(path), gaussians) == 257
  raw = payload(path)
  assert raw[:4] == b"NGSP"
  assert struct.unpack("<IIIBBBB", raw[:16]) == (0x5053474E, 3, 257, 2, 12, 0, 0)
  assert len(raw) == 16 + 257 * (9 + 1 + 3 + 3 + 4 + 24)


def test_round_trip_within_quantisation_error(tmp_path, make_gaussians):
  g = make_gaussians(4000, seed=1)
  path = str(tmp_path / "scene.spz")
  spz.write_spz(path, g)
  back, info = spz.read_spz(path)
  assert info == spz.SpzInfo(version=3, num_points=4000, sh_degree=2, fractional_bits=12,
                             antialiased=False)
  assert back.shape == g.shape and back.dtype == np.float32
  # Positions: round to 2^-12 (half a step), plus float32 rounding of |p| < 16.
  assert np.abs(back[:, :3] - g[:, :3]).max() <= 2.0 ** -13 + 1e-6
  # Opacity: one byte of sigmoid space, half a step.
  assert np.abs(back[:, 3] - g[:, 3]).max() <= 0.5 / 255 + 1e-6
  # Scales: log scale in steps of 1/16, half a step.
  assert np.abs(np.log(back[:, 4:7]) - np.log(g[:, 4:7])).max() <= 1 / 32 + 1e-5
  # Colour DC: a byte of DC·0.15·255, half a step.
  assert np.abs(back[:, 11:14] - g[:, 11:14]).max() <= 0.5 / (0.15 * 255) + 1e-6
  # Rotations: 9-bit magnitudes over [0, √½] on three components.
  assert rotation_angle(back[:, 7:11], g[:, 7:11]).max() < 0.006
  np.testing.assert_allclose(np.linalg.norm(back[:, 7:11], axis=1), 1, atol=1e-6)
  # SH: half a bucket plus the ×128 rounding; degree-1 buckets are 8/128, higher ones 16/128.
  sh_error = np.abs(back[:, 14:] - g[:, 14:])
  assert sh_error[:, :9].max() <= 4.5 / 128 + 1e-6
  assert sh_error[:, 9:].max() <= 8.5 / 128 + 1e-6
  assert sh_error[:, 9:].max() > 4.5 / 128      # the coarser buckets are really used


def test_rounding_is_half_away_from_zero():
  half = 0.5 / 4096
  p = np.array([[half, -half, 3 * half], [-3 * half, 2047.0, -2048.0]], np.float32)
  bytes_ = spz.encode_positions(p, 12)
  np.testing.assert_array_equal(spz.decode_positions(bytes_, 12),
                                [[1 / 4096, -1 / 4096, 2 / 4096], [-2 / 4096, 2047.0, -2048.0]])
  # -1 as a 24-bit two's complement is ff ff ff.
  np.testing.assert_array_equal(bytes_[0, 3:6], [0xFF, 0xFF, 0xFF])


def test_smallest_three_bit_layout():
  # (x, y, z, w) = (0.1, −0.7, 0.1, 0.7): |y| and |w| tie → largest index 1 (y, first); y < 0 so
  # the quaternion is negated: x → −0.1, z → −0.1, w → −0.7, all sign bits set.
  # m = ⌊511·|q|/√½ + 0.5⌋: 0.1 → 72, 0.7 → 506. Word = 1<<30 | (512+72)<<20 | (512+72)<<10 | (512+506).
  word = (1 << 30) | (584 << 20) | (584 << 10) | 1018
  assert word == 1686709242
  q_wxyz = np.array([[0.7, 0.1, -0.7, 0.1]])
  packed = spz.encode_rotations_v3(q_wxyz)
  np.testing.assert_array_equal(packed[0], [250, 35, 137, 100])
  assert int.from_bytes(packed[0].tobytes(), "little") == word
  back = spz.decode_rotations_v3(packed)
  expected = -q_wxyz       # same rotation, the largest component stored positive
  np.testing.assert_allclose(back, expected, atol=np.sqrt(0.5) / 511)


def test_v2_rotation_bytes():
  # (w, x, y, z) = (−0.5, 0.5, 0.5, 0.5): w < 0 so negated; x, y, z = −0.5 → u8(−0.5·127.5 + 127.5) = 64.
  packed = spz.encode_rotations_v2(np.array([[-0.5, 0.5, 0.5, 0.5]]))
  np.testing.assert_array_equal(packed, [[64, 64, 64]])
  v = 64 / 127.5 - 1
  np.testing.assert_allclose(spz.decode_rotations_v2(packed), [[np.sqrt(1 - 3 * v * v), v, v, v]],
                             rtol=1e-6)


def test_sh_buckets():
  # x·128 + 128 with round-half-away, then ⌊(v + b/2)/b⌋·b: b = 8 for the first 9 bytes, 16 after.
  sh = np.zeros((1, 24), np.float32)
  sh[0, 0], sh[0, 1], sh[0, 9], sh[0, 10], sh[0, 11] = 0.1, -2.0, 0.1, 0.99, 0.0
  q = spz.encode_sh(sh)[0]
  assert (q[0], q[1], q[9], q[10], q[11]) == (144, 0, 144, 255, 128)   # 141→144, −128→0, 255 cap


def test_v2_round_trip(tmp_path, gaussians):
  path = str(tmp_path / "v2.spz")
  spz.write_spz(path, gaussians, version=2)
  back, info = spz.read_spz(path)
  assert info.version == 2
  # v2 stores x, y, z in 8 bits (half step 0.5/127.5) and derives w = √(1 − |xyz|²), which is
  # ill-conditioned for small |w|: bound the stored components everywhere, the angle where |w| > ½.
  q = gaussians[:, 7:11] * np.where(gaussians[:, 7:8] < 0, -1, 1)
  assert np.abs(back[:, 8:11] - q[:, 1:]).max() <= 0.5 / 127.5 + 1e-6
  large_w = np.abs(q[:, 0]) > 0.5
  assert rotation_angle(back[large_w, 7:11], q[large_w]).max() < 0.03
  np.testing.assert_allclose(back[:, :3], gaussians[:, :3], atol=2.0 ** -13 + 1e-6)


def test_large_coordinates_lower_fractional_bits(tmp_path, gaussians, monkeypatch):
  warnings = []
  monkeypatch.setattr(spz.logging, "warning", lambda *a: warnings.append(a))
  g = gaussians.copy()
  g[0, 0] = 3000.0
  path = str(tmp_path / "big.spz")
  spz.write_spz(path, g)
  back, info = spz.read_spz(path)
  assert info.fractional_bits == 11 and len(warnings) == 1
  assert np.abs(back[:, :3] - g[:, :3]).max() <= 2.0 ** -12 + 1e-4
  g[0, 0] = 2047.99995                                 # rounds to 2^23 at F = 12: must not wrap
  spz.write_spz(path, g)
  back, info = spz.read_spz(path)
  assert info.fractional_bits == 11 and abs(back[0, 0] - 2048.0) < 1e-3
  g[0, 0] = -1e7
  with pytest.raises(ValueError, match="exceeds the SPZ range"):
    spz.write_spz(path, g)


def _gzip_file(tmp_path, raw: bytes, name="x.spz") -> str:
  path = tmp_path / name
  path.write_bytes(gzip.compress(raw))
  return str(path)


def test_other_sh_degrees_on_read(tmp_path):
  n = 2
  for degree in (0, 1, 3):
    dim = (degree + 1) ** 2 - 1
    sh = np.arange(n * dim * 3, dtype=np.uint8).reshape(n, dim * 3) + 100
    raw = (struct.pack("<IIIBBBB", 0x5053474E, 3, n, degree, 12, 0, 0) + bytes(9 * n)
           + bytes([255] * n) + bytes([128] * 3 * n) + bytes([160] * 3 * n)
           + np.array([3 << 30] * n, "<u4").tobytes() + sh.tobytes())
    back, info = spz.read_spz(_gzip_file(tmp_path, raw))
    assert info.sh_degree == degree
    np.testing.assert_allclose(back[:, 3], 1.0)
    np.testing.assert_allclose(back[:, 4:7], 1.0)                   # 160/16 − 10 = 0 → exp = 1
    np.testing.assert_allclose(back[:, 7:11], [[1, 0, 0, 0]] * n)   # w largest, others 0
    kept = min(dim, 8)
    expected = np.zeros((n, 24), np.float32)
    expected[:, :3 * kept] = (sh[:, :3 * kept].astype(np.float32) - 128) / 128
    np.testing.assert_allclose(back[:, 14:], expected)


def test_rejections(tmp_path, gaussians):
  path = str(tmp_path / "ok.spz")
  spz.write_spz(path, gaussians[:3])
  raw = payload(path)

  def header(version=3, n=3, degree=2, flags=0, magic=0x5053474E):
    return struct.pack("<IIIBBBB", magic, version, n, degree, 12, flags, 0)

  cases = [
      (header(version=1) + raw[16:], "version 1"),
      (header(version=4) + raw[16:], "version 4"),
      (header(magic=0x12345678) + raw[16:], "magic"),
      (header(n=10_000_001), "10000000"),
      (header(flags=2) + raw[16:], "extensions"),
      (raw[:-1], "expected"),
      (raw + b"\0", "expected"),
      (header(n=4) + raw[16:], "expected"),
      (raw[:10], "shorter"),
  ]
  for data, match in cases:
    with pytest.raises(ValueError, match=match):
      spz.read_spz(_gzip_file(tmp_path, data))
  v4 = tmp_path / "v4.spz"
  v4.write_bytes(b"NGSP" + bytes(28))
  with pytest.raises(ValueError, match="v4"):
    spz.read_spz(str(v4))
  plain = tmp_path / "plain.spz"
  plain.write_bytes(raw)
  with pytest.raises(ValueError, match="v4"):          # uncompressed payloads also start with NGSP
    spz.read_spz(str(plain))
  junk = tmp_path / "junk.spz"
  junk.write_bytes(b"hello world")
  with pytest.raises(ValueError, match="not gzip"):
    spz.read_spz(str(junk))
  with pytest.raises(ValueError, match="version"):
    spz.write_spz(path, gaussians, version=1)
