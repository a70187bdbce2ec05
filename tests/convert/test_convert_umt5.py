"""UMT5 converter: placement of every tensor, tied-embedding handling, error messages, Orbax round trip."""
import jax
import numpy as np
import pytest
from flax import nnx

from configs.flashworld import get_config
from flashworld_jax import checkpoint, sharding
from flashworld_jax.convert import sources
from flashworld_jax.convert.components import convert
from flashworld_jax.convert.sources import ConversionError
from flashworld_jax.convert.umt5 import convert_umt5
from flashworld_jax.models.umt5 import UMT5Encoder


def _cfg():
  return get_config("tiny").text  # vocab 384, d_model 32, 2 layers, 4 heads × 8, d_ff 64


def _hf_arrays(cfg, seed=0, embedding_keys=("shared.weight",)):
  """Random tensors named and shaped as a transformers UMT5EncoderModel state dict."""
  rng = np.random.default_rng(seed)
  inner = cfg.num_heads * cfg.d_kv

  def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)

  arrays = {k: rand(cfg.vocab_size, cfg.d_model) for k in embedding_keys}
  arrays["encoder.final_layer_norm.weight"] = rand(cfg.d_model)
  for i in range(cfg.num_layers):
    p = f"encoder.block.{i}.layer"
    arrays.update({
        f"{p}.0.layer_norm.weight": rand(cfg.d_model),
        f"{p}.0.SelfAttention.q.weight": rand(inner, cfg.d_model),
        f"{p}.0.SelfAttention.k.weight": rand(inner, cfg.d_model),
        f"{p}.0.SelfAttention.v.weight": rand(inner, cfg.d_model),
        f"{p}.0.SelfAttention.o.weight": rand(cfg.d_model, inner),
        f"{p}.0.SelfAttention.relative_attention_bias.weight":
            rand(cfg.relative_attention_num_buckets, cfg.num_heads),
        f"{p}.1.layer_norm.weight": rand(cfg.d_model),
        f"{p}.1.DenseReluDense.wi_0.weight": rand(cfg.d_ff, cfg.d_model),
        f"{p}.1.DenseReluDense.wi_1.weight": rand(cfg.d_ff, cfg.d_model),
        f"{p}.1.DenseReluDense.wo.weight": rand(cfg.d_model, cfg.d_ff),
    })
  return arrays


def _convert(arrays, mesh, cfg=None):
  with jax.set_mesh(mesh), sharding.rules():
    return convert_umt5(cfg or _cfg(), sources.from_arrays(arrays, "test source"))


def _flat(state):
  return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def test_every_tensor_lands_in_place(mesh8):
  arrays = _hf_arrays(_cfg())
  state = _convert(arrays, mesh8)
  flat = _flat(state)
  np.testing.assert_array_equal(flat["token_embedding/embedding"], arrays["shared.weight"])
  np.testing.assert_array_equal(flat["final_norm/scale"], arrays["encoder.final_layer_norm.weight"])
  for i in range(2):
    p = f"encoder.block.{i}.layer"
    np.testing.assert_array_equal(flat["blocks/attention/q/kernel"][i],
                                  arrays[f"{p}.0.SelfAttention.q.weight"].T)
    np.testing.assert_array_equal(flat["blocks/attention/o/kernel"][i],
                                  arrays[f"{p}.0.SelfAttention.o.weight"].T)
    np.testing.assert_array_equal(flat["blocks/attention/relative_attention_bias"][i],
                                  arrays[f"{p}.0.SelfAttention.relative_attention_bias.weight"])
    np.testing.assert_array_equal(flat["blocks/ffn/wo/kernel"][i],
                                  arrays[f"{p}.1.DenseReluDense.wo.weight"].T)
    np.testing.assert_array_equal(flat["blocks/ffn_norm/scale"][i], arrays[f"{p}.1.layer_norm.weight"])
  # Placed with the model's shardings on the 8-device mesh (stacked axis unsharded).
  kernel = nnx.to_flat_state(state)
  shardings = {"/".join(map(str, p)): v.get_value().sharding.spec for p, v in kernel}
  assert shardings["blocks/ffn/wi_0/kernel"] == jax.sharding.PartitionSpec(None, "fsdp", "tensor")


@pytest.mark.parametrize("keys", [("encoder.embed_tokens.weight",),
                                  ("shared.weight", "encoder.embed_tokens.weight")])
def test_embedding_from_encoder_key_with_tied_duplicate_ignored(mesh1, keys):
  arrays = _hf_arrays(_cfg(), embedding_keys=keys)
  flat = _flat(_convert(arrays, mesh1))
  np.testing.assert_array_equal(flat["token_embedding/embedding"],
                                arrays["encoder.embed_tokens.weight"])


def test_missing_tensor_is_named(mesh1):
  arrays = _hf_arrays(_cfg())
  del arrays["encoder.block.1.layer.0.SelfAttention.k.weight"]
  with pytest.raises(ConversionError, match=r"missing source tensor.*block\.1\.layer\.0\.SelfAttention\.k"):
    _convert(arrays, mesh1)


def test_missing_embedding_is_named(mesh1):
  arrays = _hf_arrays(_cfg(), embedding_keys=())
  with pytest.raises(ConversionError, match=r"missing source tensor.*encoder\.embed_tokens\.weight"):
    _convert(arrays, mesh1)


def test_unexpected_tensors_are_named(mesh1):
  arrays = _hf_arrays(_cfg())
  arrays["encoder.block.2.layer.0.SelfAttention.q.weight"] = np.zeros((32, 32), np.float32)
  arrays["lm_head.weight"] = np.zeros((384, 32), np.float32)
  with pytest.raises(ConversionError, match=r"unexpected source tensor.*block\.2.*lm_head"):
    _convert(arrays, mesh1)


def test_shape_mismatch_is_named(mesh1):
  cfg = _cfg()
  arrays = _hf_arrays(cfg)
  cfg.d_ff = 48  # a config that does not match the checkpoint
  expected = r"shape mismatch[\s\S]*blocks/ffn/wi_0/kernel.*got shape \(2, 32, 64\), expected \(2, 32, 48\)"
  with pytest.raises(ConversionError, match=expected):
    _convert(arrays, mesh1, cfg)


def test_converted_state_round_trips_through_orbax(tmp_path, mesh1):
  cfg = _cfg()
  state = _convert(_hf_arrays(cfg, seed=3), mesh1)
  checkpoint.save_components(str(tmp_path / "ckpt"), {"text_encoder": state}, get_config("tiny"))
  with jax.set_mesh(mesh1), sharding.rules():
    encoder = UMT5Encoder(cfg, nnx.Rngs(5))
  checkpoint.restore_component(str(tmp_path / "ckpt"), "text_encoder", encoder)
  restored, expected = _flat(nnx.state(encoder)), _flat(state)
  assert restored.keys() == expected.keys()
  for key in expected:
    np.testing.assert_array_equal(restored[key], expected[key], err_msg=key)


@pytest.fixture
def hf_folder(tmp_path):
  """`_hf_arrays` as model.safetensors beside the config.json transformers writes for `_cfg()`."""
  transformers = pytest.importorskip("transformers")
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  cfg = _cfg()
  path = tmp_path / "text_encoder"
  transformers.UMT5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
      num_layers=cfg.num_layers, num_heads=cfg.num_heads,
      relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance,
      feed_forward_proj="gated-gelu").save_pretrained(path)
  save_file(_hf_arrays(cfg), str(path / "model.safetensors"))
  return path


def _convert_folder(path, mesh, cfg=None, source_config="read"):
  if source_config == "read":
    source_config = sources.source_config(str(path))
  with jax.set_mesh(mesh), sharding.rules():
    return convert_umt5(cfg or _cfg(), sources.read_safetensors(str(path)), source_config)


@pytest.mark.oracle
def test_matching_config_json_converts(hf_folder, mesh1):
  config = sources.source_config(str(hf_folder))
  assert (config["layer_norm_epsilon"], config["feed_forward_proj"]) == (1e-6, "gated-gelu")
  flat = _flat(_convert_folder(hf_folder, mesh1))
  np.testing.assert_array_equal(flat["final_norm/scale"],
                                _hf_arrays(_cfg())["encoder.final_layer_norm.weight"])


@pytest.mark.oracle
@pytest.mark.parametrize("overrides, named", [
    # Bucket edges: no tensor shape depends on the maximum distance.
    (dict(relative_attention_max_distance=64),
     ["relative_attention_max_distance=128 (ours: cfg.text.relative_attention_max_distance=64)"]),
    (dict(relative_attention_num_buckets=16),
     ["relative_attention_num_buckets=32 (ours: cfg.text.relative_attention_num_buckets=16)"]),
    (dict(eps=1e-5), ["layer_norm_epsilon=1e-06 (ours: cfg.text.eps=1e-05)"]),
    (dict(num_heads=8, d_kv=4), ["num_heads=4 (ours: cfg.text.num_heads=8)",
                                 "d_kv=8 (ours: cfg.text.d_kv=4)"]),
])
def test_config_json_disagreements_are_refused_by_name(hf_folder, overrides, named, mesh1):
  cfg = _cfg()
  cfg.update(overrides)
  with pytest.raises(ConversionError, match="config.json of .*text_encoder disagrees") as e:
    _convert_folder(hf_folder, mesh1, cfg)
  for field in named:
    assert field in str(e.value)
  assert str(e.value).count("(ours: ") == len(named)


@pytest.mark.oracle
def test_config_json_activation_is_checked(hf_folder, mesh1):
  config = {**sources.source_config(str(hf_folder)), "feed_forward_proj": "relu"}
  expected = r"feed_forward_proj='relu' \(ours: UMT5Encoder\.feed_forward='gated-gelu'\)"
  with pytest.raises(ConversionError, match=expected):
    _convert_folder(hf_folder, mesh1, source_config=config)


@pytest.mark.oracle
def test_folder_without_config_json_is_checked_by_shapes_only(hf_folder, mesh1):
  (hf_folder / "config.json").unlink()
  assert sources.source_config(str(hf_folder)) is None
  cfg = _cfg()
  cfg.relative_attention_max_distance = 64   # invisible in the shapes
  _convert_folder(hf_folder, mesh1, cfg)
  cfg.d_ff = 48
  with pytest.raises(ConversionError, match="shape mismatch"):
    _convert_folder(hf_folder, mesh1, cfg)


@pytest.mark.oracle
def test_convert_command_refuses_a_disagreeing_config_json_before_writing(hf_folder, tmp_path):
  full = get_config("tiny")
  full.text.relative_attention_max_distance = 64
  with pytest.raises(ConversionError, match=r"relative_attention_max_distance=128 \(ours: "):
    convert(full, str(tmp_path / "ckpt"), text_encoder=str(hf_folder))
  assert not (tmp_path / "ckpt").exists()
