"""Every task config loads for every model variant, is locked, and rejects typos.

Configs load two ways, which must agree: by path on the command line
(`--config=configs/<name>.py:<arg>`, ml_collections' config_flags, through
the repository's `configs/` link) and by name in code (`configs.load_config`).
"""

import json
import os
import pathlib
import subprocess
import sys

from absl import flags
from ml_collections import config_flags
import pytest

from transformer_research import configs
from transformer_research.data import tasks
from transformer_research.models import variants

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"  # The command-line path.
TASK_CONFIGS = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in ("base", "__init__"))


def _parse(*argv: str):
  """Parses argv as launch/train.py does (config_flags loads the file by path)."""
  flag_values = flags.FlagValues()
  argv = ["train.py", *argv]
  # Override flags are discovered from sys_argv (sys.argv by default).
  config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
  flag_values(argv)
  return flag_values.config


def test_every_task_has_a_config():
  assert len(TASK_CONFIGS) >= 8
  for name in TASK_CONFIGS:
    assert _parse(f"--config={CONFIGS / name}.py").data.task in tasks.REGISTRY, name


@pytest.mark.parametrize("name", TASK_CONFIGS)
@pytest.mark.parametrize("variant", sorted(variants.VARIANTS))
def test_config_loads_locked_for_every_variant(name, variant):
  config = _parse(f"--config={CONFIGS / name}.py:{variant}")
  assert config.model.variant == variant and config.is_locked
  variants.resolve(config.model)  # The variant's sizes are valid.
  for section in ("model", "data", "train", "eval", "mesh", "checkpoint"):
    assert section in config


@pytest.mark.parametrize("name", TASK_CONFIGS)
def test_docstring_gives_the_launch_command(name):
  text = (CONFIGS / f"{name}.py").read_text()
  assert f"python launch/train.py --config=configs/{name}.py --workdir=" in text
  assert "Expected result" in text


def test_override_of_an_existing_key_is_applied():
  config = _parse(f"--config={CONFIGS}/reverse.py:tiny", "--config.train.batch_size=8")
  assert config.train.batch_size == 8


def test_unknown_key_override_is_an_error_naming_the_key():
  # config_flags raises AttributeError("... Did you mean \"batch_size\"").
  with pytest.raises((AttributeError, KeyError, flags.Error), match="batchsize"):
    _parse(f"--config={CONFIGS}/reverse.py:tiny", "--config.train.batchsize=8")


def test_the_command_line_path_is_the_package_directory():
  assert CONFIGS.resolve() == pathlib.Path(configs.__file__).parent
  assert tuple(TASK_CONFIGS) == configs.NAMES


@pytest.mark.parametrize("name", TASK_CONFIGS)
@pytest.mark.parametrize("arg", ["", "tiny", "tiny,smoke", "smoke"])
def test_load_config_equals_the_command_line(name, arg):
  by_path = _parse(f"--config={CONFIGS / name}.py" + (f":{arg}" if arg else ""))
  by_name = configs.load_config(f"{name}:{arg}" if arg else name)
  assert by_name.to_dict() == by_path.to_dict() and by_name.is_locked


def test_tiny_is_a_size_and_smoke_is_a_run_length():
  full = configs.load_config("wmt_spa")
  tiny = configs.load_config("wmt_spa:tiny")
  smoke = configs.load_config("wmt_spa:smoke")
  both = configs.load_config("wmt_spa:tiny,smoke")
  assert (tiny.model.variant, tiny.train.num_steps, tiny.data.vocab_size) == (
      "tiny", full.train.num_steps, full.data.vocab_size)
  assert (smoke.model.variant, smoke.train.num_steps) == ("small", 20)
  assert (both.model.variant, both.train.num_steps, both.data.vocab_size) == ("tiny", 20, 500)


@pytest.mark.parametrize("name, default_variant", [("wmt_spa", "small"), ("imdb", "mini")])
def test_a_recipe_is_a_third_independent_choice(name, default_variant):
  """`<task>:cpu` is the time-budgeted recipe, combinable with a size and smoke."""
  cpu = _parse(f"--config={CONFIGS}/{name}.py:cpu")
  assert cpu.to_dict() == configs.load_config(f"{name}:cpu").to_dict()
  assert (cpu.train.max_minutes, cpu.model.variant) == (40.0, default_variant)
  assert configs.load_config(name).train.max_minutes == 0  # No budget by default.
  both = configs.load_config(f"{name}:tiny,cpu,smoke")
  assert (both.train.max_minutes, both.model.variant, both.train.num_steps) == (40.0, "tiny", 20)
  with pytest.raises(ValueError, match=r"config argument 'cpu' \(in 'cpu'\)"):
    configs.load_config("reverse:cpu")  # A recipe only where a task has one.


def test_the_addition_index_hints_recipe_restarts_positions_at_the_plus_sign():
  """`addition:index_hints` restarts positions after the id the task gives "+"
  (not a copied number) and shifts them while training; the default does neither."""
  hints = _parse(f"--config={CONFIGS}/addition.py:index_hints")
  assert hints.to_dict() == configs.load_config("addition:index_hints").to_dict()
  tokenizer, _ = tasks.char_tokenizers("addition", hints.data)
  assert hints.model.position_restart_ids == tuple(tokenizer.encode("+"))
  assert hints.model.position_offset_max == 16
  plain = configs.load_config("addition")
  assert (plain.model.position_restart_ids, plain.model.position_offset_max) == ((), 0)
  smoke = configs.load_config("addition:tiny,index_hints,smoke")
  assert (smoke.model.variant, smoke.model.position_offset_max) == ("tiny", 16)


def test_the_imdb_recipe_keeps_its_best_checkpoints_by_validation_accuracy():
  """The test figure of `imdb:cpu` is of the checkpoint chosen on validation."""
  cpu = configs.load_config("imdb:cpu")
  assert (cpu.checkpoint.best_metric, cpu.checkpoint.best_mode, cpu.eval.split) == (
      "accuracy", "max", "validation")
  assert cpu.data.max_input_len <= cpu.model.max_len  # The position table covers a review.


def test_a_bad_config_argument_is_an_error_naming_it():
  with pytest.raises(ValueError, match=r"config argument 'tiyn'.*'smoke'"):
    configs.load_config("reverse:tiyn")
  with pytest.raises(ValueError, match=r"config 'revers' .*'reverse'"):
    configs.load_config("revers")


def test_load_config_overrides_and_refuses_unknown_fields():
  config = configs.load_config("reverse:tiny", {"train.batch_size": 8, "seed": 3})
  assert (config.train.batch_size, config.seed, config.is_locked) == (8, 3, True)
  with pytest.raises(KeyError, match="train.batchsize"):
    configs.load_config("reverse:tiny", {"train.batchsize": 8})


def test_an_installed_package_loads_its_configs(tmp_path):
  """Away from the checkout (no `configs/` link, no repository on the path)."""
  code = ("from transformer_research import configs; "
          "print(configs.load_config('wmt_spa:tiny').model.variant)")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0 and run.stdout.strip() == "tiny", run.stderr[-2000:]


def test_a_config_json_from_before_a_field_existed_loads_with_its_default(tmp_path):
  """Run directories outlive code versions: a field base.py gained since the
  run was written takes its default (the behaviour that run had)."""
  config = configs.load_config("reverse:tiny", {"model.norm": "post"})
  saved = json.loads(config.to_json_best_effort())
  del saved["model"]["residual"], saved["train"]["frozen"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  loaded = configs.saved_config(tmp_path / "config.json")
  assert loaded.model.residual is True and list(loaded.train.frozen) == []
  assert loaded.model.norm == "post" and loaded.data.task == "reverse"  # Saved values kept.
