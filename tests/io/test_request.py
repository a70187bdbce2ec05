"""Loading, validating and saving generation requests (formats.md §1)."""
import base64
import copy
import json
import os
import re

import numpy as np
import pytest

from flashworld_jax.io import images
from flashworld_jax.io.request import Camera, RequestError, load_request, request_to_dict, save_request
from request_helpers import camera, png_bytes


@pytest.mark.parametrize("name,image_index,prompt", [
    ("paved-plaza", 7, "A paved area with benches, trees, and a railing."),
    ("sound-room", 9, "A room with sound equipment."),
])
def test_examples_load_unchanged(examples_dir, name, image_index, prompt):
  path = os.path.join(examples_dir, name + ".json")
  req = load_request(path)
  with open(path) as f:
    raw = json.load(f)
  assert req.name == name and req.text_prompt == prompt and req.image_index == image_index
  assert (req.num_views, req.height, req.width) == (24, 480, 704) and req.seed is None
  assert req.image.dtype == np.uint8 and req.image.shape == (480, 704, 3)
  assert req.image_source == raw["image_prompt"]
  assert len(req.cameras) == 24
  first = raw["cameras"][0]
  assert req.cameras[0] == Camera(tuple(first["quaternion"]), tuple(first["position"]), first["fx"],
                                  first["fy"], first["cx"], first["cy"])
  # Written back, the request is the original JSON.
  assert request_to_dict(req) == {**raw}


def test_save_load_round_trip(tmp_path, request_dict):
  req = load_request(request_dict, name="scene")
  save_request(req, tmp_path / "out" / "scene.json")
  again = load_request(tmp_path / "out" / "scene.json")
  assert request_to_dict(again) == request_dict and again.name == "scene"
  np.testing.assert_array_equal(again.image, req.image)
  assert [p.name for p in (tmp_path / "out").iterdir()] == ["scene.json"]  # no temporary left


def test_text_only_round_trip(tmp_path, request_dict):
  data = {**request_dict, "image_prompt": None}
  req = load_request(data)
  assert req.image is None and req.image_source is None and req.name == "request"
  save_request(req, tmp_path / "t.json")
  assert request_to_dict(load_request(tmp_path / "t.json")) == data


def test_image_sources(tmp_path, small_image):
  png = png_bytes(small_image)
  (tmp_path / "pics").mkdir()
  (tmp_path / "pics" / "view.png").write_bytes(png)
  rgba = np.concatenate([small_image, np.full((40, 50, 1), 9, np.uint8)], axis=-1)
  (tmp_path / "rgba.png").write_bytes(png_bytes(rgba, "RGBA"))
  b64 = base64.b64encode(png).decode()
  sources = {
      "relative": "pics/view.png",
      "absolute": str(tmp_path / "pics" / "view.png"),
      "data_uri": "data:image/png;base64," + b64,
      "bare_base64": b64,
      "rgba": "rgba.png",
  }
  for kind, source in sources.items():
    data = {"image_prompt": source, "resolution": [2, 32, 32], "cameras": [camera()]}
    (tmp_path / f"{kind}.json").write_text(json.dumps(data))
    req = load_request(tmp_path / f"{kind}.json")
    np.testing.assert_array_equal(req.image, small_image, err_msg=kind)
    assert req.text_prompt == ""
  # A relative path is embedded on save (it would not resolve from elsewhere); others are kept.
  saved = request_to_dict(load_request(tmp_path / "relative.json"))
  assert saved["image_prompt"].startswith("data:image/png;base64,")
  np.testing.assert_array_equal(images.decode_image(saved["image_prompt"]), small_image)
  assert request_to_dict(load_request(tmp_path / "absolute.json"))["image_prompt"] == sources["absolute"]


def _set(data, path, value):
  """Sets a nested key given as a tuple path; value=... deletes it."""
  target = data
  for key in path[:-1]:
    target = target[key]
  if value is ...:
    del target[path[-1]]
  else:
    target[path[-1]] = value


BAD_INPUTS = [
    # (change, expected substrings of the message)
    ((("resolution",), ...), ["resolution", "missing"]),
    ((("cameras",), ...), ["cameras", "missing"]),
    ((("resolution",), [24, 480]), ["resolution", "three positive integers", "[24, 480]"]),
    ((("resolution",), [24, 480, 700]), ["resolution", "multiples of 32", "700"]),
    ((("resolution",), [0, 480, 704]), ["resolution", "three positive integers"]),
    ((("resolution",), [24.0, 480, 704]), ["resolution", "three positive integers"]),
    ((("resolution",), [True, 480, 704]), ["resolution", "three positive integers", "True"]),
    ((("resolution",), [1025, 480, 704]), ["resolution", "1024"]),
    ((("text_prompt",), 5), ["text_prompt", "a string", "5"]),
    ((("image_prompt",), ["x"]), ["image_prompt", "a string", "['x']"]),
    ((("image_index",), 4), ["image_index", "[0, 4)", "got 4"]),
    ((("image_index",), -1), ["image_index", "[0, 4)", "got -1"]),
    ((("image_index",), 1.5), ["image_index", "an integer", "1.5"]),
    ((("cameras",), []), ["cameras", "non-empty list", "[]"]),
    ((("cameras",), {"a": 1}), ["cameras", "non-empty list"]),
    ((("cameras", 1), [1, 2]), ["cameras[1]", "camera object"]),
    ((("cameras", 2, "fy"), ...), ["cameras[2]", "missing ['fy']"]),
    ((("cameras", 1, "quaternion"), [0, 0, 0, 0]), ["cameras[1].quaternion", "non-zero norm"]),
    ((("cameras", 1, "quaternion"), [1, 0, 0]), ["cameras[1].quaternion", "a list of 4 numbers"]),
    ((("cameras", 1, "quaternion"), [1, 0, float("nan"), 0]), ["cameras[1].quaternion[2]", "finite"]),
    ((("cameras", 1, "quaternion"), [1, 0, "0", 0]), ["cameras[1].quaternion[2]", "a number", "'0'"]),
    ((("cameras", 0, "position"), [0, 0, 0, 0]), ["cameras[0].position", "a list of 3 numbers"]),
    ((("cameras", 0, "position"), [0, float("inf"), 0]), ["cameras[0].position[1]", "finite"]),
    ((("cameras", 0, "position"), [0, 10**400, 0]), ["cameras[0].position[1]", "finite"]),
    ((("cameras", 2, "fx"), 0), ["cameras[2].fx", "> 0", "got 0"]),
    ((("cameras", 2, "fy"), -3.0), ["cameras[2].fy", "> 0", "-3.0"]),
    ((("cameras", 2, "cx"), True), ["cameras[2].cx", "a number", "True"]),
    ((("cameras", 2, "cy"), None), ["cameras[2].cy", "a number", "None"]),
    ((("seed",), "7"), ["seed", "an integer", "'7'"]),
    ((("seed",), 1.0), ["seed", "an integer", "1.0"]),
    ((("seed",), False), ["seed", "an integer", "False"]),
    ((("image_prompt",), "data:image/png;base64,@@@@"), ["image_prompt", "not valid base64"]),
    ((("image_prompt",), "data:image/png,abcd"), ["image_prompt", "data URI must look like"]),
    ((("image_prompt",), base64.b64encode(b"not an image").decode()),
     ["image_prompt", "not a decodable image"]),
    ((("image_prompt",), "missing/view.png"), ["image_prompt", "no such file", "missing/view.png"]),
]


@pytest.mark.parametrize("change,expected", BAD_INPUTS, ids=[
    f"{'.'.join(map(str, c[0]))}={'<deleted>' if c[1] is ... else str(c[1])[:20]}"
    for c, _ in BAD_INPUTS])
def test_bad_inputs_name_field_value_and_expectation(request_dict, change, expected):
  data = copy.deepcopy(request_dict)
  _set(data, *change)
  with pytest.raises(RequestError) as info:
    load_request(data)
  message = str(info.value)
  for text in expected:
    assert text in message, f"{text!r} not in {message!r}"
  assert "expected" in message


def test_top_level_and_prompt_errors(tmp_path, request_dict):
  for top_level in ([1], "text", None):
    (tmp_path / "top.json").write_text(json.dumps(top_level))
    with pytest.raises(RequestError, match="request: expected a JSON object at the top level, got "):
      load_request(tmp_path / "top.json")
  with pytest.raises(RequestError, match=r"request: expected a JSON object at the top level, got \[1\]"):
    load_request([1])
  no_prompt = {**request_dict, "image_prompt": "", "text_prompt": "  "}
  with pytest.raises(RequestError, match="expected a non-empty text_prompt or an image_prompt"):
    load_request(no_prompt)
  # Without an image, image_index is not range-checked.
  load_request({**request_dict, "image_prompt": None, "image_index": 99})
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(RequestError, match="broken.json: not valid JSON"):
    load_request(tmp_path / "broken.json")
  with pytest.raises(RequestError, match="no such file"):
    load_request(tmp_path / "absent.json")


def test_unknown_keys_are_ignored_with_a_warning_naming_the_closest_key(request_dict):
  data = {**request_dict, "text_promt": "a typo", "image_idx": 2, "notes": "mine"}
  req = load_request(data)
  assert req.text_prompt == "a test scene" and req.image_index == 1
  assert req.warnings == (
      "`text_promt`: unknown key (ignored), did you mean `text_prompt`?",
      "`image_idx`: unknown key (ignored), did you mean `image_index`?",
      "`notes`: unknown key (ignored), expected keys: image_prompt, text_prompt, resolution, "
      "image_index, cameras, seed")
  assert load_request(request_dict).warnings == ()
  assert "text_promt" not in request_to_dict(req)


def test_errors_from_a_file_name_it(tmp_path, request_dict):
  path = tmp_path / "bad.json"
  path.write_text(json.dumps({**request_dict, "seed": "7"}))
  with pytest.raises(RequestError, match="^" + re.escape(f"{path}: seed: expected an integer")):
    load_request(path)


def test_image_is_read_only_and_long_values_are_abbreviated(request_dict):
  req = load_request(request_dict)
  with pytest.raises(ValueError):
    req.image[0, 0, 0] = 1
  data = {**request_dict, "image_prompt": "data:image/png;base64," + "A" * 10_000 + "@"}
  with pytest.raises(RequestError) as info:
    load_request(data)
  assert len(str(info.value)) < 300 and "…" in str(info.value)
