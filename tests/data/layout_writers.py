"""Writes a Clip with in-memory frames in each layout's own conventions, for the reader tests."""
import json
import os
import struct

import numpy as np
from PIL import Image

from flashworld_jax.data import camera_conventions


def write_png(path: str, frame: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(frame).save(path)


def pixel_intrinsics(clip, width: int, height: int) -> np.ndarray:
  """fx, fy, cx, cy [F, 4] in pixels of a width × height frame."""
  return clip.cameras[:, 7:11] * [width, height, width, height]


def write_nerfstudio(scene: str, clip, *, per_frame_intrinsics: bool = True,
                     declared_size: tuple[int, int] | None = None, **top_level) -> str:
  """transforms.json with frames listed in reverse order (the reader sorts by file_path) and PNGs in
  scene/images/. Without `per_frame_intrinsics` frame 0's intrinsics go to the top level."""
  height, width = clip.frames.shape[1:3]
  width, height = declared_size or (width, height)
  pixels = pixel_intrinsics(clip, width, height)
  c2w = camera_conventions.cameras_to_opengl_c2w(clip.cameras)
  meta = {"w": width, "h": height, "camera_model": "OPENCV", **top_level, "frames": []}
  if not per_frame_intrinsics:
    meta.update(zip(("fl_x", "fl_y", "cx", "cy"), pixels[0].tolist()))
  for index in reversed(range(clip.num_frames)):
    file_path = f"images/frame_{index + 1:05d}.png"
    frame = {"file_path": file_path, "transform_matrix": c2w[index].tolist()}
    if per_frame_intrinsics:
      frame.update(zip(("fl_x", "fl_y", "cx", "cy"), pixels[index].tolist()))
    meta["frames"].append(frame)
    write_png(os.path.join(scene, file_path), clip.frames[index])
  path = os.path.join(scene, "transforms.json")
  with open(path, "w") as f:
    json.dump(meta, f, indent=1)
  return path


def timestamps(clip) -> list[int]:
  return [33366 * index + 1_000_000 for index in range(clip.num_frames)]


def write_realestate10k(cameras_root: str, frames_root: str, clip_id: str, clip,
                        extension: str = ".png") -> str:
  """<cameras_root>/<clip_id>.txt and <frames_root>/<clip_id>/<timestamp><extension>."""
  rotation, translation = camera_conventions.cameras_to_opencv_w2c(clip.cameras)
  w2c = np.concatenate([rotation, translation[:, :, None]], axis=2).reshape(-1, 12)
  lines = [f"https://www.youtube.com/watch?v={clip_id.split('/')[-1]}"]
  for stamp, intrinsics, pose in zip(timestamps(clip), clip.cameras[:, 7:11], w2c):
    lines.append(" ".join([str(stamp), *map(repr, intrinsics.tolist()), "0", "0",
                           *map(repr, pose.tolist())]))
  path = os.path.join(cameras_root, *clip_id.split("/")) + ".txt"
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  for stamp, frame in zip(timestamps(clip), clip.frames):
    write_png(os.path.join(frames_root, *clip_id.split("/"), f"{stamp}{extension}"), frame)
  return path


def colmap_names(clip) -> list[str]:
  return [f"{index:03d}.png" for index in range(clip.num_frames)]


def write_colmap(scene: str, clip, *, binary: bool, model: str = "PINHOLE",
                 distortion: tuple[float, ...] = ()) -> str:
  """sparse/0/cameras.* and images.* (one camera per frame, `model` with fx fy cx cy and then
  `distortion`; image ids in reverse name order; 0, 1, 2, ... 2D points per image) and PNGs in
  scene/images/. Returns the model folder."""
  height, width = clip.frames.shape[1:3]
  pixels = pixel_intrinsics(clip, width, height)
  params = [p + list(distortion) for p in pixels.tolist()]
  qvec, tvec = camera_conventions.cameras_to_colmap(clip.cameras)
  names = colmap_names(clip)
  image_ids = [clip.num_frames - index + 10 for index in range(clip.num_frames)]
  points = [np.arange(3.0 * index).reshape(-1, 3) for index in range(clip.num_frames)]
  folder = os.path.join(scene, "sparse", "0")
  os.makedirs(folder, exist_ok=True)
  if binary:
    model_ids = {"PINHOLE": 1, "OPENCV": 4, "OPENCV_FISHEYE": 5}
    with open(os.path.join(folder, "cameras.bin"), "wb") as f:
      f.write(struct.pack("<Q", clip.num_frames))
      for camera_id, p in enumerate(params, 1):
        f.write(struct.pack(f"<iiQQ{len(p)}d", camera_id, model_ids[model], width, height, *p))
    with open(os.path.join(folder, "images.bin"), "wb") as f:
      f.write(struct.pack("<Q", clip.num_frames))
      for index in range(clip.num_frames):
        f.write(struct.pack("<i7di", image_ids[index], *qvec[index], *tvec[index], index + 1))
        f.write(names[index].encode() + b"\0" + struct.pack("<Q", len(points[index])))
        for x, y, point_id in points[index]:
          f.write(struct.pack("<ddq", x, y, int(point_id)))
  else:
    with open(os.path.join(folder, "cameras.txt"), "w") as f:
      f.write("# Camera list with one line of data per camera:\n")
      for camera_id, p in enumerate(params, 1):
        f.write(f"{camera_id} {model} {width} {height} {' '.join(map(repr, p))}\n")
    with open(os.path.join(folder, "images.txt"), "w") as f:
      f.write("# Image list with two lines of data per image:\n#   IMAGE_ID, QW, ..., NAME\n")
      for index in reversed(range(clip.num_frames)):
        pose = " ".join(map(repr, [*qvec[index].tolist(), *tvec[index].tolist()]))
        f.write(f"{image_ids[index]} {pose} {index + 1} {names[index]}\n")
        f.write(" ".join(f"{x!r} {y!r} {int(i)}" for x, y, i in points[index].tolist()) + "\n")
  for name, frame in zip(names, clip.frames):
    write_png(os.path.join(scene, "images", name), frame)
  return folder
