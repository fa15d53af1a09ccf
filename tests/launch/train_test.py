"""launch/train.py end to end: two steps of the tiny reverse config on CPU."""

import json
import os
import pathlib
import subprocess
import sys

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
