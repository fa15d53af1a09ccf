"""Reverse a string of digits (Trax TransformerLM guide style), seq2seq.

Launch:
  python launch/train.py --config=configs/reverse.py --workdir=/tmp/reverse
  (`configs/reverse.py:tiny` is a seconds-long smoke run on CPU.)

Expected result: not yet measured here. A `small` model should reach
sequence accuracy near 1.0 on test lengths <= 10 within a few thousand
steps; lengths 11-20 (never trained on) show how far it generalises.
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
  c.data.task = "reverse"
  c.data.max_input_len = 20  # eval_max_len symbols.
  c.data.max_target_len = 21  # ... plus EOS.
  c.train.num_steps = 5000
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
