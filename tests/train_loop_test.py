"""The training loop (train_loop.py): records, preemption, guardrails.

Resume after a kill, at several moments, is tested through the CLI in
run_safety_test.py.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import tiny_setup
from transformer_research import train_loop

records = tiny_setup.records


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """4 steps in one go."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  state = train_loop.train_and_evaluate(tiny_setup.task_config(), workdir)
  return workdir, jax.device_get(state)


def test_run_writes_records_config_tensorboard_and_checkpoints(straight):
  workdir, state = straight
  rows = records(workdir)
  assert [(r["step"], r["split"]) for r in rows] == [
      (2, "train"), (2, "validation"), (4, "train"), (4, "validation")]
  train = rows[2]
  for key in ("loss", "accuracy", "learning_rate", "grad_norm", "steps_per_sec", "tokens_per_sec"):
    assert np.isfinite(train[key]), key
  assert all(np.isfinite(r["mfu"]) and r["mfu"] > 0 for r in rows if r["split"] == "train")
  assert {"loss", "accuracy", "sequence_accuracy"} <= set(rows[3])  # + the task's metrics.
  assert json.load(open(os.path.join(workdir, "config.json")))["train"]["num_steps"] == 4
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  assert int(state.step) == 4


@pytest.mark.parametrize("stop", ["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_checkpoints_its_step_and_the_rerun_resumes(tmp_path, stop):
  """SIGTERM (a preemption notice) finishes the step, checkpoints it and exits 0.
  Ctrl-C at a terminal (SIGINT, with Python's handler) does the same, then tells
  the shell: one line, and the exit of a process killed by SIGINT."""
  workdir = str(tmp_path)
  command = tiny_setup.train_command(workdir, **{
      "train.num_steps": 100000, "eval.every_steps": 100000, "checkpoint.every_steps": 100000,
      "train.log_every_steps": 1000})
  if stop == "Ctrl-C":
    command = tiny_setup.as_at_a_terminal(command)
  proc = subprocess.Popen(command, env=tiny_setup.subprocess_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  try:
    lines = []
    while not any("first step done" in line for line in lines):
      lines.append(proc.stderr.readline())
      assert lines[-1], "".join(lines)[-3000:]
    proc.send_signal(signal.SIGTERM if stop == "SIGTERM" else signal.SIGINT)
    stderr = "".join(lines) + proc.communicate(timeout=120)[1]
  finally:
    proc.kill()
  assert "Traceback" not in stderr, stderr[-3000:]
  saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert len(saved) == 1 and 1 <= saved[0] < 100000, stderr[-3000:]
  assert records(workdir)[-1]["step"] == saved[0] and records(workdir)[-1]["split"] == "train"
  if stop == "SIGTERM":
    assert proc.returncode == 0, stderr[-3000:]
    assert f"SIGTERM: checkpointed step {saved[0]}, stopping" in stderr
  else:  # Said once, by the last line.
    assert proc.returncode == -signal.SIGINT, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted at step {saved[0]}, after its checkpoint: rerun the command to resume")
    assert "checkpointed step" not in stderr
  rerun = subprocess.run(tiny_setup.train_command(workdir, **{"train.num_steps": saved[0] + 1}),
                         env=tiny_setup.subprocess_env(), capture_output=True, text=True,
                         timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"checkpoints step {saved[0]}; training from step {saved[0]} to" in rerun.stderr


def test_a_ctrl_c_a_library_turned_into_another_error_is_still_a_ctrl_c(tmp_path):
  """Ctrl-C during SentencePiece training printed dm-tree's `AttributeError: 'str'
  object has no attribute 'keys'` with a traceback: the KeyboardInterrupt was
  swallowed in C code. The fault does the same while the task is built."""
  fault = [sys.executable, str(tiny_setup.ROOT / "tests" / "fault_injection.py"),
           "swallowed_ctrl_c=0", *tiny_setup.train_command(tmp_path)[1:]]
  run = subprocess.run(tiny_setup.as_at_a_terminal(fault), env=tiny_setup.subprocess_env(),
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == -signal.SIGINT, run.stderr[-3000:]
  assert "Traceback" not in run.stderr, run.stderr[-3000:]
  assert run.stderr.strip().splitlines()[-1] == "interrupted (Ctrl-C)"
  assert not (tmp_path / "config.json").exists()  # Stopped before the run was accepted.


def test_a_second_ctrl_c_interrupts_at_once_and_an_ignored_one_is_left_alone():
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    preemption = train_loop._Preemption()  # pylint: disable=protected-access
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)  # The handler runs at the next bytecode boundary.
    assert preemption.reached(0) and preemption.interrupts_the_caller
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)
    preemption.close()
    assert signal.getsignal(signal.SIGTERM) is not preemption._handle  # pylint: disable=protected-access
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preemption = train_loop._Preemption()  # pylint: disable=protected-access
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    preemption.close()
  finally:
    signal.signal(signal.SIGINT, previous)


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_setup.task_config(**{
      "train.optimizer": "sgd", "train.learning_rate": 1e30, "train.schedule": "constant",
      "train.warmup_steps": 0, "train.grad_clip_norm": 0.0, "train.num_steps": 20,
      "checkpoint.every_steps": 1, "eval.every_steps": 1000, "train.log_every_steps": 1000})
  with pytest.raises(FloatingPointError, match=r"at step (\d+)") as error:
    train_loop.train_and_evaluate(config, str(tmp_path))
  bad = int(error.value.args[0].split("at step ")[1].split(";")[0])
  saved = [int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]
  assert max(saved) < bad


def test_batch_not_divisible_fails_before_compiling(tmp_path):
  with pytest.raises(ValueError, match=r"config.train.batch_size=12 .* 8 batch shards"):
    train_loop.train_and_evaluate(tiny_setup.task_config(**{"train.batch_size": 12}), str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize("key,value", [("train.dispatch_ahead", 0), ("data.prefetch", 0)])
def test_feeding_depths_below_one_are_refused_before_training(tmp_path, key, value):
  with pytest.raises(ValueError, match=rf"config.{key}=0.*expected an int >= 1"):
    train_loop.train_and_evaluate(tiny_setup.task_config(**{key: value}), str(tmp_path))
  assert not os.listdir(tmp_path)  # Refused before the lock, the cache or a checkpoint.


@pytest.mark.parametrize("override, message", [
    ({"eval.num_samples": -1}, "config.eval.num_samples=-1: expected 0 (none) or a number of "
     "examples in the eval report"),
    ({"eval.max_decode_len": 0}, "config.eval.max_decode_len=0: expected -1"),
    ({"train.dispatch_ahead": 0}, "config.train.dispatch_ahead=0: expected an int >= 1"),
    ({"data.task": "difference", "data.packing": True}, "config.data.packing=True: data.task="
     "'difference' is a classifier, which reads one example a row")])
def test_settings_out_of_range_are_named_before_any_device_is_used(override, message):
  """What launch/sweep.py checks of every run before the first trains (train.py
  checks it too, through _check_config)."""
  with pytest.raises(ValueError, match=re.escape(message)):
    train_loop.check_settings(tiny_setup.task_config(**override))
