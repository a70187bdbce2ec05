"""The patch Fréchet distance against independent float64 derivations (scipy's matrix square root,
closed forms, explicit loops), and its behaviour on sets that differ in known ways."""
import numpy as np
import pytest
import scipy.linalg

from flashworld_jax.train import evaluation, patch_frechet


def _spd(rng, n):
  a = rng.normal(size=(n, n))
  return a @ a.T / n + 0.1 * np.eye(n)


def test_frechet_distance_matches_scipy_matrix_square_root():
  rng = np.random.default_rng(0)
  mean_a, mean_b = rng.normal(size=12), rng.normal(size=12)
  cov_a, cov_b = _spd(rng, 12), _spd(rng, 12)
  root = scipy.linalg.sqrtm(cov_a @ cov_b).real
  expected = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)
  got = patch_frechet.frechet_distance(mean_a, cov_a, mean_b, cov_b)
  np.testing.assert_allclose(got, expected, rtol=1e-9)
  assert patch_frechet.frechet_distance(mean_a, cov_a, mean_a, cov_a) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
  rng = np.random.default_rng(1)
  var_a, var_b = rng.uniform(0.1, 2, 8), rng.uniform(0.1, 2, 8)
  mean_a, mean_b = rng.normal(size=8), rng.normal(size=8)
  expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
  got = patch_frechet.frechet_distance(mean_a, np.diag(var_a), mean_b, np.diag(var_b))
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_pyramid_bands_and_low_pass_add_back_to_the_image():
  images = np.random.default_rng(2).uniform(-1, 1, (3, 32, 48, 3))
  levels = patch_frechet.pyramid(images, 3)
  assert [lvl.shape[1:3] for lvl in levels] == [(32, 48), (16, 24), (8, 12), (4, 6)]
  rebuilt = levels[-1]
  for band in reversed(levels[:-1]):
    rebuilt = band + rebuilt.repeat(2, axis=1).repeat(2, axis=2)
  np.testing.assert_allclose(rebuilt, images, atol=1e-12)


def test_descriptors_are_the_strided_neighbourhoods():
  level = np.random.default_rng(3).normal(size=(2, 9, 11, 3))
  got = patch_frechet.descriptors(level, patch=4, stride=2)
  expected = [level[n, y:y + 4, x:x + 4, :].transpose(2, 0, 1).ravel()
              for n in range(2) for y in range(0, 6, 2) for x in range(0, 8, 2)]
  np.testing.assert_array_equal(got, np.stack(expected))


def test_statistics_added_in_batches_equal_the_whole_set():
  rng = np.random.default_rng(4)
  images = rng.uniform(-1, 1, (6, 32, 64, 3))
  stats = patch_frechet.PatchStatistics(2)
  for batch in (images[:1], images[1:4], images[4:]):
    stats.add(batch)
  for level, (mean, cov) in zip(patch_frechet.pyramid(images, 2), stats.gaussians()):
    desc = patch_frechet.descriptors(level)
    np.testing.assert_allclose(mean, desc.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(desc, rowvar=False), atol=1e-10)


def _smooth_images(rng, n):
  coarse = rng.uniform(-1, 1, (n, 8, 12, 3))
  return coarse.repeat(8, axis=1).repeat(8, axis=2) + 0.2 * rng.normal(size=(n, 64, 96, 3))


def test_identical_sets_score_zero_and_lost_detail_scores_at_its_level():
  rng = np.random.default_rng(5)
  real = _smooth_images(rng, 12)
  assert patch_frechet.patch_frechet(real, real)["patch_fd"] == pytest.approx(0, abs=1e-6)
  # The 2×2 box blur empties the finest band only: about 1 there (the whole real variance), 0 above.
  blurred = patch_frechet._halve(real).repeat(2, axis=1).repeat(2, axis=2)
  scores = patch_frechet.patch_frechet(blurred, real)
  assert scores["patch_fd_level0"] == pytest.approx(1.0, abs=0.01)
  assert max(scores[f"patch_fd_level{i}"] for i in (1, 2, 3)) < 1e-6
  # A second draw of the same kind of images is close; uniform noise is far at every level.
  other = patch_frechet.patch_frechet(_smooth_images(rng, 12), real)["patch_fd"]
  noise = patch_frechet.patch_frechet(rng.uniform(-1, 1, real.shape), real)["patch_fd"]
  assert other < 0.2 < 1.0 < noise


def test_bands_fit_the_image_size():
  assert patch_frechet.bands_for(64, 96) == 3
  assert patch_frechet.bands_for(480, 704) == 3
  assert patch_frechet.bands_for(16, 24) == 2       # the low-pass image stays a patch wide
  assert patch_frechet.bands_for(32, 50) == 1       # 50 halves once
  assert patch_frechet.bands_for(4, 4) == 0


@pytest.mark.parametrize("generated, real, message", [
    (np.zeros((4, 32, 32)), np.zeros((4, 32, 32, 3)), "must be \\[N, H, W, C\\]"),
    (np.zeros((4, 32, 36, 3)), np.zeros((4, 32, 36, 3)), "multiples of 8"),
    (np.zeros((1, 32, 32, 3)), np.zeros((4, 32, 32, 3)), "holds 1 image"),
    (np.zeros((4, 32, 32, 3)), np.zeros((4, 32, 64, 3)), "differ in shape"),
])
def test_bad_sets_raise_value_errors(generated, real, message):
  with pytest.raises(ValueError, match=message):
    patch_frechet.patch_frechet(generated, real)


def test_view_distributions_pool_scenes_per_group_without_the_conditioning_view():
  rng = np.random.default_rng(6)
  images = [rng.integers(0, 256, (6, 32, 64, 3), dtype=np.uint8) for _ in range(3)]
  exact = evaluation.ViewDistributions(num_input_views=4)
  shifted = evaluation.ViewDistributions(num_input_views=4)
  for scene in images:
    truth = evaluation.to_unit(scene)
    exact.add(truth, scene)
    shifted.add(np.clip(truth + 0.5, -1, 1), scene)
  scores = exact.scores()
  assert {k for k in scores if not k.startswith("patch_fd_level")} == {
      "patch_fd_input_other", "patch_fd_novel", "patch_fd_other"}
  assert "patch_fd_level3_other" in scores
  assert max(scores.values()) < 1e-6
  assert min(shifted.scores()[k] for k in ("patch_fd_input_other", "patch_fd_novel")) > 0.01


def test_a_group_of_one_view_scores_nan():
  images = np.random.default_rng(7).integers(0, 256, (4, 32, 64, 3), dtype=np.uint8)
  distributions = evaluation.ViewDistributions(num_input_views=3)   # one novel view
  distributions.add(evaluation.to_unit(images), images)
  scores = distributions.scores()
  assert np.isnan(scores["patch_fd_novel"]) and np.isnan(scores["patch_fd_level3_novel"])
  assert np.isfinite(scores["patch_fd_other"])
