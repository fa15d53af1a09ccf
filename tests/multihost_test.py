"""Multi-process runs through launch/train.py itself, started as a pod run is.

Two local CPU processes (gloo collectives, a loopback coordinator, bounded
waits) each run the README's command with their own `--process_id`. They
must: train, checkpoint and resume exactly like one process with all the
devices; stop together and exit 0 on SIGTERM; stop (non-zero) soon after one
of them is killed, and resume from the last checkpoint when all are rerun;
refuse inconsistent launch flags, different configs, different training data
and a run directory that is not one directory for all of them with one clear
line.
A persistent compilation cache shared by the runs of a test keeps reruns
from compiling again.
"""

import json
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import tiny_setup
from transformer_research import train_loop

TRAIN = str(tiny_setup.ROOT / "launch" / "train.py")
REVERSE = f"--config={tiny_setup.ROOT / 'configs' / 'reverse.py'}:tiny,smoke"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(tmp_path: pathlib.Path, devices: int) -> dict[str, str]:
  return tiny_setup.subprocess_env(
      JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
      JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


class _Launch:
  """The same command on processes 0..N-1 of one run, output in per-process logs."""

  def __init__(self, tmp_path, name: str, args: list[str], env: dict[str, str],
               per_process: tuple[list[str], ...] = ([], []),
               cwds: tuple[pathlib.Path | None, ...] = (None, None)):
    port = _free_port()
    self.logs = [tmp_path / f"{name}_{i}.log" for i in range(len(per_process))]
    self.procs = []
    for i, (extra, cwd, log) in enumerate(zip(per_process, cwds, self.logs)):
      with open(log, "w") as out:
        self.procs.append(subprocess.Popen(tiny_setup.as_at_a_terminal(
            [sys.executable, TRAIN, f"--coordinator_address=127.0.0.1:{port}",
             f"--num_processes={len(per_process)}", f"--process_id={i}", "--init_timeout_s=120",
             "--heartbeat_timeout_s=10", *args, *extra]),
            env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT))

  def output(self, i: int) -> str:
    return self.logs[i].read_text()

  def refused(self, timeout: float) -> list[str]:
    """Each process's one `error: ...` line, once all exited 1 (a user's error: no traceback)."""
    codes = self.wait(timeout)
    assert codes == [1] * len(self.procs), [self.output(i)[-3000:] for i in range(len(codes))]
    lines = []
    for i in range(len(self.procs)):
      errors = [line for line in self.output(i).splitlines() if line.startswith("error: ")]
      assert len(errors) == 1 and "Traceback" not in self.output(i), self.output(i)[-3000:]
      lines.append(errors[0])
    return lines

  def wait(self, timeout: float) -> list[int]:
    """Exit codes; kills whatever is still running after `timeout` seconds."""
    deadline = time.time() + timeout
    try:
      return [p.wait(timeout=max(deadline - time.time(), 0.1)) for p in self.procs]
    finally:
      self.kill()

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def wait_for(self, condition, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not condition():
      if time.time() > deadline or any(p.poll() is not None for p in self.procs):
        self.kill()
        raise AssertionError(f"{what} never happened:\n" + self.output(0)[-3000:])
      time.sleep(0.2)


def _steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())


def test_two_processes_train_checkpoint_and_resume_like_one(tmp_path):
  """4 CPU devices per process on a hybrid mesh (per-process (2, 2, 1) times
  (2, 1, 1) across processes = (4, 2, 1)); each loads half of every batch. Run
  to step 2 (checkpoint), rerun to step 4: the losses and eval metrics (decoded
  sequence accuracy included) equal one process with 8 devices."""
  multi, single = tmp_path / "multi", tmp_path / "single"
  env = _env(tmp_path, devices=4)
  args = [REVERSE, f"--workdir={multi}", "--config.mesh.shape=(-1, 2, 1)",
          "--config.mesh.dcn_shape=(2, 1, 1)", *tiny_setup.flags()]
  for num_steps in (2, 4):
    launch = _Launch(tmp_path, f"to{num_steps}", args + [f"--config.train.num_steps={num_steps}"],
                     env)
    codes = launch.wait(timeout=400)
    assert codes == [0, 0], launch.output(0)[-3000:] + launch.output(1)[-3000:]
  for i in range(2):  # The rerun resumed collectively from step 2.
    assert re.search(r"resumed from \S+ step 2; training from step 2 to 4", launch.output(i))

  train_loop.train_and_evaluate(tiny_setup.task_config(**{"mesh.shape": (-1, 2, 1)}), str(single))
  got, want = tiny_setup.records(str(multi)), tiny_setup.records(str(single))
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  # Every metric but the timings: eval records include the decoded metrics
  # (sequence accuracy per length), which each process decodes for its share
  # of the examples and gathers before scoring.
  for g, w in zip(got, want):
    assert g.keys() == w.keys(), (g, w)
    for key in w.keys() - {"step", "split", *tiny_setup.TIMING}:
      np.testing.assert_allclose(g[key], w[key], atol=1e-5, rtol=0, err_msg=f"{key} {g}")
  assert any("sequence_accuracy" in r for r in got)
  assert _steps(multi) == [2, 4]


def test_sigkill_of_one_process_stops_the_other_then_sigterm_or_ctrl_c_stops_both_at_one_step(tmp_path):
  """An LM on local text with a SentencePiece model that process 0 trains and
  broadcasts (process 1 never reads it from disk). SIGKILL of process 1: process
  0 exits non-zero within the heartbeat timeout. Rerunning both resumes from
  the last checkpoint; SIGTERM to both then checkpoints one step on both and
  exits 0, and so does a Ctrl-C (SIGINT) of process 1 alone on a third start."""
  words = ["good", "bad", "movie", "plot", "actor", "long", "fun", "boring", "story",
           "music", "ending", "great", "awful", "scene", "film", "the", "a", "was"]
  rng = np.random.default_rng(0)
  reviews = tmp_path / "reviews.jsonl"
  reviews.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 12))}) + "\n"
                             for _ in range(200)))
  workdir = tmp_path / "run"
  args = [f"--config={tiny_setup.ROOT / 'configs' / 'lm_imdb.py'}:tiny,smoke",
          f"--workdir={workdir}", f"--config.data.train_path={reviews}",
          "--config.data.vocab_size=40", "--config.data.max_target_len=16",
          "--config.data.num_buckets=1", "--config.model.num_decoder_layers=1",
          "--config.train.batch_size=8", "--config.train.num_steps=100000",
          "--config.train.log_every_steps=1", "--config.eval.every_steps=100000",
          "--config.checkpoint.every_steps=3"]
  env = _env(tmp_path, devices=1)

  first = _Launch(tmp_path, "killed", args, env)
  first.wait_for(lambda: (workdir / "checkpoints" / "3").is_dir(), "a checkpoint at step 3")
  first.procs[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  codes = first.wait(timeout=120)
  assert codes[1] == -signal.SIGKILL
  assert codes[0] != 0, first.output(0)[-3000:]
  assert time.time() - killed_at < 100  # Noticed within the 10 s heartbeat timeout (+ slack).
  last = _steps(workdir)[-1]
  assert list(workdir.glob("spm_lm_imdb_40.model"))  # Written by process 0 alone.

  second = _Launch(tmp_path, "rerun", args, env)
  second.wait_for(lambda: _steps(workdir)[-1] > last, "a checkpoint after the resumed step")
  for p in second.procs:
    p.send_signal(signal.SIGTERM)
  codes = second.wait(timeout=120)
  assert codes == [0, 0], second.output(0)[-3000:] + second.output(1)[-3000:]
  stopped = []
  for i in range(2):
    out = second.output(i)
    assert re.search(rf"resumed from \S+ step {last}; training from step {last} ", out), out[-3000:]
    stopped += [int(s) for s in re.findall(r"SIGTERM: checkpointed step (\d+)", out)]
  assert len(stopped) == 2 and stopped[0] == stopped[1] and stopped[0] in _steps(workdir)

  # Ctrl-C reaching one process (its terminal): it becomes that process's
  # SIGTERM, so both still stop together at a checkpointed step.
  third = _Launch(tmp_path, "ctrl_c", args, env)
  third.wait_for(lambda: _steps(workdir)[-1] > stopped[0], "a checkpoint after the resumed step")
  third.procs[1].send_signal(signal.SIGINT)
  codes = third.wait(timeout=120)
  assert codes == [0, 0], third.output(0)[-3000:] + third.output(1)[-3000:]
  stopped = [int(s) for i in range(2)
             for s in re.findall(r"(?:SIGTERM|Ctrl-C): checkpointed step (\d+)", third.output(i))]
  assert len(stopped) == 2 and stopped[0] == stopped[1] and stopped[0] in _steps(workdir)
  assert "Ctrl-C: checkpointed step" in third.output(1)


def _single(tmp_path, *flags: str, timeout: float = 120) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, TRAIN, REVERSE, f"--workdir={tmp_path / 'run'}", *flags],
                        env=_env(tmp_path, devices=1), capture_output=True, text=True,
                        timeout=timeout)


def test_inconsistent_launch_flags_are_one_line_errors(tmp_path):
  cases = [
      (["--num_processes=2"], "--num_processes given without --coordinator_address=HOST:PORT"),
      (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
       "--process_id=2 is out of range for --num_processes=2: expected 0 to 1"),
      (["--coordinator_address=127.0.0.1", "--num_processes=2", "--process_id=0"],
       "expected HOST:PORT"),
      (["--coordinator_address=127.0.0.1:1"], "needs --num_processes and --process_id"),
  ]
  for flags, message in cases:
    result = _single(tmp_path, *flags)
    assert result.returncode == 1 and message in result.stderr, (flags, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_a_coordinator_that_never_answers_is_a_bounded_wait_and_one_line(tmp_path):
  start = time.time()
  result = _single(tmp_path, f"--coordinator_address=127.0.0.1:{_free_port()}",
                   "--num_processes=2", "--process_id=1", "--init_timeout_s=3")
  assert result.returncode == 1, result.stderr[-2000:]
  assert "error: process 1 of 2: the coordinator at 127.0.0.1:" in result.stderr
  assert "within --init_timeout_s=3" in result.stderr and "Traceback" not in result.stderr
  assert time.time() - start < 100


def test_processes_with_different_configs_are_refused_naming_the_field(tmp_path):
  launch = _Launch(tmp_path, "mismatch", [REVERSE, f"--workdir={tmp_path / 'run'}"],
                   _env(tmp_path, devices=1),
                   per_process=(["--config.train.batch_size=8"], ["--config.train.batch_size=16"]))
  codes = launch.wait(timeout=200)
  assert all(c != 0 for c in codes)
  assert ("error: process 1 was started with a different config than process 0: "
          "train.batch_size is 16 there and 8 on process 0") in launch.output(0)
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_processes_that_do_not_share_the_run_directory_are_refused(tmp_path):
  """Two --workdir paths stand for a host-local path on two hosts: each host
  would hold only its own checkpoint shards, and no resume could read them."""
  here, there = tmp_path / "host0", tmp_path / "host1"
  launch = _Launch(tmp_path, "unshared", [REVERSE], _env(tmp_path, devices=1),
                   per_process=([f"--workdir={here}"], [f"--workdir={there}"]))
  codes = launch.wait(timeout=200)
  assert all(c != 0 for c in codes), codes
  for i, workdir in enumerate((here, there)):
    assert (f"error: --workdir={workdir} is not one directory for every process: "
            "process(es) [1] could not read the file process 0 wrote there") in launch.output(i)
  assert list(here.iterdir()) == [] and not (there / "checkpoints").exists()


# The advice that ends every "reads other ... than process 0" error.
_SAME_FILES = (r"every process reads all of it; give every host the same files \(or read them "
               r"from one bucket\)")


def _hosts_with_reviews(tmp_path, stale: str | None = None,
                        missing: str | None = None) -> tuple[pathlib.Path, pathlib.Path]:
  """Two hosts' directories, each with reviews.jsonl and test.jsonl; host 1's
  copy of `stale` lacks its last 50 lines, and it has no `missing`."""
  rng = np.random.default_rng(0)
  words = ["good", "bad", "movie", "plot", "actor", "long", "fun", "boring", "story"]
  reviews = [json.dumps({"text": " ".join(rng.choice(words, 12))}) for _ in range(200)]
  hosts = (tmp_path / "host0", tmp_path / "host1")
  for host in hosts:
    host.mkdir()
    for name in ("reviews.jsonl", "test.jsonl"):
      if host == hosts[1] and name == missing:
        continue
      copy = reviews[:150] if host == hosts[1] and name == stale else reviews
      (host / name).write_text("\n".join(copy) + "\n")
  return hosts


def _lm_on_reviews(workdir: pathlib.Path) -> list[str]:
  """A tiny LM on the relative paths reviews.jsonl and test.jsonl (each host's own copy)."""
  return [f"--config={tiny_setup.ROOT / 'configs' / 'lm_imdb.py'}:tiny,smoke",
          f"--workdir={workdir}", "--config.data.train_path=reviews.jsonl",
          "--config.data.eval_path=test.jsonl", "--config.data.vocab_size=30",
          "--config.model.num_decoder_layers=1", "--config.train.batch_size=8",
          "--config.train.num_steps=4"]


def test_a_data_file_missing_on_one_host_stops_every_process_naming_it(tmp_path):
  """Process 1 found no test.jsonl and stopped alone; process 0 stopped in its
  next collective with `Gloo AllGather failed: Connection closed by peer` (on
  a TPU, only at the heartbeat timeout). Every process now names process 1
  and the missing file."""
  hosts = _hosts_with_reviews(tmp_path, missing="test.jsonl")
  workdir = tmp_path / "run"
  errors = _Launch(tmp_path, "missing", _lm_on_reviews(workdir), _env(tmp_path, devices=1),
                   cwds=hosts).refused(200)
  reason = "config.data.eval_path: paths='test.jsonl': no such file"
  assert errors == [f"error: process 0: process 1 stopped: {reason}",
                    f"error: process 1: {reason}"]
  assert not list((workdir / "checkpoints").glob("[0-9]*"))


@pytest.mark.parametrize("stale, flags, what", [
    ("reviews.jsonl", [], "training data"),  # Refused before step 0.
    ("test.jsonl", ["--config.eval.split=test", "--config.eval.every_steps=2"],
     "data for the test split"),  # Refused at the first eval, which hung before.
])
def test_processes_that_read_different_data_are_refused(tmp_path, stale, flags, what):
  """Relative data paths read from two directories stand for a stale copy of
  the files on one host: each process would take its rows of every global
  batch from its own copy (an eval split of another length hung the run in
  the eval's collectives). Both stop with one line naming what differs and
  where the data was read."""
  hosts = _hosts_with_reviews(tmp_path, stale=stale)
  workdir = tmp_path / "run"
  args = [*_lm_on_reviews(workdir), *flags]
  errors = _Launch(tmp_path, "stale", args, _env(tmp_path, devices=1), cwds=hosts).refused(200)
  for i, error in enumerate(errors):
    assert re.fullmatch(
        rf"error: process {i}: process 1 reads other {what} than process 0 \(num_examples "
        r"\d+ there, \d+ on process 0; data_sha256 '\w+' there, '\w+' on process 0\) at the "
        r"run's data paths \(data.train_path='reviews.jsonl', data.eval_path='test.jsonl'\): "
        + _SAME_FILES, error)
  assert not list((workdir / "checkpoints").glob("[0-9]*"))


def test_processes_that_warm_start_from_different_checkpoints_are_refused(tmp_path):
  """A warm-start source copied to each host's disk, stale on one (its copy
  lacks the latest step): the processes started from different parameters and
  trained on as one model without a word. Both stop with one line naming the
  steps; nothing is trained. With no copy on one host, both name that host."""
  source = tmp_path / "source"
  trained = subprocess.run(tiny_setup.train_command(source), env=tiny_setup.subprocess_env(),
                           capture_output=True, text=True, timeout=300)
  assert trained.returncode == 0, trained.stderr[-3000:]
  hosts = (tmp_path / "host0", tmp_path / "host1")
  for host in hosts:
    shutil.copytree(source, host / "source")
  shutil.rmtree(hosts[1] / "source" / "checkpoints" / "4")
  workdir = tmp_path / "run"
  args = [REVERSE, f"--workdir={workdir}", "--config.checkpoint.init_from=source",
          *tiny_setup.flags(**{"train.num_steps": 6})]
  errors = _Launch(tmp_path, "warm", args, _env(tmp_path, devices=1), cwds=hosts).refused(200)
  for i, error in enumerate(errors):
    assert re.fullmatch(
        rf"error: process {i}: process 1 reads other warm-start parameters than process 0 "
        r"\(step 2 there, 4 on process 0; metadata_sha256 '\w+' there, '\w+' on process 0\) "
        r"at config.checkpoint.init_from='source': " + _SAME_FILES, error)
  assert not list((workdir / "checkpoints").glob("[0-9]*"))

  # No copy at all on host 1: process 0 stopped on a lost peer, naming neither.
  shutil.rmtree(hosts[1] / "source")
  errors = _Launch(tmp_path, "absent", args, _env(tmp_path, devices=1), cwds=hosts).refused(200)
  reason = f"config.checkpoint.init_from='{hosts[1] / 'source'}': no checkpoint found there"
  assert errors == [f"error: process 0: process 1 stopped: {reason}", f"error: process 1: {reason}"]
  assert not list((workdir / "checkpoints").glob("[0-9]*"))


@pytest.mark.slow  # The 2-process run and its resume are in the default suite (above).
def test_a_run_saved_by_two_processes_resumes_on_one_at_the_same_data_position(tmp_path):
  """The data iterator's position is the same on every process, so a
  checkpoint of 2 processes resumes on 1 (8 devices) where it stopped, and the
  run ends as a 1-process run would."""
  multi, single = tmp_path / "multi", tmp_path / "single"
  args = [REVERSE, f"--workdir={multi}", "--config.mesh.shape=(-1, 2, 1)",
          "--config.mesh.dcn_shape=(2, 1, 1)", *tiny_setup.flags(**{"train.num_steps": 2})]
  launch = _Launch(tmp_path, "two", args, _env(tmp_path, devices=4))
  assert launch.wait(timeout=400) == [0, 0], launch.output(0)[-3000:]
  one = subprocess.run(tiny_setup.train_command(multi, **{"mesh.shape": "(-1,2,1)",
                                                          "mesh.dcn_shape": "()"}),
                       env=_env(tmp_path, devices=8), capture_output=True, text=True,
                       timeout=400)
  assert one.returncode == 0, one.stderr[-3000:]
  assert re.search(r"resumed from \S+ step 2; training from step 2 to 4", one.stderr)

  train_loop.train_and_evaluate(tiny_setup.task_config(**{"mesh.shape": (-1, 2, 1)}), str(single))
  got, want = tiny_setup.records(str(multi)), tiny_setup.records(str(single))
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  for g, w in zip(got, want):
    for key in w.keys() - {"step", "split", *tiny_setup.TIMING}:
      np.testing.assert_allclose(g[key], w[key], atol=1e-5, rtol=0, err_msg=f"{key} {g}")
