"""Export to ONNX and StableHLO: the same numbers as the JAX model, on every knob of the network and on
all 10,000 test images of a trained run; bad requests named in one line.

Tolerance: the exported graphs compute the same float32 operations in other orders and with other
kernels (onnxruntime's convolutions, XLA's for the serialized StableHLO). Each layer's accumulation of up
to 5 x 5 x 192 products rounds at about sqrt(4800) x 2**-24 ~ 4e-6 relative; over the network's eight
weighted layers that is a few 1e-5 of a logit, and a probability moves by at most a quarter of a logit's
change: PROBABILITY_ATOL = 1e-4 leaves a margin. An argmax may differ only where the top two
probabilities are closer than twice that.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.data import input_pipeline
from alexnet_jax.inference import calibration, export
from alexnet_jax.inference.trained_run import load as load_trained_run
from alexnet_jax.model import alexnet
from alexnet_jax.training import checkpointing
from tests.conftest import REPO_ROOT

PROBABILITY_ATOL = 1e-4
KNOBS = [("mnist", "relu", "overlapping", "none"), ("mnist", "tanh", "non_overlapping", "lrn"),
         ("mnist", "relu", "overlapping", "batchnorm"), ("original", "relu", "overlapping", "lrn")]


def _onnx_probabilities(onnx_bytes: bytes, images: np.ndarray) -> np.ndarray:
  import onnxruntime  # noqa: PLC0415

  session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
  return session.run(["probabilities"], {"images": images.astype(np.float32)})[0]


def _stablehlo_probabilities(data: bytes, images: np.ndarray) -> np.ndarray:
  return np.asarray(jax.export.deserialize(bytearray(data)).call(images.astype(np.float32)))


def _random_network(variant, activation, pooling, normalization):
  model = alexnet.AlexNet(variant=variant, activation=activation, pooling=pooling,
                         normalization=normalization, width_multiplier=0.25, dense_width=64)
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                         jnp.zeros((1, *alexnet.INPUT_SHAPE)), train=False)
  if normalization == "batchnorm":  # running statistics away from their (0, 1) start
    rng = np.random.default_rng(1)
    stats = variables["batch_stats"]
    variables = {**variables, "batch_stats": jax.tree.map(
        lambda x: np.abs(x + 0.2 * rng.standard_normal(x.shape)).astype(np.float32), stats)}
  return model, variables


@pytest.mark.parametrize("knobs", KNOBS, ids=["-".join(k) for k in KNOBS])
def test_both_formats_compute_what_the_model_computes(knobs):
  model, variables = _random_network(*knobs)
  images = np.random.default_rng(0).integers(0, 256, (5, *alexnet.INPUT_SHAPE)).astype(np.float32)
  expected = np.asarray(jax.jit(export.probabilities_fn(model, variables))(images))
  for got in (_onnx_probabilities(export.to_onnx(model, variables), images),
              _stablehlo_probabilities(export.to_stablehlo(model, variables), images)):
    assert got.shape == (5, 10)
    np.testing.assert_allclose(got, expected, atol=PROBABILITY_ATOL, rtol=0)


def test_both_formats_apply_the_calibration_temperature():
  model, variables = _random_network(*KNOBS[0])
  images = np.random.default_rng(0).integers(0, 256, (5, *alexnet.INPUT_SHAPE)).astype(np.float32)
  logits = np.asarray(export.float32_model(model).apply(
      variables, input_pipeline.normalize(jnp.asarray(images)), train=False), np.float64)
  expected = calibration.softmax(logits, 0.25)
  assert not np.allclose(expected, calibration.softmax(logits), atol=1e-3)
  for got in (_onnx_probabilities(export.to_onnx(model, variables, 0.25), images),
              _stablehlo_probabilities(export.to_stablehlo(model, variables, 0.25), images)):
    np.testing.assert_allclose(got, expected, atol=PROBABILITY_ATOL, rtol=0)


def test_batch_size_is_symbolic(tmp_path):
  model, variables = _random_network(*KNOBS[0])
  onnx_bytes, hlo = export.to_onnx(model, variables), export.to_stablehlo(model, variables)
  for n in (1, 7):
    images = np.zeros((n, *alexnet.INPUT_SHAPE), np.float32)
    assert _onnx_probabilities(onnx_bytes, images).shape == (n, 10)
    assert _stablehlo_probabilities(hlo, images).shape == (n, 10)


def test_bad_requests_are_named_before_anything_is_written(tmp_path, synthetic_run):
  workdir, _ = synthetic_run
  with pytest.raises(export.ExportError, match="--format='tflite': expected one of onnx, stablehlo"):
    export.export_run(str(workdir), "latest", "tflite", str(tmp_path / "m"))
  with pytest.raises(export.ExportError, match="cannot write there"):
    export.export_run(str(workdir), "latest", "onnx", str(tmp_path / "no" / "such" / "m.onnx"))
  with pytest.raises(checkpointing.CheckpointError, match="config.json not found"):
    export.export_run(str(tmp_path / "nothing"), "latest", "onnx", str(tmp_path / "m.onnx"))
  assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
  """The trained run exported in both formats through the command line."""
  workdir, _ = trained_run
  out = tmp_path_factory.mktemp("exported")
  for export_format, name in (("onnx", "model.onnx"), ("stablehlo", "model.stablehlo")):
    result = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.export", "--workdir", str(workdir), "--checkpoint", "latest",
         "--format", export_format, "--out", str(out / name)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"wrote {out / name}")
  return out


@pytest.mark.slow
def test_trained_run_exports_agree_with_jax_on_all_test_images(exported, trained_run, mnist_data_dir):
  workdir, _ = trained_run
  run = load_trained_run(str(workdir), "latest")
  # Exports compute in float32 whatever the run trained in (`auto` is bfloat16 on CPUs with native bf16):
  # the JAX reference is the run's network in float32, through its own convolutions.
  run = dataclasses.replace(run, model=dataclasses.replace(run.model, dtype=jnp.float32))
  test = input_pipeline.load_mnist(run.config.data, run.config.eval_batch_size)["test"]
  images = np.asarray(test.images)[np.asarray(test.mask) > 0].astype(np.float32)
  assert len(images) == 10000
  expected = np.concatenate([np.asarray(run.probabilities_fn()(images[i:i + 1000]))
                             for i in range(0, 10000, 1000)])
  near_ties = np.sum(np.diff(np.sort(expected, axis=-1)[:, -2:], axis=-1) <= 2 * PROBABILITY_ATOL)
  for got in (_onnx_probabilities((exported / "model.onnx").read_bytes(), images),
              _stablehlo_probabilities((exported / "model.stablehlo").read_bytes(), images)):
    np.testing.assert_allclose(got, expected, atol=PROBABILITY_ATOL, rtol=0)
    assert np.sum(got.argmax(-1) != expected.argmax(-1)) <= near_ties


@pytest.mark.slow
def test_stablehlo_runs_in_a_process_without_the_model_code(exported):
  """Deserialized and called with nothing but JAX and numpy: the project and Flax are not imported."""
  path = str(exported / "model.stablehlo")
  script = ("import sys, jax, numpy as np\n"
            f"e = jax.export.deserialize(bytearray(open({path!r}, 'rb').read()))\n"
            "p = np.asarray(e.call(np.zeros((3, 28, 28, 1), np.float32)))\n"
            "assert p.shape == (3, 10) and abs(p.sum(-1) - 1).max() < 1e-5, p\n"
            "assert not any(m.startswith(('alexnet_jax', 'flax')) for m in sys.modules), 'model code'\n"
            "print('ok')\n")
  result = subprocess.run([sys.executable, "-c", script], cwd="/", capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


@pytest.mark.slow
def test_command_line_errors_are_one_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.export", "--workdir", str(tmp_path / "missing"), "--format",
       "onnx", "--out", str(tmp_path / "m.onnx")],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith("error: ") and "config.json not found" in last_line
  assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow  # a subprocess
def test_onnx_without_the_export_extra_says_which_extra_in_one_line(tmp_path, synthetic_run):
  """The `onnx` package made unimportable in the process (as where the extra is not installed): one line
  naming the extra, a non-zero exit, nothing written."""
  workdir, _ = synthetic_run
  program = ("import runpy, sys; sys.modules['onnx'] = None; sys.argv = ['export'] + sys.argv[1:]; "
             "runpy.run_module('alexnet_jax.export', run_name='__main__')")
  result = subprocess.run(
      [sys.executable, "-c", program, "--workdir", str(workdir), "--format", "onnx", "--out",
       str(tmp_path / "m.onnx")], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      "error: --format=onnx needs the `export` extra: pip install -e '.[export]'")
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no library chatter either
  assert not (tmp_path / "m.onnx").exists()
