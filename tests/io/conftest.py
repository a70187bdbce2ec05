"""Fixtures for the request tests: the shared example requests and a small synthetic one."""
import base64
import os

import numpy as np
import pytest

from request_helpers import EXAMPLES_DIR, camera, png_bytes


@pytest.fixture
def examples_dir():
  if not os.path.isdir(EXAMPLES_DIR):
    pytest.skip(f"the shared example requests are not here: {EXAMPLES_DIR} (checkout outside the "
                "FlashWorld workspace)")
  return EXAMPLES_DIR


@pytest.fixture
def small_image():
  """A 40×50 RGB image with distinct pixels."""
  return np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)


@pytest.fixture
def request_dict(small_image):
  """A valid request with an embedded PNG, 3 cameras, 4 views of 32×64."""
  uri = "data:image/png;base64," + base64.b64encode(png_bytes(small_image)).decode()
  return {"image_prompt": uri, "text_prompt": "a test scene", "resolution": [4, 32, 64],
          "image_index": 1, "cameras": [camera(i) for i in range(3)], "seed": 7}
