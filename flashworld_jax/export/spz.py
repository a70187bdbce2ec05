"""SPZ (Niantic) in numpy: version-3 writer (version 2 on request) and version-2/3 reader (formats.md §4).

A gzip stream holding a 16-byte little-endian header and six per-attribute streams (positions,
alphas, colours, scales, rotations, SH), each for all points before the next. Quantisation mirrors
the spz library, whose `std::round` rounds halves away from zero (numpy's rounds them to even).
Data are declared in the format's native RUB frame and never converted (the request world is y-up).
"""
from __future__ import annotations

import dataclasses
import gzip
import struct

import numpy as np
from absl import logging

from flashworld_jax.export import layout
from flashworld_jax.io.atomic import write_bytes

MAGIC = 0x5053474E            # b"NGSP" little-endian
MAX_POINTS = 10_000_000
COLOR_SCALE = 0.15            # SH DC → byte: DC·0.15·255 + 127.5
DEFAULT_FRACTIONAL_BITS = 12
DEFAULT_COMPRESSLEVEL = 6     # zlib's default, as the spz library uses
_HEADER = struct.Struct("<IIIBBBB")
_SQRT1_2 = np.float32(0.7071067811865476)
_MAX_24BIT = (1 << 23) - 1
_FLAG_ANTIALIASED = 0x1
_SH_DEGREE_1_BYTES = 9        # 3 coefficients × RGB quantised with 5 bits, the rest with 4
# Indices (x, y, z, w order) other than the largest one, in increasing order.
_OTHERS = np.array([[j for j in range(4) if j != i] for i in range(4)])


@dataclasses.dataclass(frozen=True)
class SpzInfo:
  version: int
  num_points: int
  sh_degree: int
  fractional_bits: int
  antialiased: bool


def _round_half_away(x: np.ndarray) -> np.ndarray:
  return np.sign(x) * np.floor(np.abs(x) + np.float32(0.5))


def _to_u8(x: np.ndarray) -> np.ndarray:
  return np.clip(_round_half_away(x), 0, 255).astype(np.uint8)


def _sh_dim(degree: int) -> int:
  return (degree + 1) ** 2 - 1


# --- encoders ---------------------------------------------------------------------------------------

def _fractional_bits_that_fit(positions: np.ndarray, requested: int) -> int:
  """Largest F ≤ `requested` whose 24-bit fixed point holds every coordinate (never wrap; quirk k)."""
  peak = float(np.max(np.abs(positions.astype(np.float32)), initial=0.0))
  for bits in range(requested, -1, -1):
    if _round_half_away(np.float32(peak * (1 << bits))) <= _MAX_24BIT:
      if bits != requested:
        logging.warning("SPZ: max |coordinate| %.6g does not fit 24 bits with %d fractional bits; "
                        "writing with %d (resolution %.3g)", peak, requested, bits, 2.0 ** -bits)
      return bits
  raise ValueError(f"gaussians: max |coordinate| {peak:.6g} exceeds the SPZ range ±{_MAX_24BIT} "
                   "even with 0 fractional bits")


def encode_positions(positions: np.ndarray, fractional_bits: int) -> np.ndarray:
  fixed = _round_half_away(positions.astype(np.float32) * np.float32(1 << fractional_bits))
  fixed = fixed.astype(np.int32).view(np.uint32)
  shifts = np.array([0, 8, 16], dtype=np.uint32)
  return ((fixed[..., None] >> shifts) & 0xFF).astype(np.uint8).reshape(len(positions), 9)


def encode_rotations_v3(wxyz: np.ndarray) -> np.ndarray:
  """Smallest-three packing into one little-endian uint32 per quaternion → [N, 4] bytes."""
  q = layout.normalised_quaternions(wxyz)[:, [1, 2, 3, 0]].astype(np.float32)   # spz order xyzw
  largest = np.argmax(np.abs(q), axis=1)                                          # first on ties
  negate = np.take_along_axis(q, largest[:, None], axis=1)[:, 0] < 0
  others = np.take_along_axis(q, _OTHERS[largest], axis=1)
  # Sign relative to the (conceptually flipped) quaternion, computed as the library does.
  sign = ((others < 0) != negate[:, None]).astype(np.uint32)
  mag = np.floor(np.float32(511) * (np.abs(others) / _SQRT1_2) + np.float32(0.5))
  mag = np.minimum(mag, 511).astype(np.uint32)
  word = largest.astype(np.uint32)
  for i in range(3):
    word = (word << np.uint32(10)) | (sign[:, i] << np.uint32(9)) | mag[:, i]
  return word.astype("<u4").view(np.uint8).reshape(len(q), 4)


def encode_rotations_v2(wxyz: np.ndarray) -> np.ndarray:
  """x, y, z of the normalised quaternion with w ≥ 0, each as u8(v·127.5 + 127.5) → [N, 3] bytes."""
  q = layout.normalised_quaternions(wxyz).astype(np.float32)
  q = np.where(q[:, :1] < 0, -q, q)
  return _to_u8(q[:, 1:] * np.float32(127.5) + np.float32(127.5))


def encode_sh(sh_rest: np.ndarray) -> np.ndarray:
  """Coefficient-major SH above DC [N, 3·dim] → bytes snapped to 5-bit (degree 1) / 4-bit buckets."""
  v = _round_half_away(sh_rest.astype(np.float32) * np.float32(128)) + 128
  bucket = np.full(sh_rest.shape[1], 16, dtype=np.float32)
  bucket[:_SH_DEGREE_1_BYTES] = 8
  v = np.floor((v + bucket / 2) / bucket) * bucket
  return np.clip(v, 0, 255).astype(np.uint8)


def encode(gaussians: np.ndarray, *, version: int = 3,
           fractional_bits: int = DEFAULT_FRACTIONAL_BITS) -> bytes:
  """[N, 38] activated Gaussians → the uncompressed SPZ payload (header + streams)."""
  if version not in (2, 3):
    raise ValueError(f"version: got {version!r}, expected 2 or 3")
  if not 0 <= fractional_bits <= 23:
    raise ValueError(f"fractional_bits: got {fractional_bits!r}, expected 0..23")
  n = len(gaussians)
  if n > MAX_POINTS:
    raise ValueError(f"gaussians: {n} points, SPZ readers accept at most {MAX_POINTS}")
  positions = gaussians[:, layout.POSITION]
  bits = _fractional_bits_that_fit(positions, fractional_bits)
  sh = gaussians[:, layout.SH]
  alpha = np.clip(gaussians[:, layout.OPACITY], 0.0, 1.0).astype(np.float32)
  log_scale = layout.scale_to_log(gaussians[:, layout.SCALE]).astype(np.float32)
  rotations = (encode_rotations_v3 if version == 3 else encode_rotations_v2)(gaussians[:, layout.ROTATION])
  streams = [
      encode_positions(positions, bits),
      _to_u8(alpha * np.float32(255)),
      _to_u8(sh[:, :3].astype(np.float32) * np.float32(COLOR_SCALE * 255) + np.float32(127.5)),
      _to_u8((log_scale + np.float32(10)) * np.float32(16)),
      rotations,
      encode_sh(sh[:, 3:]),
  ]
  header = _HEADER.pack(MAGIC, version, n, layout.SH_DEGREE, bits, 0, 0)
  return b"".join([header] + [memoryview(s) for s in streams])


def write_spz(path: str, gaussians, *, opacity_threshold: float | None = None, version: int = 3,
              fractional_bits: int = DEFAULT_FRACTIONAL_BITS,
              compresslevel: int = DEFAULT_COMPRESSLEVEL) -> int:
  """Writes [N, 38] Gaussians (SH degree 2, RUB declared, no conversion) as gzip SPZ, atomically.

  Positions whose magnitude does not fit 24 bits with `fractional_bits` lower it (logged) instead of
  wrapping. `compresslevel` 1 was ~6x faster than the default 6 for ~2 % larger synthetic files.
  Returns the number of points written.
  """
  if not 0 <= compresslevel <= 9:
    raise ValueError(f"compresslevel: got {compresslevel!r}, expected 0..9")
  g = layout.drop_transparent(layout.as_gaussians(gaussians), opacity_threshold)
  payload = encode(g, version=version, fractional_bits=fractional_bits)
  write_bytes(path, gzip.compress(payload, compresslevel=compresslevel, mtime=0))
  return len(g)


# --- decoders ---------------------------------------------------------------------------------------

def decode_positions(data: np.ndarray, fractional_bits: int) -> np.ndarray:
  b = data.reshape(-1, 3, 3).astype(np.int32)
  fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
  fixed = (fixed ^ 0x800000) - 0x800000                       # sign-extend 24 → 32 bits
  return fixed.astype(np.float32) * np.float32(2.0 ** -fractional_bits)


def decode_rotations_v3(data: np.ndarray) -> np.ndarray:
  """[N, 4] smallest-three bytes → unit quaternions (w, x, y, z)."""
  word = data.reshape(-1, 4).copy().view("<u4")[:, 0].astype(np.uint32)
  largest = (word >> np.uint32(30)).astype(np.int64)
  others = np.empty((len(word), 3), dtype=np.float32)
  for i in (2, 1, 0):                # the highest other index sits in the lowest bits
    mag = (word & np.uint32(511)).astype(np.float32)
    negative = ((word >> np.uint32(9)) & np.uint32(1)).astype(bool)
    others[:, i] = np.where(negative, -1.0, 1.0) * _SQRT1_2 * mag / np.float32(511)
    word = word >> np.uint32(10)
  xyzw = np.empty((len(word), 4), dtype=np.float32)
  np.put_along_axis(xyzw, _OTHERS[largest], others, axis=1)
  rest = np.sqrt(np.maximum(0.0, 1.0 - np.sum(others * others, axis=1)))
  np.put_along_axis(xyzw, largest[:, None], rest[:, None], axis=1)
  return xyzw[:, [3, 0, 1, 2]]


def decode_rotations_v2(data: np.ndarray) -> np.ndarray:
  xyz = data.reshape(-1, 3).astype(np.float32) / np.float32(127.5) - 1
  w = np.sqrt(np.maximum(0.0, 1.0 - np.sum(xyz * xyz, axis=1, keepdims=True)))
  return np.concatenate([w, xyz], axis=1)


def _parse_header(raw: bytes, source: str) -> SpzInfo:
  if len(raw) < _HEADER.size:
    raise ValueError(f"{source}: {len(raw)} bytes after decompression, shorter than the "
                     f"{_HEADER.size}-byte SPZ header")
  magic, version, n, degree, bits, flags, _ = _HEADER.unpack_from(raw)
  if magic != MAGIC:
    raise ValueError(f"{source}: magic 0x{magic:08X}, expected 0x{MAGIC:08X} ('NGSP')")
  if version == 1:
    raise ValueError(f"{source}: SPZ version 1 (float16 positions, never released) is not supported")
  if version not in (2, 3):
    raise ValueError(f"{source}: SPZ version {version}, expected 2 or 3")
  if n > MAX_POINTS:
    raise ValueError(f"{source}: {n} points, more than the {MAX_POINTS} SPZ readers accept")
  if degree > 3:
    raise ValueError(f"{source}: SH degree {degree}, expected 0..3")
  if bits > 23:
    raise ValueError(f"{source}: {bits} fractional bits, expected 0..23")
  if flags & ~_FLAG_ANTIALIASED:
    raise ValueError(f"{source}: header flags 0x{flags:02X} announce extensions; only bit 0 "
                     "(antialiased) is supported")
  return SpzInfo(version, n, degree, bits, bool(flags & _FLAG_ANTIALIASED))


def decode(raw: bytes, source: str = "spz") -> tuple[np.ndarray, SpzInfo]:
  """Uncompressed SPZ payload → (activated Gaussians [N, 38] float32, header info)."""
  info = _parse_header(raw, source)
  n, dim = info.num_points, _sh_dim(info.sh_degree)
  sizes = {"positions": 9 * n, "alphas": n, "colors": 3 * n, "scales": 3 * n,
           "rotations": (4 if info.version == 3 else 3) * n, "sh": 3 * dim * n}
  expected = _HEADER.size + sum(sizes.values())
  if len(raw) != expected:
    raise ValueError(f"{source}: {len(raw) - _HEADER.size} stream bytes for N = {n}, SH degree "
                     f"{info.sh_degree}, version {info.version}; expected {expected - _HEADER.size} "
                     f"({', '.join(f'{k} {v}' for k, v in sizes.items())})")
  body = np.frombuffer(raw, dtype=np.uint8, offset=_HEADER.size)
  streams, start = {}, 0
  for name, size in sizes.items():
    streams[name] = body[start:start + size]
    start += size

  g = np.zeros((n, layout.NUM_CHANNELS), dtype=np.float32)
  g[:, layout.POSITION] = decode_positions(streams["positions"], info.fractional_bits)
  g[:, layout.OPACITY] = streams["alphas"].astype(np.float32) / 255   # sigmoid(logit(q/255))
  g[:, layout.SCALE] = np.exp(streams["scales"].reshape(n, 3).astype(np.float32) / 16 - 10)
  decode_rotations = decode_rotations_v3 if info.version == 3 else decode_rotations_v2
  g[:, layout.ROTATION] = decode_rotations(streams["rotations"])
  g[:, 11:14] = (streams["colors"].reshape(n, 3).astype(np.float32) / 255 - 0.5) / COLOR_SCALE
  # SH bytes are coefficient-major with colour innermost, the internal layout; keep degree ≤ 2.
  sh = (streams["sh"].reshape(n, dim, 3).astype(np.float32) - 128) / 128
  kept = min(dim, layout.NUM_SH_COEFFS - 1)
  g[:, 14:14 + 3 * kept] = sh[:, :kept].reshape(n, 3 * kept)
  if dim > kept:
    logging.warning("%s: SH degree %d; coefficients above degree %d are dropped",
                    source, info.sh_degree, layout.SH_DEGREE)
  return g, info


def read_spz(path: str) -> tuple[np.ndarray, SpzInfo]:
  """Reads a gzip SPZ v2/v3 file → (activated Gaussians [N, 38] float32, header info)."""
  with open(path, "rb") as f:
    data = f.read()
  if data[:4] == b"NGSP":
    raise ValueError(f"path: {path!r} is an SPZ v4 container (uncompressed 'NGSP' header, ZSTD "
                     "streams); only gzip-compressed versions 2 and 3 are supported")
  if data[:2] != b"\x1f\x8b":
    raise ValueError(f"path: {path!r} is not gzip-compressed (first bytes {data[:4]!r}); expected an "
                     "SPZ file starting with 1f 8b")
  try:
    raw = gzip.decompress(data)
  except (OSError, EOFError) as e:
    raise ValueError(f"path: {path!r} holds a corrupt gzip stream: {e}") from e
  return decode(raw, repr(path))
