"""MNIST from the registered TFDS `mnist` builder, held whole in device memory.

TFDS prepares the dataset once (offline from the original LeCun files through `manual_dir`, with TFDS
checking each file's SHA-256). After that, TensorFlow only reads the prepared records once per run; the
training loop sees JAX arrays and never touches TF. MNIST is 55 MB as uint8, so every split lives on the
device and each step's batch is gathered there: no step waits on the host.

Splits: `train` minus its last `validation_size` examples for training, those for validation (TFDS split
slicing), `test` evaluated whole: its last batch is padded and masked, never dropped.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import socket
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MNIST_TRAIN_SIZE = 60000
# Mean and standard deviation of MNIST's training pixels on the [0, 1] scale.
PIXEL_MEAN = 0.1307
PIXEL_STD = 0.3081
NETWORK_PROBE_TIMEOUT_S = 5.0


class DatasetError(RuntimeError):
  """The dataset cannot be found, downloaded or read."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory: uint8 images (N, 28, 28, 1), int32 labels (N,) and a 0/1 mask (N,).

  `mask` is 0 for padding examples appended so that N divides the batch size.
  """

  images: jax.Array
  labels: jax.Array
  mask: jax.Array

  @property
  def num_examples(self) -> int:
    return int(self.images.shape[0])


def _download_host(builder) -> str:
  return urllib.parse.urlparse(getattr(builder, "URL", "https://storage.googleapis.com")).hostname


def _network_reachable(host: str, timeout_s: float = NETWORK_PROBE_TIMEOUT_S) -> bool:
  """True if a TCP connection to host:443 opens within timeout_s (DNS included)."""

  def connect() -> bool:
    with socket.create_connection((host, 443), timeout=timeout_s):
      return True

  # getaddrinfo ignores socket timeouts, so the whole probe runs under a deadline of its own.
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
  try:
    return pool.submit(connect).result(timeout=timeout_s)
  except Exception:  # noqa: BLE001 - any failure means "no usable network".
    return False
  finally:
    pool.shutdown(wait=False)


def _hide_gpus_from_tensorflow() -> None:
  """TF only reads records here; keep it off accelerators that JAX owns."""
  import tensorflow as tf  # noqa: PLC0415 - TF is imported only when data is prepared or read.

  tf.config.set_visible_devices([], "GPU")


def mnist_builder(data_dir: str = "", manual_dir: str = ""):
  """Returns the TFDS `mnist` builder, prepared, or raises DatasetError within seconds.

  Order of sources: an already prepared dataset in `data_dir`; the four original files in `manual_dir`
  (default: TFDS's `<data_dir>/downloads/manual`); a download when the network answers.
  """
  import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy import, only when data is needed.
  from tensorflow_datasets.core.download.download_manager import (  # noqa: PLC0415
      NonMatchingChecksumError,
  )

  _hide_gpus_from_tensorflow()
  builder = tfds.builder("mnist", data_dir=data_dir or None)
  if builder.is_prepared():
    return builder
  manual_dir = manual_dir or os.path.join(builder.data_dir_root, "downloads", "manual")
  missing = [f for f in MNIST_FILES if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing and not _network_reachable(_download_host(builder)):
    raise DatasetError(
        f"MNIST is not prepared in {builder.data_dir_root} and there is no network to download it: "
        f"put the four original files ({', '.join(MNIST_FILES)}) in {manual_dir} or pass "
        f"--config.data.manual_dir=DIR (missing there: {', '.join(missing)})")
  download_config = tfds.download.DownloadConfig(
      manual_dir=manual_dir if not missing else None, try_download_gcs=False)
  try:
    builder.download_and_prepare(download_config=download_config)
  except NonMatchingChecksumError as e:
    raise DatasetError(f"MNIST files in {manual_dir} fail TFDS's checksum check: "
                       f"{str(e).splitlines()[0]}") from None
  except Exception as e:  # noqa: BLE001 - corrupt gzip/IDX data surfaces as assorted errors.
    raise DatasetError(f"could not prepare MNIST from {manual_dir}: {type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''}") from None
  return builder


def _read_split(builder, split: str) -> dict[str, np.ndarray]:
  import tensorflow_datasets as tfds  # noqa: PLC0415

  try:
    return tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  except Exception as e:  # noqa: BLE001 - corrupt prepared records surface as TF errors.
    raise DatasetError(f"could not read MNIST split {split!r} from {builder.data_dir}: "
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def pad_to_multiple(images: np.ndarray, labels: np.ndarray, multiple: int, min_length: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Appends zero examples with mask 0 so that the count divides `multiple` (and is >= min_length)."""
  count = images.shape[0]
  padded = -(-max(count, min_length) // multiple) * multiple
  mask = np.zeros((padded,), np.float32)
  mask[:count] = 1.0
  images = np.concatenate([images, np.zeros((padded - count, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([labels, np.zeros((padded - count,), labels.dtype)])
  return images, labels, mask


def make_split(images: np.ndarray, labels: np.ndarray, pad_multiple: int = 1,
               sharding: jax.sharding.Sharding | None = None, min_length: int = 0) -> Split:
  """Puts one split on the device(s), padded and masked to a multiple of `pad_multiple`."""
  images, labels, mask = pad_to_multiple(images, labels.astype(np.int32), pad_multiple, min_length)
  return Split(*(jax.device_put(a, sharding) for a in (images, labels, mask)))


def split_names(validation_size: int) -> dict[str, str]:
  """TFDS split strings for train / validation / test."""
  names = {"test": "test"}
  if validation_size:
    names["train"] = f"train[:{MNIST_TRAIN_SIZE - validation_size}]"
    names["validation"] = f"train[{MNIST_TRAIN_SIZE - validation_size}:]"
  else:
    names["train"] = "train"
  return names


@dataclasses.dataclass(frozen=True)
class DataLayout:
  """How the data is cut across processes, so that each process reads only its own share.

  The training split is cut into `num_shards` contiguous shares (`tfds.even_splits`), each with its own
  per-epoch order; process p holds shards [p * k, (p + 1) * k) with k = num_shards / process_count, and
  every global batch takes batch_size / num_shards examples from each shard. The global batch therefore
  depends on `num_shards`, not on how many processes or devices there are: one process with
  `num_shards=2` trains on exactly the batches that two processes do. Validation and test are cut into one
  share per process; every share is padded to the same number of batches and masked.
  """

  num_shards: int = 1
  process_index: int = 0
  process_count: int = 1

  @property
  def local_shards(self) -> range:
    per_process = self.num_shards // self.process_count
    return range(self.process_index * per_process, (self.process_index + 1) * per_process)


def _even_split(split: str, n: int, index: int) -> str:
  if n == 1:
    return split
  import tensorflow_datasets as tfds  # noqa: PLC0415

  return tfds.even_splits(split, n)[index]


def load_mnist(data_config, eval_batch_size: int, sharding: jax.sharding.Sharding | None = None,
               layout: DataLayout = DataLayout()) -> dict[str, Split | list[Split]]:
  """This process's data in memory: `train` is a list of its training shards (unpadded);
  `validation` and `test` are its shares, padded to whole batches of eval_batch_size / processes."""
  builder = mnist_builder(data_config.data_dir, data_config.manual_dir)
  names = split_names(data_config.validation_size)
  splits: dict[str, Split | list[Split]] = {"train": []}
  for shard in layout.local_shards:
    arrays = _read_split(builder, _even_split(names["train"], layout.num_shards, shard))
    splits["train"].append(make_split(arrays["image"], arrays["label"], 1, sharding))
  local_batch = eval_batch_size // layout.process_count
  for name in ("validation", "test"):
    if name not in names:
      continue
    # Every process runs the same number of eval batches, sized by the largest share.
    largest_share = -(-builder.info.splits[names[name]].num_examples // layout.process_count)
    arrays = _read_split(builder, _even_split(names[name], layout.process_count,
                                              layout.process_index))
    splits[name] = make_split(arrays["image"], arrays["label"], local_batch, sharding,
                              min_length=largest_share)
  return splits


def normalize(images: jax.Array) -> jax.Array:
  """uint8 or [0, 255] float pixels -> zero mean, unit variance over MNIST's train set."""
  return (images.astype(jnp.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD


def epoch_permutation(rng: jax.Array, epoch: int | jax.Array, num_examples: int) -> jax.Array:
  """The order of the training examples in `epoch`: a function of the seed and the epoch only."""
  return jax.random.permutation(jax.random.fold_in(rng, epoch), num_examples)


def shard_rng(data_rng: jax.Array, shard: int, num_shards: int) -> jax.Array:
  """Each training shard's own order stream (the whole split's, when there is one shard)."""
  return data_rng if num_shards == 1 else jax.random.fold_in(data_rng, shard)


def take_batch(images: jax.Array, labels: jax.Array, permutation: jax.Array, index: jax.Array,
               batch_size: int) -> dict[str, jax.Array]:
  """The `index`-th batch of an epoch, gathered on device. Jit with `batch_size` static."""
  ids = jax.lax.dynamic_slice_in_dim(permutation, index * batch_size, batch_size)
  return {"image": images[ids], "label": labels[ids]}


def take_local_batch(shards: tuple[tuple[jax.Array, jax.Array], ...],
                     permutations: tuple[jax.Array, ...], index: jax.Array, batch_size: int
                     ) -> dict[str, jax.Array]:
  """This process's part of the global batch: `batch_size` examples from each of its shards."""
  parts = [take_batch(images, labels, permutation, index, batch_size)
           for (images, labels), permutation in zip(shards, permutations, strict=True)]
  return {key: jnp.concatenate([part[key] for part in parts]) for key in parts[0]}


def eval_batches(split: Split, batch_size: int):
  """Yields the split's batches in order, each with its mask; the last one is padded, not dropped."""
  for start in range(0, split.num_examples, batch_size):
    end = start + batch_size
    yield {"image": split.images[start:end], "label": split.labels[start:end],
           "mask": split.mask[start:end]}
