"""Test set-up: 8 fake CPU devices, before JAX initialises.

No persistent compilation cache: on a fresh clone it never hits, and jax 0.10's cache write
segfaulted the CPU suite (in `put_executable_and_time`) on large training executables.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402  (must come after the environment set-up above)
import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_executables():
  """Frees each module's compiled programs when it ends. The suite compiles hundreds of programs in
  one process, and late in the run XLA aborted inside a compile (no message, in a test that passes
  alone); released executables keep the process as small as a short run's."""
  yield
  from flashworld_jax import executables
  executables.release()
  jax.clear_caches()


# The costliest files (seconds of their tests in one worker, in one quiet `make test` here), in that
# order before all others: pytest-xdist hands out whole files in collection order (`--dist loadfile
# --no-loadscope-reorder`), so the long ones start first and short ones fill the end instead of one
# worker finishing a long file alone.
COSTLIEST_FIRST = (
    "tests/train/test_loop.py",                       # 381 s
    "tests/train/test_distill.py",                    # 347 s
    "tests/train/test_pretrain.py",                   # 159 s
    "tests/train/test_autoencoder.py",                # 149 s
    "tests/sampling/test_sampler.py",                 # 183 s
    "tests/test_generate.py",                         # 160 s
    "tests/render/test_raster_compositor.py",         # 143 s
    "tests/models/test_gaussian_decoder.py",          # 132 s
    "tests/kernels/test_gaussian_raster_pallas.py",   # 106 s
    "tests/models/test_dit.py",                       # 99 s
    "tests/render/test_raster_end_to_end.py",         # 95 s
    "tests/test_evaluate.py",                         # 77 s
    "tests/models/test_gaussian_decoder_render.py",   # 77 s
    "tests/models/test_vae.py",                       # 73 s
)


def _schedule_rank(item) -> int:
  path = os.path.relpath(str(item.path), os.path.dirname(os.path.dirname(__file__)))
  return COSTLIEST_FIRST.index(path) if path in COSTLIEST_FIRST else len(COSTLIEST_FIRST)


def pytest_collection_modifyitems(config, items):
  items.sort(key=_schedule_rank)    # stable: every file keeps its own order
  backend = jax.default_backend()
  for item in items:
    for platform in ("gpu", "tpu"):
      if platform in item.keywords and backend != platform:
        item.add_marker(pytest.mark.skip(reason=f"needs a {platform} backend, have {backend}"))


@pytest.fixture
def mesh8():
  """The fake 8-device CPU mesh, (data, fsdp, tensor, sequence) = (1, 2, 4, 1)."""
  from flashworld_jax import sharding
  return sharding.make_mesh(data=1, fsdp=2, tensor=4, sequence=1)


@pytest.fixture
def mesh1():
  """A one-device mesh: annotated NNX modules need a mesh to be created (eager sharding)."""
  from flashworld_jax import sharding
  return sharding.single_device_mesh()
