"""A small network that sees each candidate digit of `read_number` in its surroundings, judges whether it
is exactly one whole digit, and reads which digit it is.

The digit network reads each candidate alone, centred in a 28x28 field: a 2 whose tail was cut off, or the
tail itself, looks like a whole digit there, and so does a 5 missing the 1 that overlaps it. Whether a
piece of ink is a whole digit shows in what lies around it, and so, where digits overlap, does which digit
it is: the strokes a cut took from it, or left on it, are in view. So each candidate is shown here as a
window on the string (`context_views`): TALL digit heights high, centred on the candidate's box, with two
channels, all the ink in the window and the candidate's own ink. A three-layer CNN (`ContextNet`) reads the
window and gives the logit of P(one whole digit) and the logits of its digit. `number_reader`'s verifier
reads the first (recalibrated on validation strings) in place of the digit network's penultimate features;
`read_number.read_in_context` combines the second with the digit network's reading of the candidates cut
from a wider component.

It is trained on the candidates of strings composed from the run's **training** digits (never validation
or test), labelled as the verifier's are (`number_reader.matched_digits`):
`python -m experiments.train_context_verifier --workdir RUN`. Its weights are stored with the run, in
RUN/context_verifier (Orbax), since the number reader fitted on top of it is.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import scipy.ndimage as ndi

from alexnet_jax.inference import read_number

CHECKPOINT_DIR = "context_verifier"
ROWS, COLS = 24, 40  # the window, in samples: 1.6 digit heights high, 2.67 wide
TALL = 1.6  # digit heights the window spans vertically: the candidate and a little of its line
FEATURES = (16, 32, 64)  # channels of the three convolutions (each followed by 2x2 max-pooling)
DENSE = 128
DIGITS = 10
BATCH = 256  # views per step and per call: a 5-digit string has about 100-200 candidates


class ContextNet(nn.Module):
  """(N, ROWS, COLS, 2) windows -> (N, 1 + DIGITS): the logit of P(the candidate is one whole digit), then
  the logits of which digit it is, if it is one (read with its neighbours in view)."""

  @nn.compact
  def __call__(self, views: jax.Array) -> jax.Array:
    x = views
    for features in FEATURES:
      x = nn.max_pool(nn.relu(nn.Conv(features, (3, 3))(x)), (2, 2), (2, 2))
    x = nn.relu(nn.Dense(DENSE)(x.reshape(x.shape[0], -1)))
    return nn.Dense(1 + DIGITS)(x)


def loss(outputs: jax.Array, digits: jax.Array) -> jax.Array:
  """Mean over candidates of the whole-or-not cross-entropy, plus that of the digit for whole ones
  (`digits`: the class, or -1 for a fragment or a merge)."""
  whole = digits >= 0
  judged = optax.sigmoid_binary_cross_entropy(outputs[:, 0], whole.astype(outputs.dtype))
  read = optax.softmax_cross_entropy_with_integer_labels(outputs[:, 1:], jnp.maximum(digits, 0))
  return (judged + jnp.where(whole, read, 0.0)).mean()


def context_views(pieces: read_number.Pieces, segments: np.ndarray) -> np.ndarray:
  """(m, ROWS, COLS, 2) float16: each candidate's window, sampled bilinearly from the flattened ink (channel
  0) and from the ink of the candidate's own pieces (channel 1). One sampling for all candidates: the piece
  each sample falls in is looked up once (nearest pixel) and compared with each candidate's run."""
  segments = np.asarray(segments, np.int64).reshape(-1, 2)
  boxes = np.array([read_number.union_box(pieces.boxes[first:stop]) for first, stop in segments], float)
  step = TALL * pieces.height / ROWS
  centre_x, centre_y = (boxes[:, 0] + boxes[:, 2] - 1) / 2, (boxes[:, 1] + boxes[:, 3] - 1) / 2
  ys = centre_y[:, None, None] + (np.arange(ROWS)[None, :, None] - (ROWS - 1) / 2) * step
  xs = centre_x[:, None, None] + (np.arange(COLS)[None, None, :] - (COLS - 1) / 2) * step
  coordinates = np.stack(np.broadcast_arrays(ys, xs))
  ink = ndi.map_coordinates(pieces.ink, coordinates, order=1, cval=0.0)
  owner = ndi.map_coordinates(pieces.owner, coordinates, order=0, cval=-1)
  mine = (owner >= segments[:, 0, None, None]) & (owner < segments[:, 1, None, None])
  return np.stack([ink, ink * mine], axis=-1).astype(np.float16)


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
  epochs: int = 3
  learning_rate: float = 2e-3  # Adam, cosine-decayed to 0 over the whole run
  batch_size: int = BATCH
  seed: int = 0


def train(views: np.ndarray, digits: np.ndarray, settings: TrainingSettings = TrainingSettings(),
          log: Callable[[str], None] = print) -> dict[str, Any]:
  """The parameters of a ContextNet fitted to `digits` (each candidate's class, -1 where it is not one
  whole digit) by `loss`. The initialisation and each epoch's order come from `settings.seed` alone
  (jax.random.fold_in)."""
  model = ContextNet()
  key = jax.random.key(settings.seed)
  params = model.init(jax.random.fold_in(key, 0), jnp.zeros((1, ROWS, COLS, 2)))
  steps_per_epoch = len(digits) // settings.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"{len(digits)} candidates are fewer than one batch of {settings.batch_size}")
  schedule = optax.cosine_decay_schedule(settings.learning_rate, settings.epochs * steps_per_epoch)
  optimizer = optax.adam(schedule)
  state = optimizer.init(params)

  @jax.jit
  def step(params, state, x, y):
    value, grads = jax.value_and_grad(lambda p: loss(model.apply(p, x), y))(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  targets = np.asarray(digits, np.int32)
  for epoch in range(settings.epochs):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1 + epoch), len(targets)))
    losses = []
    for i in range(steps_per_epoch):
      batch = order[i * settings.batch_size:(i + 1) * settings.batch_size]
      params, state, value = step(params, state, jnp.asarray(views[batch], jnp.float32), targets[batch])
      losses.append(value)
    log(f"context verifier: epoch {epoch + 1}/{settings.epochs}, mean loss {float(np.mean(losses)):.4f}")
  return jax.device_get(params)


def logits_fn(params: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
  """Views -> (m, 1 + DIGITS) outputs (ContextNet), in batches of a fixed size (one compilation for any
  number of candidates)."""
  apply = jax.jit(ContextNet().apply)

  def logits(views: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(views), BATCH):
      chunk = np.asarray(views[start:start + BATCH], np.float32)
      padded = np.pad(chunk, ((0, BATCH - len(chunk)), (0, 0), (0, 0), (0, 0)))
      out.append(np.asarray(apply(params, padded))[:len(chunk)])
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, 1 + DIGITS))

  return logits


def candidate_logits(params: dict[str, Any]) -> read_number.ContextFn:
  """What `read_number.find_candidates` takes as `context_fn`: (pieces, segments) -> (m, 1 + DIGITS)."""
  logits = logits_fn(params)
  return lambda pieces, segments: logits(context_views(pieces, segments))


def stored_candidate_logits(workdir: str) -> read_number.ContextFn:
  """`candidate_logits` of the run's stored context verifier (ValueError where it has none)."""
  return candidate_logits(load(workdir))


def _directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def save(workdir: str, params: dict[str, Any]) -> str:
  """Writes the parameters to RUN/context_verifier (replacing any there) and returns that path."""
  path = _directory(workdir)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, params, force=True)
  return path


def exists(workdir: str) -> bool:
  return os.path.isdir(_directory(workdir))


def load(workdir: str) -> dict[str, Any]:
  """The stored parameters; ValueError naming the folder when they are missing, cannot be read, or are of
  another shape (one stored before the digit head was added)."""
  path = _directory(workdir)
  if not exists(workdir):
    raise ValueError(f"{path}: no context verifier stored (python -m experiments.train_context_verifier "
                     f"--workdir {workdir} trains one)")
  retrain = f"train it again: python -m experiments.train_context_verifier --workdir {workdir}"
  target = ContextNet().init(jax.random.key(0), jnp.zeros((1, ROWS, COLS, 2)))
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      # Shapes compared before restoring: a restore that fails on one leaves Orbax's threads to complain at
      # exit.
      stored = getattr(checkpointer.metadata(path), "item_metadata", None)
      same = stored is not None and _shapes(getattr(stored, "tree", stored)) == _shapes(target)
      params = jax.device_get(checkpointer.restore(path, target)) if same else None
  except Exception as e:  # Orbax and TensorStore raise many kinds for a damaged or foreign folder
    raise _unreadable(path, f"{type(e).__name__}: {e}", retrain) from None
  if stored is None:
    raise _unreadable(path, "no metadata of its arrays", retrain)
  if params is None:
    raise ValueError(f"{path}: the context verifier stored there is of another shape; {retrain}")
  return params


def _shapes(tree: Any) -> Any:
  return jax.tree_util.tree_map(lambda leaf: tuple(getattr(leaf, "shape", ())), tree)


def _unreadable(path: str, detail: str, retrain: str) -> ValueError:
  first_line = detail.strip().splitlines()[0] if detail.strip() else ""
  return ValueError(f"{path}: the context verifier cannot be read ({first_line}); {retrain}")
