"""rundir.py: the lock's holders (live, dead, on other hosts) and which config may continue a run.

The command-line behaviour (a second launch/train.py refused, a killed run's
lock taken over) is tested in run_safety_test.py; these cover the cases a
single machine cannot stage with real processes.
"""

import json
import socket
import time

import pytest

from transformer_research import configs
from transformer_research import rundir


def _write_holder(tmp_path, **fields):
  holder = {"host": socket.gethostname(), "pid": 1, "start_time": time.time(),
            "process_start": "no such start", "heartbeat": time.time(), **fields}
  (tmp_path / "lock").write_text(json.dumps(holder))


def test_a_live_holder_is_named_and_the_lock_released_after_use(tmp_path):
  with rundir.RunLock(str(tmp_path)):
    with pytest.raises(rundir.RunDirectoryInUse, match=r"in use by pid \d+ on host .*started "):
      rundir.RunLock(str(tmp_path)).acquire()
  assert not (tmp_path / "lock").exists()
  rundir.RunLock(str(tmp_path)).acquire()  # Free again.


def test_a_dead_holder_on_this_host_is_stale(tmp_path, caplog):
  _write_holder(tmp_path)  # pid 1 with another start time: a reused pid.
  lock = rundir.RunLock(str(tmp_path))
  lock.acquire()
  assert "taking over the stale lock" in caplog.text
  assert json.loads((tmp_path / "lock").read_text())["pid"] != 1
  lock.release()


@pytest.mark.parametrize("age,stale", [(10.0, False), (1000.0, True)])
def test_a_holder_on_another_host_is_stale_when_its_heartbeat_stops(tmp_path, age, stale):
  _write_holder(tmp_path, host="other-host", heartbeat=time.time() - age)
  lock = rundir.RunLock(str(tmp_path), stale_after_s=120.0)
  if stale:
    lock.acquire()
    lock.release()
  else:
    with pytest.raises(rundir.RunDirectoryInUse, match="on host other-host"):
      lock.acquire()


def test_a_torn_lock_file_is_stale(tmp_path):
  (tmp_path / "lock").write_text('{"host": "x", "pi')  # Killed while writing it.
  lock = rundir.RunLock(str(tmp_path))
  lock.acquire()
  lock.release()


def test_the_heartbeat_keeps_the_lock_fresh(tmp_path):
  lock = rundir.RunLock(str(tmp_path), heartbeat_s=0.05)
  lock.acquire()
  first = json.loads((tmp_path / "lock").read_text())["heartbeat"]
  time.sleep(0.5)
  assert json.loads((tmp_path / "lock").read_text())["heartbeat"] > first
  lock.release()


def _saved(config) -> dict:
  return json.loads(config.to_json_best_effort())


def test_fields_that_train_another_model_are_refused_others_listed():
  old = configs.load_config("reverse:tiny,smoke")
  new = configs.load_config("reverse:tiny,smoke", {"train.num_steps": 40, "eval.beam_size": 2,
                                                   "mesh.shape": (2, 2, 2)})
  assert rundir.check_continues(_saved(old), new, "/run") == [
      "eval.beam_size: 4 -> 2", "mesh.shape: [-1, 1, 1] -> [2, 2, 2]",
      "train.num_steps: 20 -> 40"]
  for field, value in [("model.num_heads", 2), ("seed", 1), ("data.num_symbols", 8)]:
    with pytest.raises(ValueError, match=f"holds a run with {field}="):
      rundir.check_continues(_saved(old), configs.load_config("reverse:tiny,smoke",
                                                              {field: value}), "/run")


def test_sizes_are_compared_as_the_model_has_them():
  """-1 keeps the variant's size: spelt out, it is the same model."""
  old = configs.load_config("reverse:tiny,smoke")
  same = configs.load_config("reverse:tiny,smoke", {"model.d_model": 32, "model.d_ff": 64})
  assert rundir.check_continues(_saved(old), same, "/run") == []
  assert rundir.check_continues(_saved(same), old, "/run") == []
  with pytest.raises(ValueError, match="model.d_model=32; this config has 64"):
    rundir.check_continues(_saved(old), configs.load_config("reverse:tiny,smoke",
                                                            {"model.d_model": 64}), "/run")


def test_how_the_same_model_is_computed_or_fed_may_change_its_layout_may_not():
  old = configs.load_config("reverse:tiny,smoke")
  new = configs.load_config("reverse:tiny,smoke", {"model.remat": "full", "data.prefetch": 4,
                                                   "train.dispatch_ahead": 3})
  assert rundir.check_continues(_saved(old), new, "/run") == [
      "data.prefetch: 2 -> 4", "model.remat: 'none' -> 'full'", "train.dispatch_ahead: 2 -> 3"]
  with pytest.raises(ValueError, match="model.scan_layers=False; this config has True.*fit "
                                       "neither a resume nor a warm start"):
    rundir.check_continues(_saved(old), configs.load_config("reverse:tiny,smoke",
                                                            {"model.scan_layers": True}), "/run")


def test_a_field_added_since_the_run_started_is_fine_at_its_default(tmp_path):
  config = configs.load_config("reverse:tiny,smoke")
  older = _saved(config)
  del older["model"]["pooling"]  # As if the run predates the field.
  (tmp_path / "config.json").write_text(json.dumps(older))
  previous = rundir.previous_config(str(tmp_path))
  assert previous.model.pooling == "mean"  # The behaviour the run had: the default.
  assert rundir.check_continues(previous, config, "/run") == []
  with pytest.raises(ValueError, match="model.pooling='mean'; this config has 'cls'"):
    rundir.check_continues(previous, configs.load_config("reverse:tiny,smoke",
                                                         {"model.pooling": "cls"}), "/run")
  assert rundir.previous_config(str(tmp_path / "new")) is None


def test_the_transfer_fields_a_resume_may_and_may_not_change():
  """Which columns, classes and masking a run learns from are fixed; the run directory the
  tokenizer was copied from at the first start is free (the copy is in this run's directory);
  train.frozen / lr_multipliers are refused by the checkpoint's optimizer state instead
  (run_safety_test), and only when the state's layout changes."""
  old = configs.load_config("imdb_finetune:tiny,smoke")
  moved = configs.load_config("imdb_finetune:tiny,smoke", {"data.tokenizer_from": "/new/mlm"})
  assert rundir.check_continues(_saved(old), moved, "/run") == [
      "data.tokenizer_from: '' -> '/new/mlm'"]
  for field, value in [("data.text_field", "sentence"), ("data.label_field", "sentiment"),
                       ("data.class_names", ("neg", "pos")), ("data.mask_rate", 0.3)]:
    with pytest.raises(ValueError, match=f"holds a run with {field}="):
      rundir.check_continues(_saved(old), configs.load_config("imdb_finetune:tiny,smoke",
                                                              {field: value}), "/run")
