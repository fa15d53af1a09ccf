"""English -> Spanish on real WMT13 data (stock TFDS `wmt13_translate/es-en`).

For machines with internet: TFDS downloads several GB on first use.
Validation is newstest2012, test newstest2013. Every host tokenizes the
whole training split once at start (minutes at this size, ~4 bytes a token);
`--config.data.max_train_examples=N` caps it.

Launch:
  python launch/train.py --config=configs/wmt13_es_en.py --workdir=/tmp/wmt13
  (`configs/wmt13_es_en.py:tiny` is a seconds-long smoke run on CPU.)

Expected result: not yet measured here; a Transformer base reaches
roughly 30 BLEU on newstest2013 en->es after long training (literature).
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
  """`arg` names the model variant (models/variants.py); default "base"."""
  c = _base().get_config()
  c.model.variant = arg or "base"
  c.data.task = "wmt13_es_en"
  c.data.packing = True
  c.data.max_input_len = 128
  c.data.max_target_len = 128
  c.data.vocab_size = 32000
  c.train.num_steps = 100_000
  c.train.batch_size = 256
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
