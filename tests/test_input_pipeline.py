"""TFDS MNIST: real files, splits, padding and masking, fast failure without data."""

import gzip
import shutil
import time

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax import random

from alexnet_jax.data import input_pipeline
from tests.conftest import MNIST_FILES


def test_pad_to_multiple_masks_the_padding():
  images = np.ones((10, 28, 28, 1), np.uint8)
  labels = np.arange(10)
  padded_images, padded_labels, mask = input_pipeline.pad_to_multiple(images, labels, 4)
  assert padded_images.shape[0] == padded_labels.shape[0] == mask.shape[0] == 12
  assert mask.tolist() == [1.0] * 10 + [0.0] * 2
  assert padded_images[10:].sum() == 0


def test_eval_batches_cover_every_example_once():
  split = input_pipeline.make_split(np.zeros((1003, 28, 28, 1), np.uint8), np.arange(1003) % 10,
                                    pad_multiple=100)
  batches = list(input_pipeline.eval_batches(split, 100))
  assert len(batches) == 11
  assert sum(float(b["mask"].sum()) for b in batches) == 1003
  assert all(b["image"].shape[0] == 100 for b in batches)


def test_split_names_hold_out_validation_from_train():
  assert input_pipeline.split_names(5000) == {
      "test": "test", "train": "train[:55000]", "validation": "train[55000:]"}
  assert input_pipeline.split_names(0) == {"test": "test", "train": "train"}


def test_epoch_permutation_depends_on_seed_and_epoch_only():
  rng = random.key(0)
  a = input_pipeline.epoch_permutation(rng, 3, 100)
  assert jnp.array_equal(a, input_pipeline.epoch_permutation(rng, 3, 100))
  assert not jnp.array_equal(a, input_pipeline.epoch_permutation(rng, 4, 100))
  assert sorted(a.tolist()) == list(range(100))


def test_real_mnist_splits(mnist_data_dir):
  data = ml_collections.ConfigDict({"data_dir": mnist_data_dir, "manual_dir": "",
                                    "validation_size": 5000})
  splits = input_pipeline.load_mnist(data, eval_batch_size=3000)
  assert [shard.num_examples for shard in splits["train"]] == [55000]
  assert float(splits["validation"].mask.sum()) == 5000
  assert float(splits["test"].mask.sum()) == 10000 and splits["test"].num_examples == 12000
  labels = np.asarray(splits["test"].labels[:10000])
  assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  train = splits["train"][0]
  assert train.images.dtype == jnp.uint8 and train.images.shape[1:] == (28, 28, 1)


def test_each_process_reads_only_its_share(mnist_data_dir):
  data = ml_collections.ConfigDict({"data_dir": mnist_data_dir, "manual_dir": "",
                                    "validation_size": 5000})
  whole = input_pipeline.load_mnist(data, eval_batch_size=600,
                                    layout=input_pipeline.DataLayout(num_shards=2))
  shares = [input_pipeline.load_mnist(data, eval_batch_size=600, layout=input_pipeline.DataLayout(
      num_shards=2, process_index=p, process_count=2)) for p in (0, 1)]
  assert [s.num_examples for s in whole["train"]] == [27500, 27500]
  for p in (0, 1):
    (own,) = shares[p]["train"]
    assert jnp.array_equal(own.labels, whole["train"][p].labels)
  # Test: each process holds half, padded to the same number of 300-image batches.
  assert [s["test"].num_examples for s in shares] == [5100, 5100]
  assert sum(float(s["test"].mask.sum()) for s in shares) == 10000
  together = np.concatenate([np.asarray(s["test"].labels)[np.asarray(s["test"].mask) > 0] for s in shares])
  assert np.array_equal(np.sort(together), np.sort(np.asarray(whole["test"].labels)[:10000]))


def test_missing_data_without_network_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "_network_reachable", lambda host: False)
  start = time.monotonic()
  with pytest.raises(input_pipeline.DatasetError, match="put the four original files") as info:
    input_pipeline.mnist_builder(str(tmp_path / "tfds"), str(tmp_path / "empty"))
  assert time.monotonic() - start < 30
  assert str(tmp_path / "empty") in str(info.value)
  assert "\n" not in str(info.value)


def test_network_probe_gives_up_within_its_timeout():
  start = time.monotonic()
  # RFC 2606 reserves .invalid: it never resolves.
  assert not input_pipeline._network_reachable("mnist.invalid", timeout_s=2.0)
  assert time.monotonic() - start < 5


def test_corrupt_file_is_named(tmp_path, mnist_manual_dir):
  manual = tmp_path / "manual"
  manual.mkdir()
  for name in MNIST_FILES:
    shutil.copy(mnist_manual_dir / name, manual / name)
  with gzip.open(manual / "t10k-labels-idx1-ubyte.gz", "wb") as f:
    f.write(b"not the MNIST labels")
  with pytest.raises(input_pipeline.DatasetError, match="checksum") as info:
    input_pipeline.mnist_builder(str(tmp_path / "tfds"), str(manual))
  assert "\n" not in str(info.value)
