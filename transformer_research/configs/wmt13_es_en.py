"""English -> Spanish on real WMT13 data (stock TFDS `wmt13_translate/es-en`).

For machines with internet: TFDS downloads several GB on first use.
Validation is newstest2012, test newstest2013. Every host tokenizes the
whole training split once at start (minutes at this size, ~4 bytes a token);
`--config.data.max_train_examples=N` caps it.

Launch:
  python launch/train.py --config=configs/wmt13_es_en.py --workdir=/tmp/wmt13
  (`configs/wmt13_es_en.py:tiny,smoke` is a seconds-long smoke run on CPU.)

Expected result: not yet measured here; a Transformer base reaches
roughly 30 BLEU on newstest2013 en->es after long training (literature).
"""

import ml_collections

from transformer_research.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a model variant and/or `smoke` (see `base.parse_arg`); default "base"."""
  variant, smoke = base.parse_arg(arg, default_variant="base")
  c = base.get_config()
  c.model.variant = variant
  c.data.task = "wmt13_es_en"
  c.data.packing = True
  c.data.max_input_len = 128
  c.data.max_target_len = 128
  c.data.vocab_size = 32000
  c.train.num_steps = 100_000
  c.train.batch_size = 256
  return base.finalize(c, smoke)
