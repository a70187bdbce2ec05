"""Each layout, written from a scene in its own conventions, reads back to the scene's cameras and
frames; each kind of bad data is a DataError naming the file and the problem, or a counted skip."""
import collections
import dataclasses
import json
import logging
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import layout_writers as writers
from flashworld_jax.data import sources
from flashworld_jax.data.clips import DataError, read_frames

CAMERA_TOL = 1e-6  # float64 conversions through text with 17 significant digits


def assert_cameras_close(actual, expected):
  def standardised(cams):
    cams = np.array(cams, np.float64)
    cams[:, :4] *= np.where(cams[:, :1] < 0, -1.0, 1.0)
    return cams
  assert np.abs(standardised(actual) - standardised(expected)).max() <= CAMERA_TOL


def other_scene(clip):
  """A second scene: the first one's frames and cameras in reverse order."""
  return dataclasses.replace(clip, frames=clip.frames[::-1].copy(),
                             cameras=clip.cameras[::-1].copy())


# ---------------------------------------------------------------------------------- round trips


def test_nerfstudio_scene_reads_back(tmp_path, scene_clip):
  writers.write_nerfstudio(str(tmp_path / "room"), scene_clip)
  clips, skipped = sources.read_nerfstudio(str(tmp_path / "room"))
  (clip,) = clips
  assert (clip.clip_id, clip.pose_file, skipped) == (
      "room", str(tmp_path / "room" / "transforms.json"), collections.Counter())
  assert_cameras_close(clip.cameras, scene_clip.cameras)
  np.testing.assert_array_equal(read_frames(clip), scene_clip.frames)


def test_nerfstudio_root_of_scenes_with_top_level_intrinsics(tmp_path, scene_clip):
  writers.write_nerfstudio(str(tmp_path / "1K" / "aaa"), scene_clip, per_frame_intrinsics=False)
  writers.write_nerfstudio(str(tmp_path / "2K" / "bbb"), other_scene(scene_clip))
  clips, _ = sources.read_nerfstudio(str(tmp_path))
  assert [clip.clip_id for clip in clips] == ["1K/aaa", "2K/bbb"]
  shared_intrinsics = scene_clip.cameras.copy()
  shared_intrinsics[:, 7:] = scene_clip.cameras[0, 7:]
  assert_cameras_close(clips[0].cameras, shared_intrinsics)
  assert_cameras_close(clips[1].cameras, other_scene(scene_clip).cameras)


def test_nerfstudio_downscaled_images_dir(tmp_path, scene_clip):
  """images_4-style folders: the normalised intrinsics of the declared size hold at half size."""
  scene = tmp_path / "room"
  writers.write_nerfstudio(str(scene), scene_clip)
  height, width = scene_clip.frames.shape[1:3]
  for name in os.listdir(scene / "images"):
    with Image.open(scene / "images" / name) as image:
      writers.write_png(str(scene / "images_2" / name),
                        np.asarray(image.resize((width // 2, height // 2))))
  shutil.rmtree(scene / "images")
  (clip,), _ = sources.read_nerfstudio(str(scene), images_dir="images_2")
  assert_cameras_close(clip.cameras, scene_clip.cameras)
  assert read_frames(clip).shape == (6, height // 2, width // 2, 3)


def test_nerfstudio_distortion_is_ignored_with_a_note(tmp_path, scene_clip, caplog):
  caplog.set_level(logging.INFO)
  writers.write_nerfstudio(str(tmp_path / "room"), scene_clip, k1=0.01, p2=-0.002)
  (clip,), _ = sources.read_nerfstudio(str(tmp_path / "room"))
  assert_cameras_close(clip.cameras, scene_clip.cameras)
  assert "ignoring lens distortion (non-zero k1, p2)" in caplog.text


def test_realestate10k_reads_back(tmp_path, scene_clip):
  writers.write_realestate10k(str(tmp_path / "cameras"), str(tmp_path / "frames"), "train/abc",
                              scene_clip)
  writers.write_realestate10k(str(tmp_path / "cameras"), str(tmp_path / "frames"), "test/def",
                              other_scene(scene_clip), extension=".jpg")
  clips, _ = sources.read_realestate10k(str(tmp_path / "cameras"),
                                        frames_root=str(tmp_path / "frames"))
  assert [clip.clip_id for clip in clips] == ["test/def", "train/abc"]
  assert_cameras_close(clips[1].cameras, scene_clip.cameras)
  assert_cameras_close(clips[0].cameras, other_scene(scene_clip).cameras)
  np.testing.assert_array_equal(read_frames(clips[1]), scene_clip.frames)
  assert clips[0].frames[0] == str(tmp_path / "frames" / "test" / "def" / "1000000.jpg")


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_colmap_reads_back(tmp_path, scene_clip, binary):
  writers.write_colmap(str(tmp_path / "chair" / "001"), scene_clip, binary=binary)
  (clip,), _ = sources.read_colmap(str(tmp_path))
  assert clip.clip_id == "chair/001"
  assert [os.path.basename(path) for path in clip.frames] == writers.colmap_names(scene_clip)
  assert_cameras_close(clip.cameras, scene_clip.cameras)
  np.testing.assert_array_equal(read_frames(clip), scene_clip.frames)


def test_colmap_model_in_sparse_with_distortion_note(tmp_path, scene_clip, caplog):
  caplog.set_level(logging.INFO)
  scene = tmp_path / "scene"
  model = writers.write_colmap(str(scene), scene_clip, binary=True, model="OPENCV",
                               distortion=(0.01, -0.02, 0.0, 0.001))
  for name in os.listdir(model):
    shutil.move(os.path.join(model, name), scene / "sparse" / name)
  (clip,), _ = sources.read_colmap(str(scene))
  assert clip.clip_id == "scene" and clip.pose_file == str(scene / "sparse" / "images.bin")
  assert_cameras_close(clip.cameras, scene_clip.cameras)
  assert "ignoring the lens distortion of its OPENCV cameras" in caplog.text


# ------------------------------------------------------------------------------------- registry


def test_read_by_name_with_captions(tmp_path, scene_clip):
  writers.write_nerfstudio(str(tmp_path / "data" / "a"), scene_clip)
  writers.write_nerfstudio(str(tmp_path / "data" / "b"), other_scene(scene_clip))
  captions = tmp_path / "captions.jsonl"
  captions.write_text(json.dumps({"clip_id": "a", "caption": "[Static] a room"}) + "\n")
  clips, skipped = sources.read("nerfstudio", str(tmp_path / "data"), captions=str(captions),
                                frames_root=None, images_dir=None, min_frames=6)
  assert [(clip.clip_id, clip.caption) for clip in clips] == [("a", "[Static] a room"), ("b", None)]
  assert not skipped
  clips, _ = sources.read("nerfstudio", str(tmp_path / "data"), captions={"b": "[Static] b"})
  assert [clip.caption for clip in clips] == [None, "[Static] b"]


def test_read_rejects_unknown_layouts_options_and_unmatched_captions(tmp_path, scene_clip):
  writers.write_nerfstudio(str(tmp_path / "data" / "a"), scene_clip)
  with pytest.raises(ValueError, match="unknown dataset layout 'blender'; known: nerfstudio"):
    sources.read("blender", str(tmp_path / "data"))
  with pytest.raises(ValueError, match="frames_root does not apply to the nerfstudio layout"):
    sources.read("nerfstudio", str(tmp_path / "data"), frames_root=str(tmp_path))
  captions = tmp_path / "captions.jsonl"
  captions.write_text(json.dumps({"clip_id": "data/a", "caption": "x"}) + "\n")
  with pytest.raises(DataError, match="none of its 1 clip ids names one of the 1 clips read "
                     r"\(their ids look like 'a'\)"):
    sources.read("nerfstudio", str(tmp_path / "data"), captions=str(captions))


# ------------------------------------------------------------------------------------- bad data
# Each case writes one clip under a root, corrupts one thing, and says which file the error names
# (relative to the root), a fragment of the problem and the reason a skip is counted under.


def edit_json(path, edit):
  with open(path) as f:
    meta = json.load(f)
  edit(meta)
  with open(path, "w") as f:
    json.dump(meta, f)


def edit_lines(path, edit):
  with open(path) as f:
    lines = f.read().splitlines()
  edit(lines)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


def edit_tokens(path, line_index, edit):
  def edit_line(lines):
    tokens = lines[line_index].split()
    edit(tokens)
    lines[line_index] = " ".join(tokens)
  edit_lines(path, edit_line)


def write_bytes(path, data, mode="wb"):
  with open(path, mode) as f:
    f.write(data)


def truncate(path, size):
  with open(path, "r+b") as f:
    f.truncate(size)


def pose_of(meta, number):
  """The transform_matrix of images/frame_<number>.png (frame number - 1 once sorted)."""
  return next(frame["transform_matrix"] for frame in meta["frames"]
              if frame["file_path"] == f"images/frame_{number:05d}.png")


def drop_fl_x(meta):
  next(f for f in meta["frames"] if f["file_path"] == "images/frame_00003.png").pop("fl_x")


def nan_translation(meta):
  pose_of(meta, 2)[1][3] = float("nan")


def zero_rotation_row(meta):
  pose_of(meta, 4)[0] = [0.0, 0.0, 0.0, 1.0]


def mirror_x_axis(meta):
  for row in pose_of(meta, 5):
    row[0] = -row[0]


def drop_last_number(tokens):
  tokens.pop()


def word_for_a_number(tokens):
  tokens[5] = "zero"


def double_quaternion(tokens):
  tokens[1:5] = [repr(2 * float(t)) for t in tokens[1:5]]


def undefined_camera(tokens):
  tokens[8] = "99"


def short_image_line(tokens):
  del tokens[5:]


def nerfstudio_case(corrupt, **write_kwargs):
  def setup(root, clip):
    writers.write_nerfstudio(os.path.join(root, "room"), clip, **write_kwargs)
    corrupt(os.path.join(root, "room"))
    return sources.read_nerfstudio
  return setup


def realestate10k_case(corrupt):
  def setup(root, clip):
    writers.write_realestate10k(os.path.join(root, "cameras"), os.path.join(root, "frames"),
                                "train/abc", clip)
    corrupt(root)
    return lambda path, **kw: sources.read_realestate10k(
        os.path.join(path, "cameras"), frames_root=os.path.join(path, "frames"), **kw)
  return setup


def colmap_case(corrupt, binary, **write_kwargs):
  def setup(root, clip):
    writers.write_colmap(os.path.join(root, "chair"), clip, binary=binary, **write_kwargs)
    corrupt(os.path.join(root, "chair"))
    return sources.read_colmap
  return setup


TRANSFORMS = "{}/transforms.json"
RE10K_FILE = "{}/cameras/train/abc.txt"
# images.txt: two comment lines, then an image line and a points line per image from 005.png down,
# so line index 4 is 004.png's image line (frame 4 once sorted by name).
IMAGES_TXT = "{}/sparse/0/images.txt"
BAD_DATA = {
    "nerfstudio bad JSON": (
        nerfstudio_case(lambda s: write_bytes(TRANSFORMS.format(s), b'{"frames": [')),
        "room/transforms.json", "not valid JSON", "malformed pose file"),
    "nerfstudio missing fl_x": (
        nerfstudio_case(lambda s: edit_json(TRANSFORMS.format(s), drop_fl_x)),
        "room/transforms.json", "frames[3] (images/frame_00003.png): missing 'fl_x' (expected at "
        "the top level or in the frame)", "malformed pose file"),
    "nerfstudio missing transform_matrix": (
        nerfstudio_case(lambda s: edit_json(TRANSFORMS.format(s),
                                            lambda m: m["frames"][0].pop("transform_matrix"))),
        "room/transforms.json", "missing 'transform_matrix'", "malformed pose file"),
    "nerfstudio NaN pose": (
        nerfstudio_case(lambda s: edit_json(TRANSFORMS.format(s), nan_translation)),
        "room/transforms.json", "frame 1 (images/frame_00002.png): the pose has non-finite entries",
        "invalid pose"),
    "nerfstudio singular rotation": (
        nerfstudio_case(lambda s: edit_json(TRANSFORMS.format(s), zero_rotation_row)),
        "room/transforms.json", "frame 3 (images/frame_00004.png): the rotation block",
        "invalid pose"),
    "nerfstudio reflection": (
        nerfstudio_case(lambda s: edit_json(TRANSFORMS.format(s), mirror_x_axis)),
        "room/transforms.json", "det = -1", "invalid pose"),
    "nerfstudio fisheye": (
        nerfstudio_case(lambda s: None, camera_model="OPENCV_FISHEYE"),
        "room/transforms.json", "camera_model 'OPENCV_FISHEYE' is not supported",
        "unsupported camera"),
    "nerfstudio missing frame": (
        nerfstudio_case(lambda s: os.remove(f"{s}/images/frame_00003.png")),
        "room/images/frame_00003.png", "frame file is missing (listed in", "missing frames"),
    "nerfstudio unreadable frame": (
        nerfstudio_case(lambda s: write_bytes(f"{s}/images/frame_00001.png", b"not a png")),
        "room/images/frame_00001.png", "frame file is not a readable image", "unreadable frames"),
    "nerfstudio aspect mismatch": (
        nerfstudio_case(lambda s: None, declared_size=(32, 32)),
        "room/images/frame_00001.png", "frame is 32x24 but", "frame size mismatch"),
    "realestate10k 18 numbers": (
        realestate10k_case(lambda r: edit_tokens(RE10K_FILE.format(r), 2, drop_last_number)),
        "cameras/train/abc.txt", "line 3: ", "malformed pose file"),
    "realestate10k no URL": (
        realestate10k_case(lambda r: edit_lines(RE10K_FILE.format(r), lambda lines: lines.pop(0))),
        "cameras/train/abc.txt", "line 1: expected the video URL", "malformed pose file"),
    "realestate10k word for a number": (
        realestate10k_case(lambda r: edit_tokens(RE10K_FILE.format(r), 4, word_for_a_number)),
        "cameras/train/abc.txt", "line 5: ", "malformed pose file"),
    "realestate10k missing frame folder": (
        realestate10k_case(lambda r: shutil.rmtree(f"{r}/frames/train/abc")),
        "frames/train/abc", "cannot list the frame folder", "missing frames"),
    "realestate10k missing frame": (
        realestate10k_case(lambda r: os.remove(f"{r}/frames/train/abc/1033366.png")),
        "frames/train/abc/1033366.png", "frame for timestamp 1033366", "missing frames"),
    "colmap truncated images.bin": (
        colmap_case(lambda s: truncate(f"{s}/sparse/0/images.bin", 100), binary=True),
        "chair/sparse/0/images.bin", "truncated: image 1", "malformed pose file"),
    "colmap truncated cameras.bin": (
        colmap_case(lambda s: truncate(f"{s}/sparse/0/cameras.bin", 98), binary=True),
        "chair/sparse/0/cameras.bin", "truncated: camera 1 parameters", "malformed pose file"),
    "colmap trailing bytes": (
        colmap_case(lambda s: write_bytes(f"{s}/sparse/0/images.bin", b"\0" * 5, "ab"),
                    binary=True),
        "chair/sparse/0/images.bin", "5 bytes follow the 6 images", "malformed pose file"),
    "colmap fisheye": (
        colmap_case(lambda s: None, binary=True, model="OPENCV_FISHEYE",
                    distortion=(0.1, 0.0, 0.0, 0.0)),
        "chair/sparse/0/cameras.bin", "camera 1 has model OPENCV_FISHEYE, which is not supported",
        "unsupported camera"),
    "colmap non-unit quaternion": (
        colmap_case(lambda s: edit_tokens(IMAGES_TXT.format(s), 4, double_quaternion),
                    binary=False),
        "chair/sparse/0/images.txt", "frame 4 (004.png): quaternion", "invalid pose"),
    "colmap undefined camera": (
        colmap_case(lambda s: edit_tokens(IMAGES_TXT.format(s), 4, undefined_camera), binary=False),
        "chair/sparse/0/images.txt", "uses camera 99, which", "malformed pose file"),
    "colmap short image line": (
        colmap_case(lambda s: edit_tokens(IMAGES_TXT.format(s), 4, short_image_line), binary=False),
        "chair/sparse/0/images.txt", "line 5: expected IMAGE_ID QW", "malformed pose file"),
    "colmap missing frame": (
        colmap_case(lambda s: os.remove(f"{s}/images/002.png"), binary=True),
        "chair/images/002.png", "frame file is missing", "missing frames"),
    "colmap no model files": (
        colmap_case(lambda s: shutil.rmtree(f"{s}/sparse/0"), binary=True),
        "chair/sparse", "no COLMAP model", "malformed pose file"),
}


@pytest.mark.parametrize("case", BAD_DATA, ids=list(BAD_DATA))
def test_bad_data_is_a_data_error(tmp_path, scene_clip, case):
  setup, file, fragment, reason = BAD_DATA[case]
  read = setup(str(tmp_path), scene_clip)
  with pytest.raises(DataError) as error:
    read(str(tmp_path))
  assert error.value.path == str(tmp_path / file)
  assert fragment in error.value.problem
  assert error.value.reason == reason
  assert str(error.value).startswith(str(tmp_path / file) + ": ")


@pytest.mark.parametrize("case", BAD_DATA, ids=list(BAD_DATA))
def test_bad_clip_is_skipped_and_counted(tmp_path, scene_clip, case, caplog):
  setup, file, _, reason = BAD_DATA[case]
  read = setup(str(tmp_path), scene_clip)
  clips, skipped = read(str(tmp_path), skip_bad_clips=True)
  assert (clips, skipped) == ([], collections.Counter({reason: 1}))
  assert f"Skipping a clip ({reason}): {tmp_path / file}" in caplog.text


def test_too_few_frames(tmp_path, scene_clip):
  writers.write_nerfstudio(str(tmp_path / "room"), scene_clip)
  with pytest.raises(DataError, match="clip room has 6 frames, a sample needs at least 8"):
    sources.read_nerfstudio(str(tmp_path / "room"), min_frames=8)


def test_skipping_keeps_the_good_clips(tmp_path, scene_clip):
  for name in ("a", "b", "c", "d"):
    writers.write_nerfstudio(str(tmp_path / name), scene_clip)
  os.remove(tmp_path / "b" / "images" / "frame_00002.png")
  (tmp_path / "c" / "transforms.json").write_text("{")
  edit_json(tmp_path / "d" / "transforms.json", lambda m: m.__setitem__("frames", m["frames"][:3]))
  clips, skipped = sources.read("nerfstudio", str(tmp_path), min_frames=4, skip_bad_clips=True)
  assert [clip.clip_id for clip in clips] == ["a"]
  assert skipped == collections.Counter(
      {"missing frames": 1, "malformed pose file": 1, "too few frames": 1})


def test_empty_roots(tmp_path):
  with pytest.raises(DataError, match="no transforms.json in it or in any folder below it"):
    sources.read_nerfstudio(str(tmp_path))
  with pytest.raises(DataError, match="no sparse/ folder"):
    sources.read_colmap(str(tmp_path))
  with pytest.raises(DataError, match=r"no camera files \(.txt\)"):
    sources.read_realestate10k(str(tmp_path), frames_root=str(tmp_path))
  with pytest.raises(DataError, match="no such folder"):
    sources.read_nerfstudio(str(tmp_path / "absent"))
