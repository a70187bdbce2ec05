"""Atomic directories: complete or absent, and an existing one replaced only when asked."""
import pytest

from flashworld_jax.io import atomic


def _write_scene(path, text, replace=True):
  with atomic.atomic_directory(str(path), replace=replace) as tmp:
    with open(f"{tmp}/scene.txt", "w") as f:
      f.write(text)


def test_replaces_an_existing_folder_only_when_asked(tmp_path):
  scene = tmp_path / "scene"
  _write_scene(scene, "first")
  with pytest.raises(FileExistsError, match="scene: already exists, not replaced"):
    _write_scene(scene, "second", replace=False)
  assert (scene / "scene.txt").read_text() == "first"
  _write_scene(scene, "third")
  assert (scene / "scene.txt").read_text() == "third"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # no temporary left


def test_a_failing_body_leaves_nothing(tmp_path):
  with pytest.raises(OSError, match="disk full"):
    with atomic.atomic_directory(str(tmp_path / "scene")):
      raise OSError("disk full")
  assert list(tmp_path.iterdir()) == []
