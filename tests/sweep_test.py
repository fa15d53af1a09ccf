"""launch/sweep.py through its command line, and the pure parts of transformer_research/sweep.py."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from transformer_research import sweep
import tiny_setup

ROOT = tiny_setup.ROOT
CONFIG = f"{ROOT / 'configs' / 'reverse.py'}:tiny,smoke"


def _sweep(workdir, *args: str) -> subprocess.CompletedProcess:
  command = [sys.executable, str(ROOT / "launch" / "sweep.py"), f"--config={CONFIG}",
             *([f"--workdir={workdir}"] if workdir else []), *tiny_setup.flags(), *args]
  return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT,
                        env=tiny_setup.subprocess_env())


def _starts(run_dir) -> int:
  with open(os.path.join(run_dir, "runs.jsonl")) as f:
    return len(f.readlines())


def test_a_sweep_trains_each_run_reports_a_failed_one_and_reruns_nothing_finished(tmp_path):
  """One good run and one that train.py stops (its warm-start source does not exist: only
  the run can find out): the good one trains and is in the table and the plots, the failed
  one is named with its exit status and log, the sweep exits 1. Rerunning the command starts
  no training of the finished run."""
  plan = ["--run=plain:", f"--run=warm: checkpoint.init_from={tmp_path / 'no_run'}"]
  first = _sweep(tmp_path, *plan)
  assert first.returncode == 1, first.stderr[-3000:]
  good, bad = tmp_path / "plain", tmp_path / "warm"
  assert (good / "checkpoints" / "4").is_dir()
  assert ("[2/2] warm: FAILED with exit status 1: error: config.checkpoint.init_from="
          f"'{tmp_path / 'no_run'}': no checkpoint found there") in first.stdout
  assert (f"error: 1 of 2 runs failed: warm (exit 1, log {bad / 'train.log'})"
          in first.stderr)
  assert "no checkpoint found there" in (bad / "train.log").read_text()
  results = (tmp_path / "results.md").read_text()
  assert results in first.stdout
  main_table = results.split("\n\n")[1]  # The title, this table, then the per-length ones.
  rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in main_table.splitlines()
          if line.startswith(("| plain", "| warm"))}
  assert rows["plain"][1:4] == ["done", "", "4"]
  assert rows["warm"][1:4] == [
      "failed (exit 1)", f"`checkpoint.init_from={tmp_path / 'no_run'}`", ""]
  header = main_table.splitlines()[0]
  assert "validation loss" in header and "validation sequence_accuracy" in header
  assert "_len_" not in header and "sequence_accuracy by length" in results
  assert {"loss.png", "accuracy.png"} <= set(os.listdir(tmp_path / "plots"))

  second = _sweep(tmp_path, *plan)
  assert second.returncode == 1
  assert "[1/2] plain: finished earlier (step 4), not run again" in second.stdout
  assert _starts(good) == 1  # train.py was not started again.
  attempts = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
  assert [(a["name"], a["returncode"]) for a in attempts] == [
      ("plain", 0), ("warm", 1), ("warm", 1)]

  # A damaged config.json of a finished run: that run fails with train.py's error
  # naming the file, the rest of the sweep goes on, the plots are drawn.
  config = good / "config.json"
  config.write_text(config.read_text()[:100])
  third = _sweep(tmp_path, *plan)
  assert third.returncode == 1, third.stderr[-3000:]
  assert f"[1/2] plain: FAILED with exit status 1: error: {config}: line " in third.stdout
  assert "[2/2] warm: FAILED" in third.stdout
  assert f"no training-length mark for {good}" in third.stderr
  assert "error: 2 of 2 runs failed" in third.stderr


def test_a_run_stopped_by_its_time_budget_is_finished_and_not_started_again(tmp_path):
  """The sweep's run is first trained on a ticking clock, so its train.max_minutes budget ends
  it early; the sweep must count it finished, not start train.py again (it would train nothing)."""
  budget = {"train.num_steps": 1000, "train.max_minutes": 1, "eval.every_steps": 1000,
            "checkpoint.every_steps": 1000, "train.log_every_steps": 1000}
  trained = subprocess.run(tiny_setup.ticking_clock_command(tmp_path / "short", **budget),
                           env=tiny_setup.subprocess_env(), capture_output=True, text=True,
                           timeout=300)
  assert trained.returncode == 0, trained.stderr[-3000:]
  stopped = tiny_setup.records(tmp_path / "short")[-1]["step"]
  assert 0 < stopped < 1000
  run = _sweep(tmp_path, "--run=short: " + " ".join(f"{k}={v}" for k, v in budget.items()))
  assert run.returncode == 0, run.stderr[-3000:]
  assert f"[1/1] short: finished earlier (step {stopped}), not run again" in run.stdout
  assert _starts(tmp_path / "short") == 1


def test_a_second_sweep_on_the_directory_is_refused_while_the_first_runs(tmp_path):
  """The same sweep command started twice (two terminals): each found the run the
  other was training in use, reported it failed, and both exited 1 with a results.md
  calling a finished run failed. The second is now refused and writes nothing."""
  command = [sys.executable, str(ROOT / "launch" / "sweep.py"), f"--config={CONFIG}",
             f"--workdir={tmp_path}", *tiny_setup.flags(), "--sweep=model.positions=rope"]
  first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=ROOT, env=tiny_setup.subprocess_env())
  try:
    deadline = time.time() + 120
    while not (tmp_path / "lock").exists():
      assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
      time.sleep(0.1)
    second = _sweep(tmp_path, "--sweep=model.positions=rope")
    _, first_err = first.communicate(timeout=300)
  finally:
    first.kill()
  assert second.returncode == 1, second.stderr[-3000:]
  assert f"error: {tmp_path} is in use by pid {first.pid} on host" in second.stderr
  assert first.returncode == 0, first_err[-3000:]
  assert "| positions-rope | done |" in (tmp_path / "results.md").read_text()
  assert _starts(tmp_path / "positions-rope") == 1 and not (tmp_path / "lock").exists()


def test_print_gives_the_train_commands_and_writes_nothing(tmp_path):
  workdir = tmp_path / "sw"
  run = _sweep(workdir, "--sweep=model.positions=learned,rope",
               "--sweep=train.learning_rate=1e-3,3e-3", "--print")
  assert run.returncode == 0, run.stderr[-3000:]
  shared = tiny_setup.flags()
  expected = [shlex.join(["python", "launch/train.py", f"--config={CONFIG}",
                          f"--workdir={workdir / name}", *shared, f"--config.model.positions={p}",
                          f"--config.train.learning_rate={lr}"])
              for p in ("learned", "rope") for lr in ("1e-3", "3e-3")
              for name in [f"positions-{p}_learning_rate-{lr}"]]
  assert run.stdout.splitlines() == expected
  assert not workdir.exists()


@pytest.mark.parametrize("args, message, status", [
    (["--sweep=model.positions"], "--sweep='model.positions': expected FIELD=VALUE,VALUE,...", 1),
    (["--sweep=model.positions="], "--sweep='model.positions=': no values", 1),
    (["--run=a: model.positions=rope", "--run=a:"], "run name 'a' twice", 1),
    ([], "nothing to run: expected --sweep=", 1),
    (["--sweep=model.positionz=rope,learned"],
     "reverse.py:tiny,smoke: KeyError: 'positionz' Did you mean \"positions\"", 1),
    # A value train.py would refuse, in the last run: found before the first trains.
    (["--sweep=model.positions=rope,bogus"],
     "run 'positions-bogus': model.positions='bogus'; expected one of ['learned', ", 1),
    (["--run=a:", "--run=b: train.grad_accum_steps=3"],
     "run 'b': config.train.batch_size=8 (8 rows a step) is not divisible by "
     "config.train.grad_accum_steps=3", 1),
    # Runs other than the flags say: a shared field the grid overrode without
    # a word, one config trained twice.
    (["--sweep=model.positions=rope,learned", "--config.model.positions=learned"],
     "--config.model.positions=learned is shared, but --sweep sets model.positions in every "
     "run: the flag changes no run; give the field once", 1),
    (["--sweep=train.learning_rate=1e-3,0.001"],
     "runs 'learning_rate-1e-3' and 'learning_rate-0.001' have the same config", 1),
    (["--workdir="], "--workdir='': expected a sweep directory", 1),
    (["--sweep=model.positions=rope"], "Flag --workdir must have a value", 2),
])
def test_bad_input_is_one_line_naming_it_and_runs_nothing(tmp_path, args, message, status):
  run = _sweep(None if status == 2 else tmp_path / "sw", *args)
  assert run.returncode == status
  assert run.stderr.strip().splitlines() == [run.stderr.strip()]
  assert run.stderr.startswith("error: ") and message in run.stderr, run.stderr
  assert not (tmp_path / "sw").exists()


@pytest.mark.slow
def test_two_runs_then_more_steps_resume_both(tmp_path):
  """The README's form: two position schemes; raising num_steps resumes each from its
  checkpoint rather than starting it over."""
  first = _sweep(tmp_path, "--sweep=model.positions=learned,sinusoidal",
                 "--config.train.num_steps=2")
  assert first.returncode == 0, first.stderr[-3000:]
  more = _sweep(tmp_path, "--sweep=model.positions=learned,sinusoidal",
                "--config.train.num_steps=4")
  assert more.returncode == 0, more.stderr[-3000:]
  for name in ("positions-learned", "positions-sinusoidal"):
    starts = [json.loads(line) for line in (tmp_path / name / "runs.jsonl").open()]
    assert len(starts) == 2 and "step 2" in starts[1]["origin"], starts[1]["origin"]
    assert (tmp_path / name / "checkpoints" / "4").is_dir()
    assert f"| {name} | done | `model.positions={name.split('-')[1]}` | 4 |" in more.stdout


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_after_the_run_checkpoints_and_a_rerun_resumes_it(tmp_path):
  """Ctrl-C at the terminal (SIGINT to the sweep and its train.py): the sweep waits for
  train.py to checkpoint, records the attempt and starts nothing more."""
  command = [sys.executable, str(ROOT / "launch" / "sweep.py"), f"--config={CONFIG}",
             f"--workdir={tmp_path}", *tiny_setup.flags(**{
                 "train.num_steps": 100000, "eval.every_steps": 100000,
                 "checkpoint.every_steps": 100000, "train.log_every_steps": 1000}),
             "--sweep=model.positions=learned,sinusoidal"]
  log = tmp_path / "positions-learned" / "train.log"
  sweep_process = subprocess.Popen(
      tiny_setup.as_at_a_terminal(command), cwd=ROOT, env=tiny_setup.subprocess_env(),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      start_new_session=True)  # Its own process group, as a terminal's foreground job.
  try:
    deadline = time.time() + 300
    while not (log.exists() and "first step done" in log.read_text()):
      assert sweep_process.poll() is None and time.time() < deadline, sweep_process.stderr.read()
      time.sleep(0.2)
    os.killpg(sweep_process.pid, signal.SIGINT)
    _, stderr = sweep_process.communicate(timeout=120)
  finally:
    sweep_process.kill()
  assert sweep_process.returncode == -signal.SIGINT, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == "interrupted (Ctrl-C)", stderr[-3000:]
  saved = os.listdir(tmp_path / "positions-learned" / "checkpoints")
  assert len(saved) == 1 and f"interrupted at step {saved[0]}, after its checkpoint" in (
      log.read_text())
  attempts = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
  assert [(a["name"], a["returncode"]) for a in attempts] == [
      ("positions-learned", -signal.SIGINT)]
  assert not (tmp_path / "positions-sinusoidal").exists()

  rerun = _sweep(tmp_path, "--sweep=model.positions=learned,sinusoidal",
                 f"--config.train.num_steps={int(saved[0]) + 1}")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  starts = [json.loads(line) for line in (tmp_path / "positions-learned" / "runs.jsonl").open()]
  assert len(starts) == 2 and f"step {saved[0]}" in starts[1]["origin"], starts[1]["origin"]


def test_checking_the_runs_configs_starts_no_jax_backend():
  """The sweep checks every run's config in its own process: a backend started there
  would hold a TPU host's chips, and each run's train.py could not get them."""
  check = ("from jax._src import xla_bridge\n"
           "from transformer_research import sweep\n"
           "for spec in ('wmt_spa.py', 'imdb.py:cpu', 'lm_imdb.py', 'addition.py:index_hints'):\n"
           "  sweep.parse_config(sweep.Run('run', ()), ['python', 'train.py',\n"
           "                                            f'--config=configs/{spec}'])\n"
           "assert not xla_bridge.backends_are_initialized()\n")
  run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=tiny_setup.subprocess_env())
  assert run.returncode == 0, run.stderr[-3000:]


def test_grid_names_and_order():
  runs = sweep.plan(["model.positions=learned,rope", "train.learning_rate=1e-3,3e-3"], [])
  assert [r.name for r in runs] == [
      "positions-learned_learning_rate-1e-3", "positions-learned_learning_rate-3e-3",
      "positions-rope_learning_rate-1e-3", "positions-rope_learning_rate-3e-3"]
  assert runs[1].overrides == (("model.positions", "learned"), ("train.learning_rate", "3e-3"))
  # Fields that end alike are told apart by one more part of their names.
  names = [r.name for r in sweep.plan(["model.dropout_rate=0.1", "train.dropout_rate=0"], [])]
  assert names == ["model-dropout_rate-0.1_train-dropout_rate-0"]


def test_values_keep_commas_inside_brackets_and_quotes():
  assert sweep.parse_sweep("data.lengths=(1,2), (3,4)") == ("data.lengths", ["(1,2)", "(3,4)"])
  assert sweep.split_values("'a,b',[1,(2,3)]") == ["'a,b'", "[1,(2,3)]"]
  assert sweep.value_name("(1, 2)") == "1-2" and sweep.value_name("'rope'") == "rope"


def test_named_runs_keep_commas_and_quotes_and_cross_the_grid():
  run = sweep.parse_run("attn+ff: model.d_ff=0 data.class_names=\"('neg', 'pos')\" x.y=(1,2)")
  assert run == sweep.Run("attn+ff", (("model.d_ff", "0"), ("data.class_names", "('neg', 'pos')"),
                                      ("x.y", "(1,2)")))
  assert sweep.parse_run("baseline:") == sweep.Run("baseline", ())
  runs = sweep.plan(["seed=0,1"], ["a: model.d_ff=0", "b:"])
  assert [(r.name, r.describe()) for r in runs] == [
      ("a_seed-0", "model.d_ff=0 seed=0"), ("a_seed-1", "model.d_ff=0 seed=1"),
      ("b_seed-0", "seed=0"), ("b_seed-1", "seed=1")]


@pytest.mark.parametrize("sweeps, runs, message", [
    (["model.positions="], [], "no values"),
    (["model.positions=a,,b"], [], "an empty value"),
    (["model.positions=a,a"], [], "a value is given twice"),
    (["--config.model.positions=a"], [], "is not a config field"),
    (["data.lengths=(1,2"], [], "unbalanced bracket"),
    ([], ["no colon model.d_ff=0"], "no ':'"),
    ([], ["a/b: model.d_ff=0"], "run name 'a/b'"),
    ([], ["a: model.d_ff"], "'model.d_ff': expected key=value"),
    ([], ["a: model.d_ff=0 model.d_ff=1"], "model.d_ff is set twice"),
    (["model.d_ff=0,1"], ["a: model.d_ff=2"], "run 'a_d_ff-0' (--run and --sweep): model.d_ff"),
    (["x.v=(1,2),[1,2]"], [], "run name 'v-1-2' twice"),
])
def test_malformed_plans_are_refused(sweeps, runs, message):
  with pytest.raises(ValueError, match=None) as error:
    sweep.plan(sweeps, runs)
  assert message in str(error.value), str(error.value)
