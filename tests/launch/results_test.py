"""A shipped recipe reaches its result from the command line, through a preemption.

`configs/reverse.py` as the README gives it, with fewer steps: the run is
stopped by SIGTERM once its first checkpoint exists, the same command is run
again and must resume there and finish with >= 95% sequence accuracy on the
lengths it was trained on. Minutes on 2 cores, so `slow` (`pytest -m slow`).
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import tiny_setup

STEPS = 1500


def _command(workdir) -> list[str]:
  return [sys.executable, str(tiny_setup.ROOT / "launch" / "train.py"),
          "--config=configs/reverse.py", f"--workdir={workdir}",
          f"--config.train.num_steps={STEPS}"]


@pytest.mark.slow
def test_reverse_trains_to_95_percent_through_a_preemption(tmp_path):
  # As a user runs it: one CPU device, no test-suite XLA flags.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  first = subprocess.Popen(_command(tmp_path), cwd=tiny_setup.ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 900
  while not (tmp_path / "checkpoints" / "500").is_dir():
    assert first.poll() is None and time.time() < deadline, "no checkpoint of step 500"
    time.sleep(1)
  first.send_signal(signal.SIGTERM)  # A preemption: checkpoint and stop.
  _, stderr = first.communicate(timeout=300)
  assert first.returncode == 0, stderr[-3000:]
  stopped = max(r["step"] for r in tiny_setup.records(tmp_path))
  assert 500 <= stopped < STEPS

  second = subprocess.run(_command(tmp_path), cwd=tiny_setup.ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
  assert second.returncode == 0, second.stderr[-3000:]
  starts = [json.loads(line) for line in open(tmp_path / "runs.jsonl")]
  assert len(starts) == 2 and starts[1]["origin"].startswith("resumed from")
  train_steps = [r["step"] for r in tiny_setup.records(tmp_path) if r["split"] == "train"]
  assert train_steps == sorted(set(train_steps)) and train_steps[-1] == STEPS
  final = [r for r in tiny_setup.records(tmp_path) if r["split"] == "validation"][-1]
  assert final["step"] == STEPS
  assert final["sequence_accuracy_trained_lengths"] >= 0.95, final
