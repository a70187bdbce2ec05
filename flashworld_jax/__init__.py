"""FlashWorld-JAX: one image and/or a text prompt plus cameras to a 3D Gaussian-splat scene."""

__version__ = "0.1.0"
