"""Image folders with captions and prompt files for distillation's out-of-distribution batches."""
import collections
import json

import pytest

import layout_writers as writers
from flashworld_jax.data.clips import DataError
from flashworld_jax.data.sources import ImageRecord, PromptRecord, read_image_folder, read_prompts


@pytest.fixture
def image_root(tmp_path, scene_clip):
  root = tmp_path / "images"
  for index, name in enumerate(["street.png", "cats/10.jpg", "cats/2.JPEG"]):
    writers.write_png(str(root / name), scene_clip.frames[index])
  (root / "notes.md").write_text("not an image")
  (root / "cats" / "2.txt").write_text("  a cat on a wall\n")
  (root / "street.txt").write_text("a street")
  return root


def test_image_folder_with_caption_files_and_side_file(image_root, tmp_path):
  captions = tmp_path / "captions.jsonl"
  captions.write_text(json.dumps({"clip_id": "street.png", "caption": "a wet street"}) + "\n")
  images, skipped = read_image_folder(str(image_root), captions=str(captions))
  assert images == [
      ImageRecord("cats/2.JPEG", str(image_root / "cats" / "2.JPEG"), "a cat on a wall"),
      ImageRecord("cats/10.jpg", str(image_root / "cats" / "10.jpg"), None),
      ImageRecord("street.png", str(image_root / "street.png"), "a wet street"),
  ]
  assert not skipped


def test_bad_images_and_captions_raise_or_are_skipped(image_root, caplog):
  (image_root / "broken.png").write_bytes(b"\x89PNG but not really")
  (image_root / "cats" / "10.txt").write_text("\n")
  with pytest.raises(DataError, match="broken.png: not a readable image") as error:
    read_image_folder(str(image_root))
  assert error.value.reason == "unreadable image"
  (image_root / "broken.png").unlink()
  with pytest.raises(DataError, match=r"10.txt: caption file is empty \(it captions 10.jpg"):
    read_image_folder(str(image_root))
  (image_root / "broken.png").write_bytes(b"")
  images, skipped = read_image_folder(str(image_root), skip_bad_images=True)
  assert [image.image_id for image in images] == ["cats/2.JPEG", "street.png"]
  assert skipped == collections.Counter({"unreadable image": 1, "empty caption": 1})
  assert "Skipping an image (empty caption)" in caplog.text


def test_empty_image_folder(tmp_path):
  (tmp_path / "notes.txt").write_text("no images here")
  with pytest.raises(DataError, match=r"no images \(.png, .jpg, .jpeg, .webp, .bmp\)"):
    read_image_folder(str(tmp_path))
  with pytest.raises(DataError, match="no such folder"):
    read_image_folder(str(tmp_path / "absent"))


def test_prompts_from_a_file_and_a_folder(tmp_path):
  (tmp_path / "prompts").mkdir()
  (tmp_path / "prompts" / "a.txt").write_text(
      "# scenes\nA misty forest at dawn\n\n  A neon-lit alley  \n")
  (tmp_path / "prompts" / "sub").mkdir()
  (tmp_path / "prompts" / "sub" / "b.txt").write_text("A library\n")
  assert read_prompts(str(tmp_path / "prompts" / "a.txt")) == [
      PromptRecord("a.txt:2", "A misty forest at dawn"),
      PromptRecord("a.txt:4", "A neon-lit alley")]
  assert [p.prompt_id for p in read_prompts(str(tmp_path / "prompts"))] == [
      "a.txt:2", "a.txt:4", "sub/b.txt:1"]


def test_prompt_file_without_prompts(tmp_path):
  (tmp_path / "empty.txt").write_text("# only a comment\n\n")
  with pytest.raises(DataError, match="empty.txt: holds no prompts") as error:
    read_prompts(str(tmp_path / "empty.txt"))
  assert error.value.reason == "empty file"
  (tmp_path / "no_prompts").mkdir()
  with pytest.raises(DataError, match=r"no prompt files \(.txt\)"):
    read_prompts(str(tmp_path / "no_prompts"))

