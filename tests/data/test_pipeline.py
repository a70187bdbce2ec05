"""The on-disk format and the Grain pipeline: resumable builds, deterministic batches, exact resume,
per-host sharding, source mixing, conditioning dropout and OOD samples."""
import os

import numpy as np
import pytest
from PIL import Image

from flashworld_jax.data import clips as clips_lib
from flashworld_jax.data import ood, pipeline, records, sampling, synthetic
from flashworld_jax.geometry import cameras as cameras_lib

HEIGHT, WIDTH, FRAMES = 32, 48, 8
SPEC = sampling.SampleSpec(num_input_views=4, num_novel_views=2, height=HEIGHT, width=WIDTH,
                           min_frame_stride=1, max_frame_stride=2)


def _synthetic_items(renderer, split="train"):
  def make_examples(i):
    example = synthetic.make_scene_example(split, i, FRAMES, renderer, max_objects=2)
    return [{**example, "source": "synthetic", "has_caption": True}]
  return make_examples


@pytest.fixture(scope="module")
def renderer():
  return synthetic.SceneRenderer(HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, renderer):
  path = str(tmp_path_factory.mktemp("synthetic"))
  records.build_split(path, "synthetic", "train", 5, 2, _synthetic_items(renderer), records.SYNTHETIC,
                      {"scenes": 5}, "test set")
  return path


def test_records_round_trip(dataset_dir, renderer):
  data = records.open_split(dataset_dir, "train")
  assert len(data) == 5
  ids = sorted(data[i]["clip_id"].decode() for i in range(5))
  assert ids == [f"synthetic/train/{i:06d}" for i in range(5)]
  record = next(data[i] for i in range(5) if data[i]["clip_id"].endswith(b"000003"))
  expected = synthetic.make_scene_example("train", 3, FRAMES, renderer, max_objects=2)
  np.testing.assert_array_equal(record["images"], expected["images"])
  np.testing.assert_array_equal(record["cameras"], expected["cameras"])
  np.testing.assert_array_equal(record["depth"], expected["depth"])
  assert record["caption"].decode() == expected["caption"]


def test_interrupted_build_resumes_without_rewriting_finished_shards(tmp_path, renderer):
  path = str(tmp_path)
  made = []
  inner = _synthetic_items(renderer)

  def failing(i):
    made.append(i)
    if i == 3 and len(made) == 4:
      raise KeyboardInterrupt  # killed in the middle of shard 1
    return inner(i)

  with pytest.raises(KeyboardInterrupt):
    records.build_split(path, "s", "train", 5, 2, failing, records.SYNTHETIC, {"n": 5}, "d")
  first = records.shard_path(path, "s", "train", 0, 3)
  stamp = os.stat(first).st_mtime_ns
  assert not os.path.exists(records.shard_path(path, "s", "train", 1, 3))
  made.clear()
  totals = records.build_split(path, "s", "train", 5, 2, failing, records.SYNTHETIC, {"n": 5}, "d")
  assert made == [2, 3, 4] and totals["records"] == 5
  assert os.stat(first).st_mtime_ns == stamp
  with pytest.raises(records.BuildMismatchError, match="n: 5 then, 6 now"):
    records.build_split(path, "s", "train", 6, 2, failing, records.SYNTHETIC, {"n": 6}, "d")


def test_skips_are_counted(tmp_path, renderer):
  inner = _synthetic_items(renderer)
  make = lambda i: [{"skipped": "missing frame"}] if i == 1 else inner(i)  # noqa: E731
  totals = records.build_split(str(tmp_path), "s", "train", 3, 2, make, records.SYNTHETIC, {}, "d")
  assert totals["records"] == 2 and totals["skipped"] == {"missing frame": 1}


def _batches(dataset_dir, count, seed=0, batch_size=2, **kwargs):
  it = pipeline.make_iterator(pipeline.make_dataset([pipeline.SourceSpec(dataset_dir)], SPEC,
                                                    batch_size, seed, **kwargs))
  return [next(it) for _ in range(count)]


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batches_have_static_shapes(dataset_dir):
  batch = _batches(dataset_dir, 1)[0]
  assert batch["images"].shape == (2, SPEC.num_views, HEIGHT, WIDTH, 3)
  assert batch["images"].dtype == np.uint8
  assert batch["cameras"].shape == (2, SPEC.num_views, 11)
  assert batch["condition_index"].dtype == np.int32
  # Normalised: input view 0 is the identity, inputs lie in the unit ball.
  np.testing.assert_allclose(batch["cameras"][:, 0, :7], [[1, 0, 0, 0, 0, 0, 0]] * 2, atol=1e-6)
  assert np.all(np.linalg.norm(batch["cameras"][:, :SPEC.num_input_views, 4:7], axis=-1) < 1.0)


def test_same_seed_same_batches_other_seed_other_batches(dataset_dir):
  for a, b in zip(_batches(dataset_dir, 4), _batches(dataset_dir, 4)):
    _assert_same(a, b)
  other = _batches(dataset_dir, 4, seed=1)
  assert any(not np.array_equal(a["images"], b["images"])
             for a, b in zip(_batches(dataset_dir, 4), other))


@pytest.mark.parametrize("host_rows", [[[0, 1], [2, 3]], [[0, 2], [1, 3]], [[3], [1], [0, 2]]],
                         ids=["blocks", "interleaved", "uneven"])
def test_processes_reading_their_rows_rebuild_the_global_batches(dataset_dir, host_rows):
  """Whatever rows each process's devices hold, the global batch is the one-process batch, row for
  row (the per-row noise of a step then meets the same samples)."""
  single = _batches(dataset_dir, 3, batch_size=4)
  hosts = [_batches(dataset_dir, 3, batch_size=4, rows=rows) for rows in host_rows]
  for k, want in enumerate(single):
    for rows, batches in zip(host_rows, hosts):
      _assert_same(batches[k], {key: value[rows] for key, value in want.items()})


def test_resume_at_a_global_batch_is_exact_for_any_process_split(dataset_dir):
  """A run resumed at batch 3 (`dataset[3:]`, as the loop does) on other processes reads on."""
  make = lambda rows=None: pipeline.make_dataset([pipeline.SourceSpec(dataset_dir)], SPEC, 4, 0,  # noqa: E731
                                                 rows=rows)
  expected = _batches(dataset_dir, 5, batch_size=4)
  resumed = pipeline.make_iterator(make([1, 3])[3:])
  for want in expected[3:]:
    _assert_same(next(resumed), {key: value[[1, 3]] for key, value in want.items()})


@pytest.mark.parametrize("rows", [[], [0, 4], [1, 1], [[0, 1]], [0.0, 1.0], [-1]])
def test_bad_rows_are_refused(dataset_dir, rows):
  with pytest.raises(ValueError, match=r"rows must be distinct integers in \[0, 4\)"):
    pipeline.make_dataset([pipeline.SourceSpec(dataset_dir)], SPEC, 4, 0, rows=rows)


def test_choose_frames_keeps_inputs_in_order_and_novel_views_apart():
  rng = np.random.default_rng(0)
  for _ in range(50):
    frames = sampling.choose_frames(20, SPEC, rng, "clip")
    inputs, novel = frames[:4], frames[4:]
    strides = np.diff(inputs)
    assert np.all(strides == strides[0]) and 1 <= strides[0] <= 2
    assert not set(novel) & set(inputs) and len(set(novel)) == 2
  with pytest.raises(clips_lib.DataError, match="clip3: the clip has 5 frames, a sample needs 6"):
    sampling.choose_frames(5, SPEC, rng, "clip3")


def test_conditioning_dropout_rates():
  rng = np.random.default_rng(0)
  draws = [sampling.conditioning("a cube", SPEC, rng) for _ in range(20000)]
  with_image = np.mean([i != sampling.NO_IMAGE for _, i in draws])
  with_text = np.mean([t == "[Static] a cube" for t, _ in draws])
  assert abs(with_image - 0.5 * 0.9) < 0.015
  assert abs(with_text - 0.9) < 0.01
  assert {t for t, _ in draws} == {"", "[Static] a cube"}
  assert {i for _, i in draws} == {-1, 0, 1, 2, 3}


def test_normalisation_matches_the_spec():
  rng = np.random.default_rng(1)
  cams = np.concatenate([rng.normal(size=(6, 4)), rng.normal(size=(6, 3)) * 3,
                         np.full((6, 4), 0.5)], -1)
  normalised, s_norm = sampling.normalize(cams, 4)
  c2w = np.asarray(cameras_lib.cameras_to_c2w(cams.astype(np.float32)), np.float64)
  relative = np.linalg.inv(c2w[0]) @ c2w
  expected_s = np.max(np.linalg.norm(relative[:4, :3, 3], axis=-1)) + 0.01
  np.testing.assert_allclose(s_norm, expected_s, rtol=1e-5)
  np.testing.assert_allclose(normalised[:, 4:7], relative[:, :3, 3] / expected_s, atol=1e-5)


def test_sources_mix_by_weight(dataset_dir, tmp_path, renderer):
  other = str(tmp_path / "other")
  records.build_split(other, "synthetic", "validation", 2, 2, _synthetic_items(renderer, "validation"),
                      records.SYNTHETIC, {}, "d")
  dataset = pipeline.make_dataset([pipeline.SourceSpec(dataset_dir, weight=3.0),
                                   pipeline.SourceSpec(other, split="validation", weight=1.0)],
                                  SPEC, 2, 0)
  it = pipeline.make_iterator(dataset)
  ids = [c for _ in range(10) for c in next(it)["clip_id"]]
  share = np.mean(["/validation/" in c for c in ids])
  assert share == pytest.approx(0.25, abs=0.051)


def test_ood_samples_mix_in_with_the_same_shapes(dataset_dir, tmp_path):
  image_path = str(tmp_path / "photo.png")
  Image.fromarray(np.full((40, 80, 3), 200, np.uint8)).save(image_path)
  sources = ood.OODSources(images=[(image_path, "a bright wall")], prompts=["a red cone"])
  dataset = pipeline.make_dataset([pipeline.SourceSpec(dataset_dir)], SPEC, 3, 0,
                                  ood_sources=sources, ood_weight=1 / 3)
  it = pipeline.make_iterator(dataset)
  batches = [next(it) for _ in range(8)]
  kinds = np.concatenate([b["kind"] for b in batches])
  assert np.mean(kinds != sampling.KIND_MULTIVIEW) == pytest.approx(1 / 3, abs=0.05)
  for b in batches:
    assert b["images"].shape == (3, SPEC.num_views, HEIGHT, WIDTH, 3)
    for j, kind in enumerate(b["kind"]):
      if kind == sampling.KIND_OOD_IMAGE:
        index = b["condition_index"][j]
        assert b["view_mask"][j].sum() == 1 and b["view_mask"][j][index]
        assert np.all(b["images"][j][index] == 200) and b["text"][j] == "[Static] a bright wall"
      elif kind == sampling.KIND_OOD_TEXT:
        assert b["condition_index"][j] == -1 and not b["view_mask"][j].any()
        assert b["text"][j] == "[Static] a red cone"
      np.testing.assert_allclose(b["cameras"][j, 0, :7], [1, 0, 0, 0, 0, 0, 0], atol=1e-6)


def test_ood_sources_load_from_an_image_folder_and_a_prompt_file(tmp_path):
  (tmp_path / "images").mkdir()
  for name in ("a.png", "b.png"):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / name)
  (tmp_path / "images" / "a.txt").write_text("a dark room\n")
  (tmp_path / "prompts.txt").write_text("# a comment\na red cone\n\na blue box\n")
  sources = ood.load_sources(str(tmp_path / "images"), str(tmp_path / "prompts.txt"))
  assert sorted((os.path.basename(p), c) for p, c in sources.images) == [("a.png", "a dark room"),
                                                                         ("b.png", None)]
  assert list(sources.prompts) == ["a red cone", "a blue box"]
  with pytest.raises(ValueError, match="both are empty"):
    ood.OODSources()
