"""A trained run loaded for inference (inference/trained_run.py): what it does with a damaged checkpoint or
config.json, and with oneDNN convolutions it cannot have."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax.inference import trained_run
from alexnet_jax.model import cpu_kernels, onednn_build
from alexnet_jax.training import checkpointing
from tests.conftest import REPO_ROOT


@pytest.fixture
def run_copy(synthetic_run, tmp_path):
  source, _ = synthetic_run
  shutil.copytree(source, tmp_path, dirs_exist_ok=True)
  return tmp_path


def _truncate_arrays(workdir, step: int) -> None:
  for path in (workdir / "checkpoints" / str(step)).rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:10])


def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(run_copy, caplog):
  _truncate_arrays(run_copy, 8)
  with caplog.at_level(logging.WARNING):
    run = trained_run.load(str(run_copy), "latest")
  assert run.step == 4
  assert any("checkpoint at step 8" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
  assert (run_copy / "checkpoints" / "8").exists(), "inference only reads: nothing is moved"


def test_a_damaged_checkpoint_asked_for_by_step_is_one_line(run_copy):
  _truncate_arrays(run_copy, 8)
  with pytest.raises(checkpointing.CheckpointError, match=r"^checkpoint at step 8 in .* cannot be read "
                     r"\(ValueError: OUT_OF_RANGE") as raised:
    trained_run.load(str(run_copy), "8")
  assert "\n" not in str(raised.value)


def test_a_damaged_config_json_is_one_line_naming_it(run_copy):
  (run_copy / "config.json").write_text('{"seed": 0, "model": {')
  with pytest.raises(checkpointing.CheckpointError, match=r"config.json cannot be read \(JSONDecodeError"):
    trained_run.load(str(run_copy), "latest")


def test_a_run_trained_with_onednn_loads_with_xla_where_onednn_cannot_be_had(run_copy, monkeypatch, caplog):
  # float32 compute, so that both implementations compute the same sums, in other orders.
  config = (run_copy / "config.json").read_text().replace('"conv_impl": "auto"', '"conv_impl": "onednn"')
  config = config.replace('"dtype": "auto"', '"dtype": "float32"')
  (run_copy / "config.json").write_text(config)
  images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), np.uint8)
  reference = trained_run.load(str(run_copy), "latest", weights="raw")
  assert reference.model.conv_impl == "onednn"
  expected = np.asarray(reference.logits_fn()(images))

  def unavailable():
    raise onednn_build.OnednnUnavailableError("no C++ compiler")

  monkeypatch.setattr(onednn_build, "load", unavailable)
  monkeypatch.setattr(cpu_kernels, "_onednn_loads", lambda: False)
  with caplog.at_level(logging.WARNING):
    run = trained_run.load(str(run_copy), "latest", weights="raw")
  assert run.model.conv_impl == "xla"
  assert any("XLA's convolutions instead" in r.getMessage() for r in caplog.records)
  # The same function to rounding (a smoke network: sums of at most a few thousand float32 products).
  np.testing.assert_allclose(run.logits_fn()(images), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # a subprocess
def test_predict_on_a_run_with_a_damaged_config_json_is_one_line(run_copy, tmp_path_factory):
  (run_copy / "config.json").write_text("not json")
  image = tmp_path_factory.mktemp("image") / "digit.png"
  from PIL import Image  # noqa: PLC0415

  Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
  command = [sys.executable, "-m", "alexnet_jax.predict", "--workdir", str(run_copy), str(image)]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: ") and "config.json cannot be read" in lines[-1], result.stderr
