"""The training configs: every variant builds, the demo recipe's stages chain, and the demo model
fits the shipped-checkpoint budget."""
import jax
import numpy as np
import pytest
from flax import nnx

from configs import flashworld
from configs import train as train_configs
from flashworld_jax import sharding
from flashworld_jax.models.flashworld import _constructors

DEMO_CHECKPOINT_BUDGET_BYTES = 25 * 2 ** 20


@pytest.mark.parametrize("variant", train_configs.VARIANTS)
def test_every_variant_builds_with_its_stage(variant):
  cfg = train_configs.get_config(variant)
  assert cfg.stage == variant.split("_")[0]
  assert cfg.data.batch_size > 0 and cfg.num_steps > 0


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match="unknown variant 'vae_5b'"):
    train_configs.get_config("vae_5b")


def test_demo_stages_chain_and_the_vae_sees_many_clips():
  vae = train_configs.get_config("vae_demo")
  assert vae.init_checkpoint == "" and vae.model.variant == "demo"
  assert vae.data.batch_size == 8 and vae.data.num_input_views + vae.data.num_novel_views == 3
  assert train_configs.get_config("pretrain_demo").init_checkpoint == "runs/demo_vae/checkpoints"
  assert train_configs.get_config("distill_demo").init_checkpoint == "runs/demo_pretrain/checkpoints"


def test_demo_model_fits_the_checkpoint_budget():
  cfg = flashworld.get_config("demo")
  with jax.set_mesh(sharding.single_device_mesh()), sharding.rules():
    sizes = {name: sum(int(np.prod(x.shape)) * x.dtype.itemsize
                       for x in jax.tree.leaves(nnx.state(nnx.eval_shape(make))))
             for name, make in _constructors(cfg, 0).items()}
  assert sum(sizes.values()) <= DEMO_CHECKPOINT_BUDGET_BYTES, sizes
