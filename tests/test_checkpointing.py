"""Orbax checkpoint policy: latest and best kept, damaged checkpoints set aside, not deleted."""

import jax
import jax.numpy as jnp
import pytest

from alexnet_jax.training import checkpointing


def _state(value: float):
  return {"params": {"w": jnp.full((3,), value)}, "step": jnp.asarray(int(value))}


def test_keeps_the_latest_and_the_best(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "ckpt"), keep_latest=2)
  for step, accuracy in [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7)]:
    checkpointer.save(step, _state(step), val_accuracy=accuracy)
    checkpointer.wait_until_finished()
  checkpointer.save(5, _state(5))  # periodic, no metrics
  checkpointer.wait_until_finished()
  assert checkpointer.all_steps() == [2, 4, 5]
  assert checkpointer.best_step() == 2
  restored = checkpointer.restore(2, _state(0))
  assert float(restored["params"]["w"][0]) == 2.0
  assert checkpointing.resolve_step(checkpointer, "best") == 2
  assert checkpointing.resolve_step(checkpointer, "latest") == 5
  with pytest.raises(checkpointing.CheckpointError, match="checkpoint '3' not found"):
    checkpointing.resolve_step(checkpointer, "3")
  checkpointer.close()


def test_half_written_checkpoint_is_invisible(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
  checkpointer.save(1, _state(1))
  checkpointer.wait_until_finished()
  (tmp_path / "ckpt" / "2.orbax-checkpoint-tmp").mkdir()  # what a kill during a save leaves
  checkpointer.close()
  reopened = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
  restored, step = reopened.restore_latest(_state(0))
  assert step == 1 and float(restored["params"]["w"][0]) == 1.0
  reopened.close()


def test_corrupt_latest_falls_back_and_is_kept_aside(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
  for step in (1, 2):
    checkpointer.save(step, _state(step))
    checkpointer.wait_until_finished()
  for path in (tmp_path / "ckpt" / "2").rglob("*"):
    if path.is_file():
      path.write_bytes(b"garbage")
  restored, step = checkpointer.restore_latest(_state(0))
  assert step == 1 and float(restored["params"]["w"][0]) == 1.0
  assert checkpointer.all_steps() == [1]
  kept = list((tmp_path / "corrupt_checkpoints").iterdir())
  assert len(kept) == 1 and kept[0].name.startswith("2-")
  checkpointer.close()


def test_no_checkpoint_at_all(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
  assert checkpointer.restore_latest(_state(0)) == (None, None)
  with pytest.raises(checkpointing.CheckpointError, match="no checkpoints"):
    checkpointing.resolve_step(checkpointer, "latest")
  checkpointer.close()


def test_best_without_any_validation_metric_is_refused_not_replaced_by_latest(tmp_path):
  """Runs trained with data.validation_size=0 save no metric: 'best' must not quietly mean 'latest'."""
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
  for step in (1, 2):
    checkpointer.save(step, _state(step))
  checkpointer.wait_until_finished()
  with pytest.raises(checkpointing.CheckpointError, match="no checkpoint .* validation accuracy to rank by"):
    checkpointing.resolve_step(checkpointer, "best")
  assert checkpointing.resolve_step(checkpointer, "latest") == 2
  checkpointer.close()


def test_restore_subtree_reads_only_what_is_asked(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
  state = {"params": {"w": jnp.full((3,), 2.0)}, "opt_state": {"mu": jnp.ones((3,))}, "step": jnp.asarray(2)}
  checkpointer.save(2, state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore_subtree(2, {"params": {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}})
  assert set(restored) == {"params"}
  assert restored["params"]["w"].tolist() == [2.0, 2.0, 2.0]
  checkpointer.close()


def _two_checkpoints(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "ckpt"))
  for step in (1, 2):
    checkpointer.save(step, _state(step))
    checkpointer.wait_until_finished()
  return checkpointer


# What TensorStore said, word for word, reading a checkpoint whose array file the process may not read.
_PERMISSION_DENIED = ValueError('PERMISSION_DENIED: Error opening "zarr" driver: Error reading '
                                '"params.w/.zarray" in OCDBT database at local file "ckpt/2/default/": '
                                'Failed to open')


@pytest.mark.parametrize("error", [_PERMISSION_DENIED, PermissionError(13, "Permission denied"),
                                   MemoryError(), OSError(28, "No space left on device"),
                                   ValueError("User-provided restore item and on-disk value metadata tree "
                                              "structures do not match")])
def test_a_checkpoint_that_cannot_be_read_is_not_damage_and_nothing_moves(tmp_path, monkeypatch, error):
  """Only proven damage moves a checkpoint aside; anything else stops with one line, touching nothing."""
  checkpointer = _two_checkpoints(tmp_path)
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

  def fail(step, target):
    raise error

  monkeypatch.setattr(checkpointer, "restore", fail)
  with pytest.raises(checkpointing.CheckpointError) as raised:
    checkpointer.restore_latest(_state(0))
  message = str(raised.value)
  assert "\n" not in message and message.startswith("checkpoint at step 2 in ")
  assert type(error).__name__ in message
  assert "nothing was moved" in message
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
  assert checkpointer.all_steps() == [1, 2]
  checkpointer.close()


def test_real_damage_is_recognised(tmp_path):
  """The errors a truncated array file, a missing one and a garbled metadata file give, as restored."""
  for damage in ("truncate", "delete", "garble_metadata"):
    checkpointer = _two_checkpoints(tmp_path / damage)
    files = sorted(p for p in (tmp_path / damage / "ckpt" / "2").rglob("*") if p.is_file())
    data = [p for p in files if p.parent.name == "d"]
    if damage == "truncate":
      for path in data:
        path.write_bytes(path.read_bytes()[:10])
    elif damage == "delete":
      for path in data:
        path.unlink()
    else:
      (tmp_path / damage / "ckpt" / "2" / "default" / "_METADATA").write_text("{bad")
    with pytest.raises(Exception) as raised:  # noqa: PT011 - what is raised is the point
      checkpointer.restore(2, _state(0))
    assert checkpointing.is_damage(raised.value), (damage, raised.value)
    restored, step = checkpointer.restore_latest(_state(0))
    assert step == 1 and (tmp_path / damage / "corrupt_checkpoints").exists()
    checkpointer.close()


def test_every_checkpoint_damaged_stops_instead_of_starting_over(tmp_path):
  checkpointer = _two_checkpoints(tmp_path)
  for path in (tmp_path / "ckpt").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(b"")
  with pytest.raises(checkpointing.AllCheckpointsDamagedError, match="--start_over"):
    checkpointer.restore_latest(_state(0))
  assert len(list((tmp_path / "corrupt_checkpoints").iterdir())) == 2  # kept, not deleted
  checkpointer.close()


def test_an_unreadable_checkpoint_folder_is_one_line(tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied", str(tmp_path / "ckpt" / "metrics"))

  monkeypatch.setattr(checkpointing.ocp, "CheckpointManager", refuse)
  with pytest.raises(checkpointing.CheckpointError, match=r"cannot open the checkpoints \(PermissionError"):
    checkpointing.Checkpointer(str(tmp_path / "ckpt"))
