"""Task configs: one file per task, `get_config(arg)`; defaults in base.py.

They ship inside the package, so an installed copy can load them. The
repository's top-level `configs/` is a symbolic link to this directory: the
command-line path `--config=configs/wmt_spa.py:small` (ml_collections'
`config_flags`, which loads a file) and `load_config("wmt_spa:small")` (code
and tests, which import the module) read the same file.
"""

import importlib
import json
import pathlib
from typing import Any, Mapping

from etils import epath
import ml_collections

from transformer_research.configs import base

NAMES = tuple(sorted(p.stem for p in pathlib.Path(__file__).parent.glob("*.py")
                     if p.stem not in ("__init__", "base")))


def load_config(spec: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """The config `spec` names, with dotted-name overrides, locked.

  `load_config("wmt_spa:tiny,smoke", {"train.num_steps": 4})` is what
  `--config=configs/wmt_spa.py:tiny,smoke --config.train.num_steps=4` gives
  on the command line.

  Raises:
    ValueError: an unknown config name or argument.
    KeyError / TypeError: an override of a field that does not exist, or of
      the wrong type (ml_collections' messages name the field).
  """
  name, _, arg = spec.partition(":")
  if name not in NAMES:
    raise ValueError(f"config {name!r} (in {spec!r}): expected one of {list(NAMES)}")
  config = importlib.import_module(f"{__name__}.{name}").get_config(arg or None)
  for key, value in (overrides or {}).items():
    *sections, field = key.split(".")
    parent = config
    for section in sections:
      parent = parent[section]
    if field not in parent:
      raise KeyError(f"config override {key!r}: {spec} has no field {field!r} there")
    parent[field] = value
  return config


_RUN_SECTIONS = ("data", "model", "train")
_RESTORE = ("restore it (a copy is in the newest record of runs.jsonl beside it) or use a new "
            "run directory")


def saved_config(path: Any) -> ml_collections.ConfigDict:
  """A run's config.json as a config, with the fields base.py has gained since.

  A run directory written before a field existed ran with that field's
  default (new fields default to the old behaviour), so the default fills
  it in: older runs stay loadable for evaluation, translation and warm starts.
  """
  def fill(saved: dict, defaults: dict) -> dict:
    out = dict(saved)
    for key, value in defaults.items():
      if key not in out:
        out[key] = value
      elif isinstance(value, dict) and isinstance(out[key], dict):
        out[key] = fill(out[key], value)
    return out

  restore = f"this file records the run's config: {_RESTORE}"
  try:
    saved = json.loads(epath.Path(path).read_text())
  except FileNotFoundError:
    raise missing_saved_config(path) from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: line {e.lineno} column {e.colno}: {e.msg}; {restore}") from None
  if not isinstance(saved, dict):
    raise ValueError(f"{path}: expected a JSON object of config sections, found "
                     f"{type(saved).__name__}; {restore}")
  # Every config launch/train.py ever wrote has these: without them the
  # defaults would fill in a model and data, and a resume would be refused
  # for a field the run never had (or a reader would build the wrong model).
  for section in _RUN_SECTIONS:
    if not isinstance(saved.get(section), dict):
      raise ValueError(f"{path}: no {section!r} section, so this is not the config of a run "
                       f"(found {sorted(saved)[:5]}); {restore}")
  return ml_collections.ConfigDict(fill(saved, json.loads(base.get_config().to_json_best_effort())))


def missing_saved_config(path: Any) -> FileNotFoundError:
  """The error of a run directory whose checkpoints outlived its config.json."""
  return FileNotFoundError(
      f"{path} not found: this file records the config the run's checkpoints were trained "
      f"with: {_RESTORE}")


def flatten(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
  """`{"train.batch_size": 64, ...}` of a config or of its config.json dict.

  Values are as JSON has them (tuples as lists), so a config and the
  config.json it wrote compare equal field by field.
  """
  tree = config if isinstance(config, dict) else json.loads(config.to_json_best_effort())
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update({f"{key}.{k}": v for k, v in flatten(value).items()})
    else:
      out[key] = json.loads(json.dumps(value))
  return out
