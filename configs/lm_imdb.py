"""Decoder-only language model on IMDB review text.

Reviews are tokenized with an 8k SentencePiece model, cut into 256-token
chunks and packed. Local data: `--config.data.train_path=... --config.data.eval_path=...`.

Launch:
  python launch/train.py --config=configs/lm_imdb.py --workdir=/tmp/lm_imdb
  (`configs/lm_imdb.py:tiny` is a seconds-long smoke run on CPU.)

Expected result: not yet measured here; report validation perplexity.
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
  c.data.task = "lm_imdb"
  c.data.packing = True
  c.data.max_target_len = 256
  c.data.vocab_size = 8000
  c.train.num_steps = 10000
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
