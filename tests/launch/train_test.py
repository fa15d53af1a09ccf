"""launch/train.py end to end: two steps of the tiny reverse config on CPU."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import tiny_setup

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_two_steps_of_the_tiny_config(tmp_path):
  """Also: the compiled steps are kept in WORKDIR/compilation_cache (the
  suite's shared cache is not named here, as a user's environment would not)."""
  command = [sys.executable, str(ROOT / "launch" / "train.py"),
             f"--config={ROOT / 'configs' / 'reverse.py'}:tiny,smoke", f"--workdir={tmp_path}",
             "--config.train.num_steps=2", "--config.train.batch_size=8",
             "--config.eval.batch_size=8", "--config.eval.every_steps=1000",
             "--config.data.num_train_examples=100", "--config.model.num_encoder_layers=1",
             "--config.model.num_decoder_layers=1"]
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  assert list((tmp_path / "compilation_cache").iterdir())
  with open(tmp_path / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps[0] == 2 and os.path.isdir(tmp_path / "checkpoints" / "2")
  assert json.load(open(tmp_path / "config.json"))["train"]["num_steps"] == 2


def test_misspelt_override_is_an_error_naming_it(tmp_path):
  command = [sys.executable, str(ROOT / "launch" / "train.py"),
             f"--config={ROOT / 'configs' / 'reverse.py'}:tiny,smoke", f"--workdir={tmp_path}",
             "--config.train.batchsize=8"]
  run = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert run.returncode != 0 and "batchsize" in run.stderr


def test_unknown_remat_policy_is_an_error_listing_the_options(tmp_path):
  command = [sys.executable, str(ROOT / "launch" / "train.py"),
             f"--config={ROOT / 'configs' / 'reverse.py'}:tiny,smoke", f"--workdir={tmp_path}",
             "--config.model.remat=some"]
  run = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert run.returncode != 0
  assert "model.remat='some'; expected one of ['none', 'full', 'dots']" in run.stderr
  saved = os.listdir(tmp_path / "checkpoints") if (tmp_path / "checkpoints").exists() else []
  assert not [d for d in saved if d.isdigit()]  # Refused before any step was saved.


def _train_on_a_ticking_clock(workdir, max_minutes: float) -> subprocess.CompletedProcess:
  """launch/train.py whose time budget runs out after a known amount of work."""
  command = tiny_setup.ticking_clock_command(workdir, **{
      "train.num_steps": 1000, "train.max_minutes": max_minutes, "eval.every_steps": 1000,
      "checkpoint.every_steps": 1000, "train.log_every_steps": 1000})
  run = subprocess.run(command, env=tiny_setup.subprocess_env(), capture_output=True,
                       text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  return run


def test_a_time_budget_stops_checkpoints_and_evaluates_and_counts_over_restarts(tmp_path):
  """train.max_minutes: the run stops early with a checkpoint and an eval of the
  step it stopped at; a restart with a larger budget continues only for the
  difference, and once the budget is used a restart trains nothing."""
  first = _train_on_a_ticking_clock(tmp_path, max_minutes=1)
  stopped = tiny_setup.records(tmp_path)[-1]["step"]
  assert 0 < stopped < 1000 and "time budget train.max_minutes=1.0 used at step" in first.stderr
  assert sorted(r["split"] for r in tiny_setup.records(tmp_path)) == ["train", "validation"]
  assert (tmp_path / "checkpoints" / str(stopped)).is_dir()

  _train_on_a_ticking_clock(tmp_path, max_minutes=2)
  last = tiny_setup.records(tmp_path)[-1]["step"]
  # The second minute only: about as many steps as the first start made
  # (a fresh 2-minute budget would give about twice as many).
  assert 0 < last - stopped < 1.5 * stopped, (stopped, last)

  again = _train_on_a_ticking_clock(tmp_path, max_minutes=2)
  assert "is used" in again.stderr and "not training" in again.stderr
  assert tiny_setup.records(tmp_path)[-1]["step"] == last


def _launch(script: str, *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / "launch" / script), *flags],
                        capture_output=True, text=True, timeout=300)


def test_bfloat16_compute_trains_on_cpu(tmp_path):
  """`--config.model.compute_dtype=bfloat16` on a CPU: XLA:CPU cannot run a bfloat16 x
  bfloat16 -> float32 dot on its plain path; the tied output's table gradient was one,
  and the first step failed with "Unsupported element type for DotThunk::Execute"."""
  command = [sys.executable, str(ROOT / "launch" / "train.py"),
             f"--config={ROOT / 'configs' / 'reverse.py'}:tiny,smoke", f"--workdir={tmp_path}",
             "--config.model.compute_dtype=bfloat16", "--config.train.num_steps=2",
             "--config.eval.every_steps=2"]
  # One CPU device, as a user has (the suite's 8 fake devices split the batch, and
  # XLA then took another path for that dot).
  env = {**os.environ, "XLA_FLAGS": ""}
  run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
  assert run.returncode == 0, run.stderr[-3000:]
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  assert train and all(r["loss"] == r["loss"] and 0 < r["loss"] < 10 for r in train)
  assert any(r["split"] == "validation" for r in records)  # Decoded in bfloat16 too.


@pytest.mark.slow
@pytest.mark.parametrize("config_arg, overrides", [
    ("tiny,index_hints,smoke", ()),  # The recipe, as the README gives it.
    ("tiny,smoke", ("--config.model.positions=learned", "--config.model.max_len=64",
                    "--config.model.position_restart_ids=(13,)",
                    "--config.model.position_offset_max=16")),  # The same by overrides.
], ids=["recipe", "overrides"])
def test_addition_with_index_hints_and_random_offsets_trains_and_evaluates(
    tmp_path, config_arg, overrides):
  """The length-generalisation options as the addition config documents them:
  set on the command line, kept in config.json, and used by evaluate.py,
  which rebuilds the model from that file."""
  train = _launch(
      "train.py", f"--config={ROOT / 'configs' / 'addition.py'}:{config_arg}",
      f"--workdir={tmp_path}", "--config.train.num_steps=2", "--config.eval.every_steps=1000",
      *overrides)
  assert train.returncode == 0, train.stderr[-3000:]
  model = json.load(open(tmp_path / "config.json"))["model"]
  assert model["position_restart_ids"] == [13] and model["position_offset_max"] == 16

  evaluate = _launch("evaluate.py", f"--workdir={tmp_path}", "--split=test", "--num_examples=40")
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  last = tiny_setup.records(tmp_path)[-1]
  assert last["split"] == "test" and last["step"] == 2
  assert {"sequence_accuracy_trained_lengths", "sequence_accuracy_longer_lengths"} <= set(last)


@pytest.mark.parametrize("override, message", [
    ("--config.model.position_restart_ids=0",
     "model.position_restart_ids=(0,); expected a tuple of token ids > 0"),
    ("--config.model.position_offset_max=-3", "model.position_offset_max=-3; expected an int >= 0"),
])
def test_bad_position_options_are_refused_before_anything_is_trained(tmp_path, override, message):
  run = _launch("train.py", f"--config={ROOT / 'configs' / 'addition.py'}:tiny,smoke",
                f"--workdir={tmp_path}", override)
  assert run.returncode != 0 and message in run.stderr, run.stderr[-3000:]
  assert not (tmp_path / "metrics.jsonl").exists()
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


@pytest.mark.parametrize("override, message", [
    ("--config.data.truncation=tail",
     "config.data.truncation='tail'; expected one of ('head', 'head_tail')"),
    ("--config.data.validation_fraction=0", "config.data.validation_fraction=0.0; expected a share"),
    # 20 reviews: 1 % holds out none (validation scored 0 / 0 as loss 0, accuracy 0).
    ("--config.data.validation_fraction=0.01", "config.data.validation_fraction=0.01 of the 20 "
     f"examples of data.train_path='{{reviews}}' leaves 20 to train on and 0 to validate on"),
])
def test_bad_truncation_or_validation_share_is_refused_before_anything_is_written(
    tmp_path, override, message):
  """imdb on local files, as the README runs it, with a value that does not exist."""
  reviews = tmp_path / "reviews.jsonl"
  reviews.write_text("".join(json.dumps({"text": f"a {word} film", "label": i % 2}) + "\n"
                             for i, word in enumerate(["good", "bad", "fine", "dull"] * 5)))
  run = _launch("train.py", f"--config={ROOT / 'configs' / 'imdb.py'}:tiny,smoke",
                f"--workdir={tmp_path / 'run'}", f"--config.data.train_path={reviews}",
                f"--config.data.eval_path={reviews}", override)
  assert run.returncode != 0 and message.format(reviews=reviews) in run.stderr, run.stderr[-3000:]
  assert not (tmp_path / "run" / "metrics.jsonl").exists()
  assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(
      tmp_path / "run" / "checkpoints")


def test_evaluate_and_translate_load_the_runs_compiled_decoder(tmp_path):
  """evaluate.py decodes with the programs the training loop's eval compiled
  (WORKDIR/compilation_cache: on a GPU that compilation took minutes), and a
  second translate.py call compiles nothing the first one did."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # Every program is kept.
  cache = tmp_path / "compilation_cache"

  def cli(script: str, *args: str) -> set[str]:
    """Runs a launch script on the run; returns the decoder programs it added to the cache."""
    before = set(os.listdir(cache))
    run = subprocess.run([sys.executable, str(ROOT / "launch" / script), f"--workdir={tmp_path}",
                          *args], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return {name for name in set(os.listdir(cache)) - before if name.startswith("jit_generate")}

  trained = subprocess.run(
      [sys.executable, str(ROOT / "launch" / "train.py"),
       f"--config={ROOT / 'configs' / 'reverse.py'}:tiny,smoke", f"--workdir={tmp_path}",
       "--config.train.num_steps=2", "--config.eval.every_steps=1000",  # One eval, at the end.
       "--config.data.num_train_examples=100"],
      capture_output=True, text=True, timeout=300, env=env)
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert any(name.startswith("jit_generate") for name in os.listdir(cache))
  assert not cli("evaluate.py", "--split=validation")  # The loop's eval, loaded.
  assert cli("evaluate.py", "--split=validation", "--beam_size=1")  # A new decoder, kept.
  assert cli("translate.py", "123")
  assert not cli("translate.py", "123")
