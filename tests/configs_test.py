"""Every task config loads for every model variant, is locked, and rejects typos."""

import pathlib

from absl import flags
from ml_collections import config_flags
import pytest

from transformer_research.data import tasks
from transformer_research.models import variants

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"
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
