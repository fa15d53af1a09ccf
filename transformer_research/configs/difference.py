"""Classify whether the first number is larger: "4014-293" -> 1.

Trained on numbers of up to 10 digits, tested on 11-15 digits only
(length generalisation of an encoder classifier).

Launch:
  python launch/train.py --config=configs/difference.py --workdir=/tmp/difference
  (`configs/difference.py:tiny,smoke` is a seconds-long smoke run on CPU.)

Expected result: not yet measured here. Accuracy near 1.0 in
distribution; on 11-15 digits anything well above 0.5 means the model
compares digit by digit rather than memorising lengths.
"""

import ml_collections

from transformer_research.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a model variant and/or `smoke` (see `base.parse_arg`); default "mini"."""
  variant, smoke = base.parse_arg(arg, default_variant="mini")
  c = base.get_config()
  c.model.variant = variant
  c.data.task = "difference"
  c.data.max_input_len = 31  # Two 15-digit numbers and "-".
  c.data.eval_max_len = 15
  c.train.num_steps = 3000
  c.eval.every_steps = 1000
  c.train.batch_size = 64
  return base.finalize(c, smoke)
