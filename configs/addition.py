"""Reversed-digit addition: "321+54" -> "861" then EOS (123 + 45 = 168).

Trained on numbers of up to 10 digits, evaluated per length up to 20
digits: the per-length table shows length generalisation.

Launch:
  python launch/train.py --config=configs/addition.py --workdir=/tmp/addition
  (`configs/addition.py:tiny` is a seconds-long smoke run on CPU.)

Expected result: not yet measured here. Sequence accuracy should be high
for lengths <= 10 and drop beyond them (sinusoidal positions extrapolate
poorly); the drop-off length is the interesting number.
"""

import importlib.util
import pathlib

import ml_collections


def _base():
  """configs/base.py, loaded by path: config_flags loads config files by path,
  not as a package, so `from configs import base` would not resolve."""
  spec = importlib.util.spec_from_file_location(
      "transformer_research_configs_base", pathlib.Path(__file__).with_name("base.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` names the model variant (models/variants.py); default "small"."""
  c = _base().get_config()
  c.model.variant = arg or "small"
  c.data.task = "addition"
  c.data.max_input_len = 41  # Two 20-digit numbers and "+".
  c.data.max_target_len = 22  # A 21-digit sum plus EOS.
  c.train.num_steps = 10000
  c.train.batch_size = 64
  if c.model.variant == "tiny":  # Smoke run: seconds on CPU, used by tests.
    c.data.num_train_examples = 1000
    c.data.num_eval_per_length = 4
    c.train.num_steps = 20
    c.train.batch_size = 16
    c.eval.every_steps = 10
    c.eval.batch_size = 16
    c.eval.decode_examples = 16
    c.checkpoint.every_steps = 10
  return c.lock()
