"""A run never loses its results, whatever is changed, killed or started twice.

Every test runs `launch/train.py` as a user does (tiny reverse config, the
flags of tiny_setup) and tries to break one promise: a kill at a bad moment,
a config that does not fit the run directory, a corrupt or removed
checkpoint, a diverging run, a second run on the same directory.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny_setup

FAULTS = tiny_setup.ROOT / "tests" / "fault_injection.py"
# Log windows that straddle checkpoints (3 is not a divisor of 2).
KILL_RUN = {"train.num_steps": 6, "train.log_every_steps": 3, "checkpoint.every_steps": 2,
            "eval.every_steps": 3}


def train(workdir, fault: str | None = None, timeout: float = 300,
          **overrides) -> subprocess.CompletedProcess:
  command = tiny_setup.train_command(workdir, **overrides)
  if fault:
    command = [sys.executable, str(FAULTS), fault, *command[1:]]
  return subprocess.run(command, env=tiny_setup.subprocess_env(), capture_output=True,
                        text=True, timeout=timeout)


def ok(run: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert run.returncode == 0, run.stderr[-3000:]
  return run


def refused(run: subprocess.CompletedProcess, message: str) -> str:
  """The one-line error of a refused start (no traceback)."""
  assert run.returncode == 1, run.stderr[-3000:]
  assert "Traceback" not in run.stderr, run.stderr[-3000:]
  error = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
  assert len(error) == 1 and message in error[0], run.stderr[-3000:]
  return error[0]


def saved_state(workdir, step: int) -> list[np.ndarray]:
  """Every array of a checkpoint (params and train items), as saved."""
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(), train=ocp.args.StandardRestore()))
  manager.close()
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree.leaves((restored["params"], restored["train"]))]


def steps_saved(workdir) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def without_timing(rows):
  return [{k: v for k, v in r.items() if k not in tiny_setup.TIMING} for r in rows]


def tensorboard_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """What TensorBoard itself shows: its loader applies the purge of a resumed run."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(os.path.join(workdir, "tensorboard"),
                                                   purge_orphaned_data=True)
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"] if tag.split("/")[1] not in tiny_setup.TIMING}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run every killed-and-rerun run must reproduce."""
  workdir = tmp_path_factory.mktemp("straight")
  ok(train(workdir, **KILL_RUN))
  return workdir


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished 4-step run with checkpoints at steps 2 and 4."""
  workdir = tmp_path_factory.mktemp("trained")
  ok(train(workdir))
  return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


# The default suite kills at the two moments that leave the most behind (a
# checkpoint being written, a half-written record); `-m slow` adds the others.
@pytest.mark.parametrize("fault", [
    "kill_before_commit=4", pytest.param("kill_after_commit=2", marks=pytest.mark.slow),
    pytest.param("kill_after_record=3", marks=pytest.mark.slow), "torn_record=3"])
def test_a_kill_at_any_moment_loses_only_the_work_since_the_last_checkpoint(
    straight, tmp_path, fault):
  killed = train(tmp_path, fault=fault, **KILL_RUN)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  ok(train(tmp_path, **KILL_RUN))
  assert steps_saved(tmp_path) == steps_saved(straight) == [2, 4, 6]
  for a, b in zip(saved_state(tmp_path, 6), saved_state(straight, 6), strict=True):
    np.testing.assert_array_equal(a, b)
  got, want = tiny_setup.records(tmp_path), tiny_setup.records(straight)  # Strict: no torn line.
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  assert without_timing(got) == without_timing(want)  # Train windows straddle the kill.
  assert tensorboard_scalars(tmp_path) == tensorboard_scalars(straight)


@pytest.mark.parametrize("flag,message", [
    # The optimizer state changes structure: the checkpoint names the leaf.
    ({"train.grad_clip_norm": 0.0},
     "checkpoint step 4 in {run}/checkpoints does not match this config: train leaf "
     "opt_state/0/count"),
    ({"train.optimizer": "sgd"}, "in the config. Nothing was changed; use a new --workdir (or "
                                 "warm-start one from this run with "
                                 "--config.checkpoint.init_from=...). This start changed: "
                                 "train.optimizer: 'adamw' -> 'sgd'."),
    # Same parameter shapes, another model: config.json says which field.
    ({"model.positions": "rope"}, "holds a run with model.positions='sinusoidal'; this config "
                                  "has 'rope'"),
    ({"model.d_model": 64}, "holds a run with model.d_model=32; this config has 64"),
    ({"data.vocab_size": 100}, "holds a run with data.vocab_size=500"),
    # Freezing part of a trained model: its parameters' optimizer state would go.
    ({"train.frozen": '("^encoder/",)'},
     "checkpoint step 4 in {run}/checkpoints does not match this config: train leaf "
     "opt_state/"),
    # Stacked parameters: another tree layout, so no resume and no warm start.
    ({"model.scan_layers": True}, "holds a run with model.scan_layers=False; this config has "
                                  "True. A run directory continues one model and its data: "
                                  "nothing was changed; use a new --workdir (scanned layers"),
])
def test_a_resume_that_does_not_fit_is_refused_and_changes_nothing(run_copy, flag, message):
  before = tiny_setup.fingerprint(run_copy)
  refused(train(run_copy, **flag), message.format(run=run_copy))
  assert tiny_setup.fingerprint(run_copy) == before


def test_a_resume_that_spells_out_the_variants_sizes_continues(run_copy):
  """`model.d_model=32` on a tiny run is the model it trained (its config says
  -1: the variant's size); it was refused as another model, naming -1."""
  resumed = ok(train(run_copy, **{"model.d_model": 32, "model.num_heads": 4,
                                  "train.num_steps": 6}))
  assert "with changed fields: train.num_steps: 4 -> 6\n" in resumed.stderr
  assert "resumed from" in resumed.stderr and steps_saved(run_copy)[-1] == 6


def test_a_first_start_killed_before_its_first_checkpoint_is_no_warm_start_source(tmp_path):
  """Step 0 out of memory, a kill before the first save: config.json is written,
  no checkpoint. Another model there is refused (as in any run directory), but
  the advice offered a warm start from it, which then failed with "no checkpoint
  found there"."""
  killed = train(tmp_path, fault="kill_before_commit=2")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert (tmp_path / "config.json").exists()
  # Step 2's write was cut short: only its temporary directory.
  assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
  before = tiny_setup.fingerprint(tmp_path)
  error = refused(train(tmp_path, **{"model.d_model": 64}),
                  "holds a run with model.d_model=32; this config has 64")
  assert error.endswith("use a new --workdir (this run saved no checkpoint to warm-start "
                        "from; to use the directory for this config, remove it first).")
  assert "init_from" not in error
  before.pop("lock")  # The killed run's stale lock, taken over and released.
  assert tiny_setup.fingerprint(tmp_path) == before


@pytest.mark.parametrize("flag,message", [
    ({"train.grad_accum_steps": 3}, "config.train.batch_size=8 (8 rows a step) is not divisible "
                                    "by config.train.grad_accum_steps=3"),
    ({"checkpoint.best_metric": "bleu"}, "config.checkpoint.best_metric='bleu': data.task="
                                         "'reverse' evaluates ['loss', 'accuracy', "
                                         "'sequence_accuracy'] and per length"),
    ({"data.eval_min_len": 5}, "config.data.eval_min_len=5, config.data.eval_max_len=4: "
                               "expected 1 <= eval_min_len <= eval_max_len"),
])
def test_a_setting_that_fails_only_later_is_refused_before_anything_changes(
    run_copy, flag, message):
  """The micro-batch split failed when the step was first traced, after config.json
  and runs.jsonl had taken the value; the ranking metric at the first eval's
  checkpoint, losing the steps trained since the last one; so did a synthetic
  task's eval lengths (its eval split is generated at the first eval)."""
  before = tiny_setup.fingerprint(run_copy)
  refused(train(run_copy, **{"train.num_steps": 6, **flag}), message)
  assert tiny_setup.fingerprint(run_copy) == before


def test_an_unknown_variant_writes_nothing(run_copy, tmp_path):
  before = tiny_setup.fingerprint(run_copy)
  for workdir in (run_copy, tmp_path / "new"):
    command = tiny_setup.train_command(workdir)
    command[2] = command[2].replace(":tiny,smoke", ":huge")
    run = subprocess.run(command, env=tiny_setup.subprocess_env(), capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0 and "config argument 'huge'" in run.stderr
  assert tiny_setup.fingerprint(run_copy) == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("steps", [0, -5])
def test_no_steps_to_train_is_an_error(tmp_path, steps):
  refused(train(tmp_path, **{"train.num_steps": steps}), f"config.train.num_steps={steps}")
  assert not (tmp_path / "metrics.jsonl").exists()


def test_removed_checkpoints_do_not_silently_start_over(run_copy):
  shutil.rmtree(run_copy / "checkpoints")
  before = tiny_setup.fingerprint(run_copy)
  refused(train(run_copy, **{"train.num_steps": 6}), "no checkpoints/ directory (it was removed)")
  assert tiny_setup.fingerprint(run_copy) == before


def test_a_removed_config_json_is_refused_not_bypassed(run_copy):
  """Without config.json nothing checked that a resume continues the same model
  and data: another seed trained on from the checkpoint without a word."""
  config = run_copy / "config.json"
  config.unlink()
  before = tiny_setup.fingerprint(run_copy)
  message = (f"{config} not found: this file records the config the run's checkpoints were "
             "trained with: restore it (a copy is in the newest record of runs.jsonl beside it)")
  refused(train(run_copy, **{"train.num_steps": 6, "seed": 1}), message)
  translate = subprocess.run(
      [sys.executable, str(tiny_setup.ROOT / "launch" / "translate.py"), f"--workdir={run_copy}",
       "123"], env=tiny_setup.subprocess_env(), capture_output=True, text=True, timeout=300)
  refused(translate, message)
  assert tiny_setup.fingerprint(run_copy) == before


def test_a_corrupt_latest_checkpoint_is_moved_aside_and_trained_again(run_copy):
  for root, _, files in os.walk(run_copy / "checkpoints" / "4" / "params"):
    for name in files:  # Truncate every data file of the latest checkpoint.
      open(os.path.join(root, name), "w").close()
  # The tools that only read use the newest readable step, and say so.
  translate = subprocess.run(
      [sys.executable, str(tiny_setup.ROOT / "launch" / "translate.py"), f"--workdir={run_copy}",
       "123"], capture_output=True, text=True, timeout=300)
  assert translate.returncode == 0 and "using step 2" in translate.stderr, translate.stderr[-2000:]
  assert (run_copy / "checkpoints" / "4").exists()  # Readers never move anything.
  run = ok(train(run_copy, **{"train.num_steps": 6}))
  assert "moved it to" in run.stderr and "corrupt-4" in run.stderr
  assert steps_saved(run_copy) == [2, 4, 6] and (run_copy / "checkpoints" / "corrupt-4").is_dir()
  rows = tiny_setup.records(run_copy)
  assert [(r["step"], r["split"]) for r in rows] == [
      (s, split) for s in (2, 4, 6) for split in ("train", "validation")]


def test_only_unreadable_checkpoints_stop_the_run(run_copy):
  for step in (2, 4):
    shutil.rmtree(run_copy / "checkpoints" / str(step) / "train")
  refused(train(run_copy, **{"train.num_steps": 6}), "no checkpoint in")
  before = tiny_setup.fingerprint(run_copy)
  refused(train(run_copy, **{"train.num_steps": 6}), "corrupt-4")  # Also on the next try.
  assert tiny_setup.fingerprint(run_copy) == before


def test_a_non_finite_state_is_never_saved(run_copy):
  """Step 5's loss and gradient come from step 4's (finite) parameters; its
  update with an infinite learning rate is what turns the state into Inf/NaN."""
  diverge = {"train.learning_rate": 1e39, "train.schedule": "constant",
             "train.warmup_steps": 0, "train.num_steps": 5}
  refused(train(run_copy, **diverge), "not finite at step 5; stopping without saving")
  assert steps_saved(run_copy) == [2, 4]
  assert all(np.isfinite(x).all() for x in saved_state(run_copy, 4))
  rows = tiny_setup.records(run_copy)
  assert [(r["step"], r["split"]) for r in rows if r["split"] != "train"] == [
      (2, "validation"), (4, "validation")]  # No eval of the diverged state.
  assert all(np.isfinite(r["loss"]) for r in rows)
  refused(train(run_copy, **diverge), "at step 5")  # Resumed from 4, stopped the same way.
  assert steps_saved(run_copy) == [2, 4]


def test_one_run_per_run_directory(tmp_path):
  holder = subprocess.Popen(
      tiny_setup.train_command(tmp_path, **{"train.num_steps": 100000, "eval.every_steps": 100000,
                                            "checkpoint.every_steps": 20,
                                            "train.log_every_steps": 20}),
      env=tiny_setup.subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while not (tmp_path / "checkpoints" / "20").is_dir():
      assert holder.poll() is None and time.time() < deadline, "the first run never saved"
      time.sleep(0.2)
    error = refused(train(tmp_path), f"is in use by pid {holder.pid} on host")
    assert "started 20" in error  # The holder's start time (an ISO date).
    # The tools that only read still work while it trains.
    for tool, args in (("plot.py", []), ("translate.py", ["123"])):
      used = subprocess.run([sys.executable, str(tiny_setup.ROOT / "launch" / tool),
                             f"--workdir={tmp_path}", *args], capture_output=True, text=True,
                            timeout=300)
      assert used.returncode == 0, used.stderr[-2000:]
    holder.kill()  # SIGKILL: the lock stays behind, stale.
    holder.wait(timeout=60)
  finally:
    holder.kill()
  assert (tmp_path / "lock").exists()
  run = ok(train(tmp_path, **{"train.num_steps": 22, "checkpoint.every_steps": 20}))
  assert "taking over the stale lock" in run.stderr and "resumed from" in run.stderr
  assert not (tmp_path / "lock").exists()


def test_a_resume_may_rank_the_best_checkpoints_by_another_metric(tmp_path):
  """checkpoint.best_metric is a checkpoint setting a resume may change. The first save
  after such a resume failed (KeyError: the checkpoints there had recorded only the old
  metric). Each eval checkpoint now records every number of its eval; one that lacks the
  new metric ranks last."""
  common = {"checkpoint.every_steps": 2, "eval.every_steps": 2, "checkpoint.max_to_keep": 1}
  ok(train(tmp_path, **common, **{"train.num_steps": 4, "checkpoint.best_metric": "accuracy"}))
  resumed = ok(train(tmp_path, **common, **{
      "train.num_steps": 8, "checkpoint.best_metric": "loss", "checkpoint.best_mode": "min"}))
  assert "checkpoint.best_metric: 'accuracy' -> 'loss'" in resumed.stderr
  losses = {r["step"]: r["loss"] for r in tiny_setup.records(tmp_path)
            if r["split"] == "validation"}
  kept = steps_saved(tmp_path)
  assert kept[-1] == 8 and all(losses[step] < losses[8] for step in kept[:-1]), (kept, losses)
  recorded = json.loads((tmp_path / "checkpoints" / "8" / "metrics" / "metrics").read_text())
  assert recorded["loss"] == losses[8] and "accuracy" in recorded


def test_every_start_is_recorded_with_what_changed(run_copy):
  """Also: a change that moves the learning rate at the resume step says so with
  both rates (more steps do not move the default "rsqrt" schedule; "cosine"
  decays over them)."""
  run = ok(train(run_copy, **{"train.num_steps": 6}))
  assert "changed fields: train.num_steps: 4 -> 6" in run.stderr
  assert "learning-rate schedule changed" not in run.stderr
  starts = [json.loads(line) for line in open(run_copy / "runs.jsonl")]
  assert [s["origin"].split(" step ")[-1] for s in starts] == ["from scratch", "4"]
  assert starts[1]["changed"] == ["train.num_steps: 4 -> 6"]
  assert starts[1]["config"]["train"]["num_steps"] == 6
  for key in ("jax", "jaxlib", "dm-haiku", "optax", "orbax-checkpoint"):
    assert starts[1]["versions"][key][0].isdigit(), starts[1]["versions"]
  assert "git_commit" in starts[1]
  assert json.load(open(run_copy / "config.json"))["train"]["num_steps"] == 6
  cosine = ok(train(run_copy, **{"train.num_steps": 8, "train.schedule": "cosine"}))
  assert ("the learning-rate schedule changed (train.schedule: 'rsqrt' -> 'cosine'; "
          "train.num_steps: 6 -> 8): step 6 trains at ") in cosine.stderr


def test_rerunning_a_finished_run_says_so_and_changes_no_checkpoint_or_metric(run_copy):
  before = {k: v for k, v in tiny_setup.fingerprint(run_copy).items()
            if k.startswith("checkpoints") or k == "metrics.jsonl"}
  run = ok(train(run_copy))
  assert "the run is at step 4 of train.num_steps=4: nothing to train" in run.stderr
  after = tiny_setup.fingerprint(run_copy)
  assert {k: after.get(k) for k in before} == before


def test_evaluate_records_survive_a_resume(run_copy):
  evaluate = subprocess.run([sys.executable, str(tiny_setup.ROOT / "launch" / "evaluate.py"),
                             f"--workdir={run_copy}", "--split=test", "--step=4"],
                            capture_output=True, text=True, timeout=300)
  assert evaluate.returncode == 0, evaluate.stderr[-2000:]
  shutil.rmtree(run_copy / "checkpoints" / "4")  # Resume from step 2.
  ok(train(run_copy))
  rows = tiny_setup.records(run_copy)
  assert [(r["step"], r["split"]) for r in rows if r["split"] == "test"] == [(4, "test")]
  assert [(r["step"], r["split"]) for r in rows if r["split"] != "test"] == [
      (s, split) for s in (2, 4) for split in ("train", "validation")]


def test_a_record_appended_after_a_kill_mid_line_is_kept_whole(run_copy):
  """A kill can leave the last line of metrics.jsonl (or runs.jsonl) half-written.
  The next record appended there (evaluate.py's, the resume's start) must start a
  line of its own: merged into the fragment, it was dropped with it on resume."""
  for name in ("metrics.jsonl", "runs.jsonl"):  # As a kill inside a write leaves them.
    path = run_copy / name
    path.write_text(path.read_text()[:-40])
  evaluate = subprocess.run([sys.executable, str(tiny_setup.ROOT / "launch" / "evaluate.py"),
                             f"--workdir={run_copy}", "--split=test"],
                            capture_output=True, text=True, timeout=300)
  assert evaluate.returncode == 0, evaluate.stderr[-2000:]
  plot = subprocess.run([sys.executable, str(tiny_setup.ROOT / "launch" / "plot.py"),
                         f"--workdir={run_copy}", f"--out_dir={run_copy / 'plots'}"],
                        capture_output=True, text=True, timeout=300)
  assert plot.returncode == 0, plot.stderr[-2000:]
  assert "metrics.jsonl:4 is not a record (cut short by a kill?); skipped" in plot.stderr

  resumed = ok(train(run_copy, **{"train.num_steps": 6}))
  assert "metrics.jsonl:4 is not a record (cut short by a kill?); dropped" in resumed.stderr
  rows = tiny_setup.records(run_copy)  # Strict: the fragment is gone, every line whole.
  assert [(r["step"], r.get("writer")) for r in rows if r["split"] == "test"] == [
      (4, "evaluate.py")]
  starts = (run_copy / "runs.jsonl").read_text().splitlines()
  assert len(starts) == 2 and json.loads(starts[1])["origin"].endswith("step 4"), starts


@pytest.mark.parametrize("damage, message", [
    pytest.param(lambda text: text[:100], ": line ", id="truncated"),
    pytest.param(lambda text: json.dumps({"step": 4, "loss": 1.0}), ": no 'data' section, so "
                 "this is not the config of a run (found ['loss', 'step'])", id="not_a_config")])
def test_a_damaged_config_json_is_named_and_nothing_changes(run_copy, damage, message):
  """A hand edit gone wrong, a damaged disk, another file copied over it: the
  error names the file (and the line), for a resume and for a reader, and the
  run directory stays as it was. Without its 'data' and 'model' sections the
  defaults would fill in another model, and a resume was refused for a field
  the run never had. plot.py only loses its training-length mark."""
  config = run_copy / "config.json"
  config.write_text(damage(config.read_text()))
  before = tiny_setup.fingerprint(run_copy)
  message = f"{config}{message}"
  refused(train(run_copy, **{"train.num_steps": 6}), message)
  translate = subprocess.run(
      [sys.executable, str(tiny_setup.ROOT / "launch" / "translate.py"), f"--workdir={run_copy}",
       "123"], env=tiny_setup.subprocess_env(), capture_output=True, text=True, timeout=300)
  refused(translate, message)
  assert tiny_setup.fingerprint(run_copy) == before
  plot = subprocess.run(
      [sys.executable, str(tiny_setup.ROOT / "launch" / "plot.py"), f"--workdir={run_copy}",
       f"--out_dir={run_copy.parent / 'plots'}"], env=tiny_setup.subprocess_env(),
      capture_output=True, text=True, timeout=300)
  assert plot.returncode == 0 and "per_length_accuracy.png" in plot.stdout, plot.stderr[-3000:]
  assert f"no training-length mark for {run_copy}: {message}" in plot.stderr, plot.stderr


def test_a_full_disk_stops_with_the_path_and_keeps_the_last_checkpoint(run_copy):
  """A file-size limit (`ulimit -f`, 64 KiB) stands in for a full disk: the
  metrics lines still fit, the checkpoint's data files do not."""
  before = saved_state(run_copy, 4)
  command = tiny_setup.train_command(run_copy, **{"train.num_steps": 6})
  run = subprocess.run(["bash", "-c", 'ulimit -f 64 && exec "$@"', "bash", *command],
                       env=tiny_setup.subprocess_env(), capture_output=True, text=True,
                       timeout=300)
  error = refused(run, str(run_copy))
  assert "File too large" in error or "No space" in error, error
  for a, b in zip(saved_state(run_copy, 4), before, strict=True):
    np.testing.assert_array_equal(a, b)


def test_out_of_device_memory_is_one_line_and_keeps_the_checkpoints_and_records(run_copy):
  """XLA's RESOURCE_EXHAUSTED (a batch or sequence too large for the device) was a
  traceback; it is one line with what to make smaller."""
  kept = lambda: {k: v for k, v in tiny_setup.fingerprint(run_copy).items()
                  if k.startswith("checkpoints") or k == "metrics.jsonl"}
  before = kept()
  refused(train(run_copy, fault="out_of_memory=0", **{"train.num_steps": 6}),
          "error: out of device memory (Out of memory allocating 3850099231360 bytes.): use a "
          "smaller batch (train.batch_size, or more train.grad_accum_steps; eval.batch_size for "
          "evals and decoding), shorter data.max_input_len / max_target_len, a smaller model "
          "or model.remat")
  assert kept() == before


def test_runs_started_together_on_a_fresh_data_dir_prepare_it_one_at_a_time(tmp_path):
  """Two first starts sharing a TFDS data dir (two terminals, or the commands of
  `sweep.py --print`): the second failed at TFDS's final rename. The test holds the
  preparation lock until both runs wait for it, so they race for certain."""
  import fcntl  # pylint: disable=g-import-not-at-top
  tfds_dir = tmp_path / "tfds"
  tfds_dir.mkdir()
  runs = []
  with open(tfds_dir / ".spa_eng.prepare.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    for name in ("a", "b"):  # One step, no decoding: what is tested happens before step 0.
      command = tiny_setup.train_command(tmp_path / name, **{
          "data.tfds_data_dir": tfds_dir, "train.num_steps": 1, "eval.decode_examples": 0})
      command[2] = f"--config={tiny_setup.ROOT / 'configs' / 'wmt_spa.py'}:tiny,smoke"
      log = open(tmp_path / f"{name}.log", "w")
      runs.append((subprocess.Popen(command, env=tiny_setup.subprocess_env(), stdout=log,
                                    stderr=subprocess.STDOUT), tmp_path / f"{name}.log"))
    deadline = time.time() + 240
    while not all("waiting for another process preparing TFDS spa_eng" in log.read_text()
                  for _, log in runs):
      assert time.time() < deadline and all(p.poll() is None for p, _ in runs), [
          log.read_text()[-2000:] for _, log in runs]
      time.sleep(0.2)
  for process, log in runs:
    assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
  assert sum("Dataset spa_eng downloaded and prepared" in log.read_text() for _, log in runs) == 1


def test_a_bad_manual_archive_is_one_line_naming_it(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "spa-eng.zip").write_text("<html>404 Not Found</html>")  # A failed download.
  command = tiny_setup.train_command(tmp_path / "run", **{"data.manual_dir": manual,
                                                          "data.tfds_data_dir": tmp_path / "tfds"})
  command[2] = f"--config={tiny_setup.ROOT / 'configs' / 'wmt_spa.py'}:tiny,smoke"
  run = subprocess.run(command, env=tiny_setup.subprocess_env(), capture_output=True, text=True,
                       timeout=300)
  refused(run, f"{manual / 'spa-eng.zip'}: sha256 ")


def test_local_data_without_a_usable_example_stops_before_tokenizer_training(tmp_path):
  data = tmp_path / "sentiment.tsv"  # Its text column is found, and empty.
  data.write_text("label\tsentence\n1\t \n0\t\n")
  command = tiny_setup.train_command(tmp_path / "run", **{"data.train_path": data,
                                                          "data.eval_path": data})
  command[2] = f"--config={tiny_setup.ROOT / 'configs' / 'imdb.py'}:tiny,smoke"
  run = subprocess.run(command, env=tiny_setup.subprocess_env(), capture_output=True, text=True,
                       timeout=300)
  refused(run, f"{data}: no usable example (text field 'sentence', label field 'label'; "
               "columns found: ['label', 'sentence']; skipped lines: no_text=2 (first at line 2))")
  assert not list((tmp_path / "run").glob("spm_*"))


def test_a_vocabulary_larger_than_the_text_allows_is_one_line_naming_the_key(tmp_path):
  data = tmp_path / "sentiment.tsv"  # A first try on a small local file.
  data.write_text("label\ttext\n" + "".join(f"{i % 2}\tgood bad film {i}\n" for i in range(40)))
  command = tiny_setup.train_command(tmp_path / "run", **{"data.train_path": data,
                                                          "data.eval_path": data})
  command[2] = f"--config={tiny_setup.ROOT / 'configs' / 'imdb.py'}:tiny,smoke"
  run = subprocess.run(command, env=tiny_setup.subprocess_env(), capture_output=True, text=True,
                       timeout=300)
  error = refused(run, "data.vocab_size=500: the training text for ")
  head, most = error.rsplit("; set data.vocab_size <= ", 1)
  assert most.isdigit() and f"has pieces for at most {most}" in head
  assert not list((tmp_path / "run").glob("spm_*"))


def test_training_files_that_changed_are_refused_by_a_resume_and_a_validation_eval(tmp_path):
  """The data paths may change on resume (a copy moved); the data may not: the
  checkpoint's position indexes the examples it trained on, and the validation
  split is carved from the same files. A file rewritten with as many lines is
  caught too (by the examples' digest); one only touched is not refused, and a
  copy elsewhere resumes from the tokenized cache. The rebuilt cache names the
  file that changed (it named the first of all the run's files)."""
  rng = np.random.default_rng(0)
  reviews = [json.dumps({"text": " ".join(rng.choice(["good", "bad", "plot", "film"], 12)),
                         "label": i % 2}) for i in range(200)]
  train_file, test_file = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
  train_file.write_text("\n".join(reviews) + "\n")
  test_file.write_text("\n".join(reviews[:40]) + "\n")
  workdir = tmp_path / "run"

  def command_at(folder: pathlib.Path, num_steps: int = 4) -> list[str]:
    command = tiny_setup.train_command(workdir, **{
        "data.train_path": folder / "train.jsonl", "data.eval_path": folder / "test.jsonl",
        "data.vocab_size": 16, "train.num_steps": num_steps})
    command[2] = f"--config={tiny_setup.ROOT / 'configs' / 'imdb.py'}:tiny,smoke"
    return command

  command = command_at(tmp_path)
  run = lambda command: subprocess.run(command, env=tiny_setup.subprocess_env(),
                                       capture_output=True, text=True, timeout=300)
  evaluate = [sys.executable, str(tiny_setup.ROOT / "launch" / "evaluate.py"),
              f"--workdir={workdir}", "--split=validation"]
  ok(run(command))
  train_file.write_text("\n".join(reviews[:150]) + "\n")  # 50 reviews removed.
  before = tiny_setup.fingerprint(workdir)
  resumed = run(command)
  error = refused(resumed, f"checkpoint step 4 in {workdir}: its data position does "
                           "not fit the training data now at the run's data paths (iterator "
                           "state num_examples=180, expected 135: ")
  assert error.endswith(f"--config.checkpoint.init_from={workdir})")
  assert f'] changed (cached ["{train_file}", ' in resumed.stderr, resumed.stderr[-3000:]
  error = refused(run(evaluate), f"split='validation' of {workdir} is held out of "
                                 f"data.train_path='{train_file}', but its examples are not those "
                                 "checkpoint step 4 held out (num_examples 15 now, 20 then; "
                                 "data_sha256 '")
  assert error.endswith("or score other text with --source_file or --split=test")
  # As many reviews, other words: the same number of examples, other ones.
  train_file.write_text("\n".join(r.replace("good", "fine") for r in reviews) + "\n")
  refused(run(command), "(iterator state data_sha256=")
  assert "(data_sha256 '" in refused(run(evaluate), "but its examples are not those")
  after = tiny_setup.fingerprint(workdir)
  assert {k: v for k, v in after.items() if not k.startswith("tokenized")} == {
      k: v for k, v in before.items() if not k.startswith("tokenized")}
  train_file.write_text("\n".join(reviews) + "\n")  # Restored: a new time, the same data.
  ok(run(evaluate))
  ok(run(command_at(tmp_path, num_steps=6)))
  # Copied elsewhere (other paths, new times, as a host's start-up script copies
  # data): the resume reads the tokenized cache instead of tokenizing again.
  moved = tmp_path / "moved"
  moved.mkdir()
  for name in ("train.jsonl", "test.jsonl"):
    shutil.copy(tmp_path / name, moved / name)
  resumed = ok(run(command_at(moved, num_steps=8)))
  assert "but the files hold the bytes it was made from; using it" in resumed.stderr
  assert "rebuilding it" not in resumed.stderr, resumed.stderr[-3000:]
