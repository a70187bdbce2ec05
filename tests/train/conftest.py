"""A tiny synthetic dataset and a pre-training config sized for tests (32×64 frames, 4 + 2 views)."""
import pytest

from configs import train as train_configs
from flashworld_jax.data import records, synthetic

HEIGHT, WIDTH, FRAMES = 32, 64, 8


def build_synthetic(path: str, split: str, num_scenes: int) -> str:
  renderer = synthetic.SceneRenderer(HEIGHT, WIDTH)

  def make_examples(i):
    example = synthetic.make_scene_example(split, i, FRAMES, renderer, max_objects=2)
    return [{**example, "source": "synthetic", "has_caption": True}]

  records.build_split(path, "synthetic", split, num_scenes, 4, make_examples, records.SYNTHETIC,
                      {"scenes": num_scenes}, "test data")
  return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("train_data")
  return (build_synthetic(str(root / "train"), "train", 6),
          build_synthetic(str(root / "validation"), "validation", 1))


def tiny_train_config(train_dir: str, eval_dir: str = ""):
  cfg = train_configs.get_config("pretrain_tiny")
  cfg.data.train_dir, cfg.data.eval_dir = train_dir, eval_dir
  cfg.data.height, cfg.data.width = HEIGHT, WIDTH
  cfg.data.num_input_views, cfg.data.num_novel_views = 4, 2
  cfg.data.batch_size = 2
  cfg.data.num_threads = 1
  cfg.model.text.max_length = 16
  cfg.num_steps = 4
  cfg.log_every = 1
  cfg.checkpoint_every = 2
  cfg.eval_every = 0 if not eval_dir else 4
  cfg.eval.num_scenes = 1
  cfg.optimizer.warmup_steps = 1
  cfg.model.mesh.data = 1          # one device; the sharded steps are tested on the 8-device mesh
  return cfg


@pytest.fixture(scope="session")
def make_tiny_config(tiny_data):
  """A fresh tiny pre-training config on the tiny data (usable from module-scoped fixtures)."""
  return lambda: tiny_train_config(*tiny_data)


@pytest.fixture
def tiny_config(make_tiny_config):
  return make_tiny_config()
