"""Helpers shared by the request tests (fixtures live in conftest.py)."""
import io
import os

import numpy as np
from PIL import Image

# The shared example requests sit next to the repository: <repo>/../shared/examples.
EXAMPLES_DIR = os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "examples"))
EXAMPLE_NAMES = ("paved-plaza", "sound-room")


def png_bytes(image: np.ndarray, mode: str = "RGB") -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image, mode).save(buffer, format="PNG")
  return buffer.getvalue()


def camera(i: float = 0.0) -> dict:
  """A valid JSON camera; i moves and turns it a little."""
  return {"quaternion": [1.0, 0.0, 0.1 * i, 0.0], "position": [0.1 * i, 0.0, -0.2 * i],
          "fx": 60.0, "fy": 60.0, "cx": 32.0, "cy": 16.0}
