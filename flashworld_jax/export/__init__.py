"""Scene exports in the request's world frame: 3DGS PLY, SPZ, MP4."""
from flashworld_jax.export.ply import read_ply, write_ply
from flashworld_jax.export.spz import SpzInfo, read_spz, write_spz
from flashworld_jax.export.video import count_frames, frames_from_renders, write_mp4
from flashworld_jax.export.world_frame import gaussians_to_world, to_opencv_world, transform_gaussians

__all__ = [
    "SpzInfo", "count_frames", "frames_from_renders", "gaussians_to_world", "read_ply", "read_spz",
    "to_opencv_world", "transform_gaussians", "write_mp4", "write_ply", "write_spz",
]
