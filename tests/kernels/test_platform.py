"""Kernel selection follows the platform being compiled for, so that an ahead-of-time compile of a
TPU topology on this CPU host gets the TPU kernels."""
import jax

from kernels import platform
from kernels.attention import api as attention_api
from kernels.gaussian_raster import api as raster_api


def test_auto_kernels_follow_the_target_platform_and_the_host_after():
  host = jax.default_backend()
  assert platform.current() == host == "cpu"
  assert attention_api._candidates("auto") == ("xla",)
  assert raster_api._candidates("auto") == ("xla",)
  with platform.compiling_for("tpu"):
    assert platform.current() == "tpu"
    assert attention_api._candidates("auto") == ("splash", "xla")
    assert raster_api._candidates("auto") == ("pallas_tpu", "xla")
    with platform.compiling_for("gpu"):
      assert attention_api._candidates("auto") == ("cudnn", "xla")
    assert platform.current() == "tpu"
  assert platform.current() == host
  assert attention_api._candidates("auto") == ("xla",)
