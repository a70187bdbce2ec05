"""UMT5 encoder: parity with transformers' UMT5EncoderModel, bucketing, encode_text, dtypes."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.convert import sources
from flashworld_jax.convert.umt5 import convert_umt5
from flashworld_jax.models import tokenizer as tokenizer_lib
from flashworld_jax.models import umt5

# The tiny oracle config of jax.md §9.
TINY = dict(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=128)


def _text_cfg(dtype="float32", **overrides):
  cfg = get_config("tiny").text
  # "highest": full fp32 on GPUs (TF32) and TPUs too.
  cfg.update({**TINY, "matmul_precision": "highest", **overrides})
  cfg.dtype = dtype
  return cfg


def _random_encoder(mesh, dtype="float32"):
  with jax.set_mesh(mesh), sharding.rules():
    return umt5.UMT5Encoder(_text_cfg(dtype), nnx.Rngs(0))


@pytest.fixture(scope="module")
def hf_encoder(tmp_path_factory):
  """A random transformers UMT5EncoderModel saved as safetensors; all weights randomised."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = transformers.UMT5Config(
      **TINY, dropout_rate=0.0, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
      use_cache=False, tie_word_embeddings=False)
  torch.manual_seed(0)
  model = transformers.UMT5EncoderModel(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      # Norm scales around 1, other weights at T5-like scales, so that every term matters.
      p.copy_(1.0 + 0.2 * torch.randn_like(p) if "layer_norm" in name
              else torch.randn_like(p) * (1.0 if "shared" in name or "relative" in name else 0.2))
  path = tmp_path_factory.mktemp("umt5") / "text_encoder"
  model.save_pretrained(path)
  return model, str(path)


def _padded_batch(lengths, length, vocab, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(3, vocab, size=(len(lengths), length)).astype(np.int32)
  mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  return np.where(mask > 0, ids, 0).astype(np.int32), mask


@pytest.mark.oracle
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (16, 40), (64, 256)])
def test_relative_position_buckets_match_transformers(num_buckets, max_distance):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = transformers.UMT5Config(relative_attention_num_buckets=num_buckets,
                                   relative_attention_max_distance=max_distance, is_decoder=False)
  attention = transformers.models.umt5.modeling_umt5.UMT5Attention(config)
  length = 700  # relative positions −699 … 699 cover every bucket edge incl. 2^k distances
  rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
  expected = attention._relative_position_bucket(rel).numpy()
  ours = umt5.relative_position_buckets(length, length, num_buckets, max_distance)
  np.testing.assert_array_equal(ours, expected)


@pytest.mark.oracle
@pytest.mark.parametrize("mesh_name", ["mesh1", "mesh8"])
def test_hidden_states_match_transformers(hf_encoder, mesh_name, request):
  torch = pytest.importorskip("torch")
  model, path = hf_encoder
  mesh = request.getfixturevalue(mesh_name)
  ids, mask = _padded_batch([24, 7, 1, 16], 24, TINY["vocab_size"])
  with torch.no_grad():
    expected = model(torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
                     ).last_hidden_state.numpy()
  cfg = _text_cfg()
  with jax.set_mesh(mesh), sharding.rules():
    encoder = umt5.UMT5Encoder(cfg, nnx.Rngs(1))
    nnx.update(encoder, convert_umt5(cfg, sources.read_safetensors(path)))
    ours = nnx.jit(lambda m, i, a: m(i, a))(encoder, jnp.asarray(ids), jnp.asarray(mask))
  ours = np.asarray(ours)
  assert ours.dtype == np.float32 and ours.shape == expected.shape
  # Every position is compared, padding queries included (they attend to the real tokens).
  rel_err = np.abs(ours - expected).max() / np.abs(expected).max()
  print(f"max relative error vs transformers ({mesh_name}): {rel_err:.2e}")
  assert rel_err <= 1e-5, rel_err


@pytest.mark.oracle
def test_converted_encoder_ignores_padding_content(hf_encoder, mesh1):
  """Changing the ids under the padding mask must not change the real tokens' outputs."""
  _, path = hf_encoder
  cfg = _text_cfg()
  ids, mask = _padded_batch([5, 12], 12, TINY["vocab_size"])
  other = np.where(mask > 0, ids, 7).astype(np.int32)
  with jax.set_mesh(mesh1), sharding.rules():
    encoder = umt5.UMT5Encoder(cfg, nnx.Rngs(1))
    nnx.update(encoder, convert_umt5(cfg, sources.read_safetensors(path)))
    run = nnx.jit(lambda m, i, a: m(i, a))
    a, b = np.asarray(run(encoder, ids, mask)), np.asarray(run(encoder, other, mask))
  np.testing.assert_allclose(a[mask > 0], b[mask > 0], rtol=0, atol=1e-6)
  assert np.abs(a[mask == 0] - b[mask == 0]).max() > 1e-3  # the test can fail: padding differs


def test_bf16_compute_close_to_fp32(mesh1):
  """Default bf16 matmuls (fp32 norms and residual) stay within bf16 accuracy of fp32."""
  ids, mask = _padded_batch([16, 9], 16, TINY["vocab_size"])
  outputs = {}
  for dtype in ("float32", "bfloat16"):
    encoder = _random_encoder(mesh1, dtype)
    with jax.set_mesh(mesh1):
      outputs[dtype] = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(encoder, ids, mask))
  assert outputs["bfloat16"].dtype == np.float32
  rel_err = np.abs(outputs["bfloat16"] - outputs["float32"]).max() / np.abs(outputs["float32"]).max()
  print(f"bf16 vs fp32 max relative error: {rel_err:.2e}")
  assert 0 < rel_err < 5e-2, rel_err


@pytest.mark.parametrize("name", ["default", "highest"])
def test_matmul_precision_reaches_every_matmul(name, mesh1):
  """Dense layers and the attention einsums (which take no precision argument) follow it."""
  ids, mask = _padded_batch([8], 8, TINY["vocab_size"])
  with jax.set_mesh(mesh1), sharding.rules():
    graphdef, state = nnx.split(umt5.UMT5Encoder(_text_cfg(matmul_precision=name), nnx.Rngs(0)))
    forward = jax.jit(lambda s, i, a: nnx.merge(graphdef, s)(i, a))
    hlo = forward.lower(state, ids, mask).as_text()
  dots = re.findall(r"stablehlo\.dot_general .*", hlo)
  highest = [d for d in dots if "precision = [HIGHEST, HIGHEST]" in d]
  assert len(dots) >= 9  # per (scanned) block: q, k, v, o, 2 attention einsums, wi_0, wi_1, wo
  assert len(highest) == (len(dots) if name == "highest" else 0)


def test_unknown_matmul_precision_is_refused():
  with pytest.raises(ValueError, match=r"text\.matmul_precision='tf32': expected one of"):
    umt5.UMT5Encoder(_text_cfg(matmul_precision="tf32"), nnx.Rngs(0))


def test_encode_text_zeroes_past_length_and_reports_lengths(mesh1):
  encoder = _random_encoder(mesh1)
  tok = tokenizer_lib.ByteTokenizer()
  prompts = ["a red chair", "", "x" * 40]
  max_length = 16
  with jax.set_mesh(mesh1):
    embeddings, lengths = umt5.encode_text(encoder, tok, prompts, max_length=max_length)
    ids, mask = tok.encode_batch(prompts, max_length)
    full = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(encoder, ids, mask))
    graphdef, state = nnx.split(encoder)  # the pipeline's functional form
    functional = jax.jit(lambda s, i, a: umt5.text_embeddings(nnx.merge(graphdef, s), i, a))
    functional = np.asarray(functional(state, ids, mask))
  embeddings, lengths = np.asarray(embeddings), np.asarray(lengths)
  assert embeddings.shape == (3, max_length, 32) and embeddings.dtype == np.float32
  # Real tokens incl. EOS: 11 bytes + EOS; empty prompt = EOS only; truncated prompt keeps EOS.
  np.testing.assert_array_equal(lengths, [12, 1, max_length])
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(embeddings[b, :n], full[b, :n], rtol=1e-6, atol=1e-6)
    assert not np.any(embeddings[b, n:])
    assert np.all(np.abs(embeddings[b, :n]).sum(-1) > 0)
  np.testing.assert_allclose(functional, embeddings, rtol=1e-6, atol=1e-6)


def test_encode_text_rejects_a_bare_string(mesh1):
  encoder = _random_encoder(mesh1)
  with pytest.raises(ValueError, match="sequence of strings"):
    umt5.encode_text(encoder, tokenizer_lib.ByteTokenizer(), "a chair")


def test_encoder_rejects_mismatched_inputs(mesh1):
  encoder = _random_encoder(mesh1)
  with pytest.raises(ValueError, match="attention_mask"):
    encoder(jnp.zeros((2, 8), jnp.int32), jnp.ones((2, 7), jnp.int32))
