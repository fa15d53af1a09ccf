"""Two local CPU processes (gloo collectives, loopback coordinator) train like one.

Each worker has 4 CPU devices; together they form a hybrid mesh (per-process
(2, 2, 1) times (2, 1, 1) across processes = (4, 2, 1)), load only their half
of every batch, train to step 2 (checkpoint), then resume to step 4 in a
second `train_and_evaluate` call. The losses and eval metrics (decoded sequence
accuracy included) must equal a 1-process run with 8 devices on the same
global batches.
"""

import os
import re
import socket
import subprocess
import sys

import numpy as np

import tiny_setup
from transformer_research import train_loop

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(workdir: str, steps: str) -> list[str]:
  """Runs the 2-process worker (hybrid mesh) to each of `steps`; their outputs."""
  port = _free_port()
  mesh = ["mesh.shape=(-1, 2, 1)", "mesh.dcn_shape=(2, 1, 1)"]
  procs = [subprocess.Popen([sys.executable, WORKER, workdir, f"multihost={i},2,{port},{steps}",
                             *mesh], env=tiny_setup.subprocess_env(JAX_PLATFORMS="cpu"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  try:
    outputs = [p.communicate(timeout=400)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return outputs


def test_two_processes_train_checkpoint_and_resume_like_one(tmp_path):
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  outputs = _two_processes(multi, "2,4")
  for out in outputs:  # The second call resumed collectively from step 2.
    assert re.search(r"resumed from \S+ step 2; training from step 2 to 4", out), out[-3000:]

  train_loop.train_and_evaluate(tiny_setup.task_config(**{"mesh.shape": (-1, 2, 1)}), single)
  got, want = tiny_setup.records(multi), tiny_setup.records(single)
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  # Every metric but the timings: eval records include the decoded metrics
  # (sequence accuracy per length), which each process decodes for its share
  # of the examples and gathers before scoring.
  for g, w in zip(got, want):
    assert g.keys() == w.keys(), (g, w)
    for key in w.keys() - {"step", "split", *tiny_setup.TIMING}:
      np.testing.assert_allclose(g[key], w[key], atol=1e-5, rtol=0, err_msg=f"{key} {g}")
  assert any("sequence_accuracy" in r for r in got)
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["2", "4"]


def test_a_run_saved_by_two_processes_resumes_on_one_at_the_same_data_position(tmp_path):
  """The data iterator's position is the same on every process, so a
  checkpoint of 2 processes resumes on 1 (8 devices) where it stopped."""
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  _two_processes(multi, "2")
  one = subprocess.run(tiny_setup.train_command(multi, **{"mesh.shape": "(-1,2,1)",
                                                          "mesh.dcn_shape": "()"}),
                       env=tiny_setup.subprocess_env(JAX_PLATFORMS="cpu"), capture_output=True,
                       text=True, timeout=400)
  assert one.returncode == 0, one.stderr[-3000:]
  assert re.search(r"resumed from \S+ step 2; training from step 2 to 4", one.stderr)

  train_loop.train_and_evaluate(tiny_setup.task_config(**{"mesh.shape": (-1, 2, 1)}), single)
  got, want = tiny_setup.records(multi), tiny_setup.records(single)
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  for g, w in zip(got, want):
    for key in w.keys() - {"step", "split", *tiny_setup.TIMING}:
      np.testing.assert_allclose(g[key], w[key], atol=1e-5, rtol=0, err_msg=f"{key} {g}")
