"""DiT converter: rule coverage, the plain-Wan extension layout, torch checkpoints, error messages."""
import copy

import jax
import numpy as np
import pytest
from flax import nnx

from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.convert import dit as dit_convert
from flashworld_jax.convert import components, mapping, sources
from flashworld_jax.models import dit

_EXTENSIONS = ("use_raymap", "condition_latent", "feedback_feature", "feedback_latent",
               "feature_head")


def _cfg(extended: bool, scan_layers: bool = True):
  cfg = copy.deepcopy(get_config("tiny").dit)
  cfg.freq_dim, cfg.rope_max_seq_len, cfg.scan_layers = 32, 64, scan_layers
  for name in _EXTENSIONS:
    cfg[name] = extended
  return cfg


def _torch_state_dict(cfg, seed=0) -> dict:
  """numpy copy of a random diffusers WanTransformer3DModel state dict for `cfg`."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(seed)
  model = diffusers.WanTransformer3DModel(**dit_convert.wan_diffusers_config(cfg))
  return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def _convert(cfg, arrays, mesh):
  with jax.set_mesh(mesh), sharding.rules():
    return dit_convert.convert_dit(cfg, sources.from_arrays(arrays, "test source"))


def _flat(state):
  return {k: np.asarray(v) for k, v in mapping.state_paths(state).items()}


@pytest.mark.parametrize("scan_layers", [True, False])
def test_rules_produce_exactly_the_model_leaves(scan_layers, mesh1):
  cfg = _cfg(extended=True, scan_layers=scan_layers)
  with sharding.rules():
    _, abstract = nnx.get_abstract_model(lambda: dit.WanDiT(cfg, rngs=nnx.Rngs(0)), mesh1)
  targets = [rule.target for rule in dit_convert.dit_rules(cfg, cfg.num_layers)]
  assert len(targets) == len(set(targets))
  assert set(targets) == set(mapping.state_paths(abstract))


@pytest.mark.oracle
def test_plain_wan_is_extended_with_the_original_layout(mesh1):
  cfg = _cfg(extended=True)
  arrays = _torch_state_dict(_cfg(extended=False))
  flat = _flat(_convert(cfg, arrays, mesh1))
  c_in, c_out, width, feature = 182, 80, 48, cfg.feature_dim

  # Patch kernel rows are (p_h·2 + p_w)·C_in + c; channels ≥ 48 are the zero extension.
  patch = flat["patch_embedding/kernel"].reshape(2, 2, c_in, width)
  old_patch = arrays["patch_embedding.weight"][:, :, 0]                  # (D, 48, 2, 2)
  np.testing.assert_array_equal(patch[..., :48, :], old_patch.transpose(2, 3, 1, 0))
  assert not patch[..., 48:, :].any()

  # proj_out: new[k·C_out + c] = old[k·48 + c]; new rows = the seeded N(0, 0.02²) block.
  kernel = flat["proj_out/kernel"].T.reshape(4, c_out, width)
  old = arrays["proj_out.weight"].reshape(4, 48, width)
  np.testing.assert_array_equal(kernel[:, :48], old)
  block = kernel[:, 48:]
  np.testing.assert_array_equal(block, dit_convert.feature_head_init(feature, width))
  assert abs(block.std() - 0.02) < 0.002 and abs(block.mean()) < 0.002
  bias = flat["proj_out/bias"].reshape(4, c_out)
  np.testing.assert_array_equal(bias[:, :48], arrays["proj_out.bias"].reshape(4, 48))
  assert not bias[:, 48:].any()
  # Everything else is copied (stacked for the scanned blocks).
  np.testing.assert_array_equal(flat["blocks/attn1/to_q/kernel"][1],
                                arrays["blocks.1.attn1.to_q.weight"].T)


@pytest.mark.oracle
def test_torch_checkpoint_transformer_subset_converts(tmp_path, mesh1):
  """The released `model.ckpt` layout: a torch dict with a `transformer` state dict."""
  torch = pytest.importorskip("torch")
  cfg = _cfg(extended=True, scan_layers=False)
  arrays = _torch_state_dict(cfg, seed=1)
  path = tmp_path / "model.ckpt"
  torch.save({"transformer": {k: torch.from_numpy(v) for k, v in arrays.items()},
              "recon_decoder": {"w": torch.zeros(1)}}, path)
  source = sources.read_torch_checkpoint(str(path)).subset("transformer")
  with jax.set_mesh(mesh1), sharding.rules():
    flat = _flat(dit_convert.convert_dit(cfg, source))
  np.testing.assert_array_equal(flat["blocks/1/ffn/linear_1/kernel"],
                                arrays["blocks.1.ffn.net.0.proj.weight"].T)
  np.testing.assert_array_equal(flat["blocks/0/scale_shift_table"],
                                arrays["blocks.0.scale_shift_table"][0])


@pytest.mark.oracle
def test_errors_name_the_offending_keys_and_shapes(mesh1):
  cfg = _cfg(extended=False)
  arrays = _torch_state_dict(cfg)

  missing = dict(arrays)
  del missing["blocks.1.attn2.to_k.bias"]
  with pytest.raises(sources.ConversionError, match=r"missing source.*blocks\.1\.attn2\.to_k\.bias"):
    _convert(cfg, missing, mesh1)

  unexpected = {**arrays, "blocks.0.attn1.norm_added_q.weight": np.ones(48, np.float32)}
  with pytest.raises(sources.ConversionError, match=r"unexpected source.*norm_added_q"):
    _convert(cfg, unexpected, mesh1)

  misshaped = {**arrays, "blocks.0.ffn.net.2.weight": np.ones((48, 65), np.float32)}
  with pytest.raises(sources.ConversionError,
                     match=r"blocks/ffn/linear_2/kernel.*blocks\.0\.ffn\.net\.2\.weight \(48, 65\)"):
    _convert(cfg, misshaped, mesh1)
  both_layers = {**misshaped, "blocks.1.ffn.net.2.weight": np.ones((48, 65), np.float32)}
  with pytest.raises(sources.ConversionError,
                     match=r"shape mismatch:\n.*blocks/ffn/linear_2/kernel.*got shape \(2, 65, 48\), "
                           r"expected \(2, 64, 48\)"):
    _convert(cfg, both_layers, mesh1)
  top = {**arrays, "condition_embedder.time_proj.weight": np.ones((288, 47), np.float32)}
  with pytest.raises(sources.ConversionError, match=r"condition_embedder/time_proj/kernel.*\(47, 288\)"):
    _convert(cfg, top, mesh1)

  wrong_channels = {**arrays, "patch_embedding.weight": np.ones((48, 100, 1, 2, 2), np.float32)}
  with pytest.raises(sources.ConversionError,
                     match=r"\(48, 100, 1, 2, 2\).*100 in / 48 out.*expects 48 / 48"):
    _convert(cfg, wrong_channels, mesh1)

  no_proj = {k: v for k, v in arrays.items() if not k.startswith("proj_out")}
  with pytest.raises(sources.ConversionError, match="no 'proj_out.weight'"):
    _convert(cfg, no_proj, mesh1)


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
  """A random plain tiny diffusers transformer saved with save_pretrained (config.json included)."""
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  torch.manual_seed(0)
  model = diffusers.WanTransformer3DModel(**dit_convert.wan_diffusers_config(_cfg(extended=False)))
  path = tmp_path_factory.mktemp("wan") / "transformer"
  model.save_pretrained(path)
  return path


def _convert_folder(cfg, path, mesh, source_config="read"):
  if source_config == "read":
    source_config = sources.source_config(str(path))
  with jax.set_mesh(mesh), sharding.rules():
    return dit_convert.convert_dit(cfg, sources.read_safetensors(str(path)), source_config)


@pytest.mark.oracle
@pytest.mark.parametrize("extended", [False, True])
def test_matching_config_json_converts(wan_folder, extended, mesh1):
  """A plain Wan2.2 config (48 in / 48 out) matches both the plain and the extended cfg."""
  config = sources.source_config(str(wan_folder))
  assert (config["in_channels"], config["num_attention_heads"], config["eps"]) == (48, 2, 1e-6)
  flat = _flat(_convert_folder(_cfg(extended), wan_folder, mesh1))
  expected = sources.read_safetensors(str(wan_folder))["blocks.1.attn1.to_q.weight"].T
  np.testing.assert_array_equal(flat["blocks/attn1/to_q/kernel"][1], expected)


@pytest.mark.oracle
@pytest.mark.parametrize("overrides, named", [
    # Same width (48): every tensor has the right shape, only config.json can tell.
    (dict(num_heads=4, head_dim=12), ["num_attention_heads=2 (ours: cfg.dit.num_heads=4)",
                                      "attention_head_dim=24 (ours: cfg.dit.head_dim=12)"]),
    (dict(eps=1e-5), ["eps=1e-06 (ours: cfg.dit.eps=1e-05)"]),
    (dict(rope_max_seq_len=128, eps=1e-5, freq_dim=64),
     ["freq_dim=32 (ours: cfg.dit.freq_dim=64)", "eps=1e-06 (ours: cfg.dit.eps=1e-05)",
      "rope_max_seq_len=64 (ours: cfg.dit.rope_max_seq_len=128)"]),
])
def test_config_json_disagreements_are_refused_by_name(wan_folder, overrides, named, mesh1):
  cfg = _cfg(extended=False)
  cfg.update(overrides)
  with pytest.raises(sources.ConversionError, match="config.json of .*transformer disagrees") as e:
    _convert_folder(cfg, wan_folder, mesh1)
  for field in named:
    assert field in str(e.value)
  assert str(e.value).count("(ours: ") == len(named)


@pytest.mark.oracle
def test_config_json_channels_and_fixed_fields_are_checked(wan_folder, mesh1):
  config = sources.source_config(str(wan_folder))
  wrong = {**config, "in_channels": 100, "qk_norm": "rms_norm"}
  with pytest.raises(sources.ConversionError) as e:
    _convert_folder(_cfg(extended=True), wan_folder, mesh1, wrong)
  assert "in_channels=100 (ours: cfg.dit.latent_channels=48)" in str(e.value)
  assert "qk_norm='rms_norm' (ours: WanDiT.qk_norm='rms_norm_across_heads')" in str(e.value)
  flashworld = {**config, "in_channels": 182, "out_channels": 80}   # a FlashWorld-layout config
  with pytest.raises(sources.ConversionError,
                     match=r"in_channels=182 \(ours: cfg\.dit\.latent_channels=48\), "
                           r"out_channels=80 \(ours: cfg\.dit\.latent_channels=48\)"):
    _convert_folder(_cfg(extended=True), wan_folder, mesh1, flashworld)


@pytest.mark.oracle
def test_folder_without_config_json_is_checked_by_shapes_only(wan_folder, tmp_path, mesh1):
  """As the released model.ckpt: shapes are checked, a same-width head split is not visible."""
  bare = tmp_path / "bare"
  bare.mkdir()
  for f in wan_folder.glob("*.safetensors"):
    (bare / f.name).write_bytes(f.read_bytes())
  assert sources.source_config(str(bare)) is None
  cfg = _cfg(extended=False)
  cfg.num_heads, cfg.head_dim = 4, 12
  _convert_folder(cfg, bare, mesh1)
  cfg.ffn_dim = 32
  with pytest.raises(sources.ConversionError, match="shape mismatch"):
    _convert_folder(cfg, bare, mesh1)


@pytest.mark.oracle
def test_convert_command_refuses_a_disagreeing_config_json_before_writing(wan_folder, tmp_path):
  full = get_config("tiny")
  full.dit = _cfg(extended=False)
  full.dit.eps = 1e-5
  with pytest.raises(sources.ConversionError, match=r"eps=1e-06 \(ours: cfg\.dit\.eps=1e-05\)"):
    components.convert(full, str(tmp_path / "ckpt"), wan_transformer=str(wan_folder))
  assert not (tmp_path / "ckpt").exists()
