"""What the explanations show, checked on networks whose answer is known: saliency lights the one pixel a
synthetic network reads, integrated gradients sum to the logit's change, occlusion over an empty corner
changes nothing, the feature maps have the layer table's shapes."""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.analysis import attributions, explain
from alexnet_jax.inference import trained_run
from alexnet_jax.model import alexnet, summary
from configs import default
from tests.conftest import REPO_ROOT

PIXEL = (5, 7)


def one_pixel_network(images):
  """Class c's logit is (c + 1) x the pixel at PIXEL, scaled to [0, 1]: nothing else matters."""
  pixel = images[:, PIXEL[0], PIXEL[1], 0] / 255.0
  return pixel[:, None] * jnp.arange(1.0, 11.0)[None, :]


def _digits(count=3, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (count, *alexnet.INPUT_SHAPE)).astype(np.float32)


def test_saliency_lights_the_one_pixel_the_network_reads():
  images, classes = _digits(), np.array([0, 4, 9])
  maps = attributions.saliency(one_pixel_network, images, classes)
  expected = np.zeros_like(maps)
  expected[:, PIXEL[0], PIXEL[1]] = (classes + 1) / 255.0
  np.testing.assert_allclose(maps, expected, rtol=1e-6, atol=0)


def test_integrated_gradients_sum_to_the_change_of_the_logit():
  """Exact for a linear network: the attribution of PIXEL is the whole logit, everything else 0."""
  images, classes = _digits(), np.array([2, 3, 7])
  maps = attributions.integrated_gradients(one_pixel_network, images, classes)
  logits = np.asarray(one_pixel_network(jnp.asarray(images)))[np.arange(3), classes]
  np.testing.assert_allclose(maps.sum(axis=(1, 2)), logits, rtol=1e-5)
  assert np.count_nonzero(maps.reshape(3, -1), axis=1).tolist() == [1, 1, 1]


@pytest.fixture(scope="module")
def synthetic_trained(synthetic_run):
  workdir, _ = synthetic_run
  return trained_run.load(str(workdir), "latest")


def test_occlusion_over_an_empty_corner_changes_nothing(synthetic_trained):
  image = np.zeros((1, *alexnet.INPUT_SHAPE), np.float32)
  image[0, 10:20, 12:16] = 255.0  # a bar in the middle; the 6x6 corner patches cover only black
  maps = attributions.occlusion(synthetic_trained.logits_fn(), image, np.array([1]), patch=6)
  assert maps.shape == (1, 28, 28)
  # Pixels covered only by patches that lie on black: covering black with black is the same image.
  np.testing.assert_allclose(maps[0, :4, :4], 0.0, atol=1e-6)
  assert np.abs(maps[0, 10:20, 12:16]).max() > 1e-4, "covering the ink does change the answer"


def test_feature_maps_have_the_layer_tables_shapes(synthetic_trained):
  maps = explain.feature_maps(synthetic_trained, _digits(1)[0])
  table = {row.name: row.output_shape for row in summary.layer_table(synthetic_trained.model)}
  shapes = {name.replace("_activation", ""): values.shape for name, values in maps.items()}
  assert shapes == {name: shape for name, shape in table.items() if name.startswith(("conv", "pool"))}
  assert list(maps)[:2] == ["conv1_activation", "pool1"]
  assert min(values.min() for values in maps.values()) >= 0.0  # after ReLU


def test_conv1_filters_are_the_kernels(synthetic_trained):
  filters = explain.conv1_filters(synthetic_trained)
  kernel = np.asarray(synthetic_trained.variables["params"]["conv1"]["kernel"])
  assert filters.shape == (kernel.shape[3], 5, 5)
  np.testing.assert_array_equal(filters[3], kernel[:, :, 0, 3])


def test_default_network_stages_follow_the_paper_sizes():
  """28x28 -> 13x13 -> 6x6 -> 2x2 for the default config, as the layer table says."""
  model = alexnet.create_model(default.get_config().model)
  sides = [row.output_shape[0] for row in summary.layer_table(model) if row.name.startswith("pool")]
  assert sides == [13, 6, 2]


def test_pca_is_centred_and_ordered():
  rng = np.random.default_rng(0)
  features = rng.standard_normal((500, 2)) @ np.array([[5.0, 0.0], [0.0, 1.0]]) + 3.0
  features = np.concatenate([features, rng.standard_normal((500, 3)) * 0.1], axis=1)
  coordinates, explained = explain.pca_2d(features)
  np.testing.assert_allclose(coordinates.mean(axis=0), 0.0, atol=1e-9)
  assert explained[0] > explained[1] > 0 and explained.sum() <= 1.0
  assert abs(np.corrcoef(coordinates[:, 0], features[:, 0])[0, 1]) > 0.99


def test_default_digits_are_seeded_and_include_mistakes():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 1000)
  probabilities = np.eye(10)[labels]
  probabilities[:30] = np.eye(10)[(labels[:30] + 1) % 10]  # 30 mistakes
  chosen = explain.default_digits(probabilities, labels, count=12, seed=0)
  assert chosen.tolist() == explain.default_digits(probabilities, labels, count=12, seed=0).tolist()
  assert len(chosen) == 12 and np.sum(chosen < 30) == 4


@pytest.mark.slow  # PCA of 10,000 test digits and every picture: over the fast tier's budget
def test_explain_writes_its_pictures(synthetic_mnist, synthetic_run, tmp_path):
  workdir, _ = synthetic_run
  result = explain.explain_run(str(workdir), "latest", [], str(tmp_path))
  assert len(result["names"]) == explain.DEFAULT_DIGITS
  assert result["pca"].shape == (10000, 2)
  for name in ("filters.png", "feature_maps.png", "attributions.png", "pca.png", "explain.md"):
    assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.slow
def test_command_line_errors_are_one_line_and_write_nothing(synthetic_run, tmp_path):
  workdir, _ = synthetic_run
  (tmp_path / "blank.png").write_bytes(_png_bytes(np.full((40, 40), 255, np.uint8)))
  (tmp_path / "broken.png").write_bytes(b"not an image")
  cases = [([str(tmp_path / "missing")], "config.json not found"),
           ([str(workdir), "--checkpoint", "99"], "checkpoint '99' not found"),
           ([str(workdir), str(tmp_path / "broken.png")], "broken.png: not a readable image"),
           ([str(workdir), str(tmp_path / "blank.png")], "no ink")]
  for arguments, message in cases:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "alexnet_jax.explain", "--workdir", arguments[0], *arguments[1:],
               "--out", str(out)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and last_line.startswith("error: ") and message in last_line, last_line
    assert not out.exists()


def _png_bytes(array: np.ndarray) -> bytes:
  import io  # noqa: PLC0415

  from PIL import Image  # noqa: PLC0415

  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()
