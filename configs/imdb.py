"""IMDB sentiment classification (TFDS `imdb_reviews`, or local files).

Local data: `--config.data.train_path=/path/train.jsonl.gz
--config.data.eval_path=/path/test.jsonl.gz` (JSON lines or TSV with `text`
and `label` fields).

Launch:
  python launch/train.py --config=configs/imdb.py --workdir=/tmp/imdb
  (`configs/imdb.py:tiny` is a seconds-long smoke run on CPU.)

Expected result: not yet measured here; a small Transformer from scratch
typically reaches about 85% test accuracy.
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
  c.data.task = "imdb"
  c.data.max_input_len = 256  # Reviews are cut to their first 256 tokens.
  c.data.vocab_size = 8000
  c.train.num_steps = 5000
  c.train.batch_size = 64
  if c.model.variant == "tiny":  # Smoke run: seconds on CPU, used by tests.
    c.data.max_train_examples = 2000
    c.data.vocab_size = 500
    c.train.num_steps = 20
    c.train.batch_size = 16
    c.eval.every_steps = 10
    c.eval.batch_size = 16
    c.eval.decode_examples = 16
    c.checkpoint.every_steps = 10
  return c.lock()
