"""The convert command end to end: released-format files → one Orbax checkpoint → a loaded model."""
import json
import subprocess
import sys
import pathlib

import numpy as np
import pytest

from configs.flashworld import get_config
from flashworld_jax import sharding
from flashworld_jax.convert import dit as dit_convert
from flashworld_jax.convert.components import convert
from flashworld_jax.models.flashworld import build_flashworld

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "models"))
sys.path.insert(0, str(REPO / "tests" / "convert"))
from test_convert_umt5 import _hf_arrays  # noqa: E402
from test_vae import make_diffusers_vae, tiny_vae_config  # noqa: E402


@pytest.mark.oracle
def test_wan_sources_convert_into_a_checkpoint_every_entry_point_loads(tmp_path):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  cfg = tiny_vae_config()
  plain = get_config("tiny").dit
  for name in ("use_raymap", "condition_latent", "feedback_feature", "feedback_latent",
               "feature_head"):
    plain[name] = False
  torch.manual_seed(0)
  wan = diffusers.WanTransformer3DModel(**dit_convert.wan_diffusers_config(plain))
  wan.save_pretrained(tmp_path / "transformer")
  make_diffusers_vae(tmp_path / "vae", seed=1)
  text_dir = tmp_path / "text_encoder"
  text_dir.mkdir()
  text_arrays = _hf_arrays(cfg.text)
  save_file(text_arrays, str(text_dir / "model.safetensors"))

  names = convert(cfg, str(tmp_path / "ckpt"), wan_transformer=str(tmp_path / "transformer"),
                  wan_vae=str(tmp_path / "vae"), text_encoder=str(text_dir),
                  init_gaussian_decoder_from_vae=True)
  assert names == ["dit", "gaussian_decoder", "text_encoder", "vae"]

  model, random = build_flashworld(cfg, sharding.single_device_mesh(), str(tmp_path / "ckpt"))
  assert random == ()
  # Spot checks that the loaded values are the source tensors (layouts are tested per converter).
  np.testing.assert_array_equal(
      np.asarray(model.text_encoder.final_norm.scale[...]),
      text_arrays["encoder.final_layer_norm.weight"])
  torch_time = wan.condition_embedder.time_embedder.linear_1.weight.detach().numpy()
  np.testing.assert_array_equal(
      np.asarray(model.dit.condition_embedder.time_embedder.linear_1.kernel[...]), torch_time.T)
  with open(tmp_path / "vae" / "config.json") as f:
    assert json.load(f)["z_dim"] == model.vae.latents_mean[...].shape[0]


def test_cli_reports_missing_sources_without_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "flashworld_jax.convert", "--config=configs/flashworld.py:tiny",
       f"--output={tmp_path / 'ckpt'}", f"--wan_vae={tmp_path / 'nowhere'}"],
      capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
  assert result.returncode == 1
  assert "nowhere" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "ckpt").exists()
