"""Classify whether the first number is larger: "4014-293" -> 1.

Trained on numbers of up to 10 digits, tested on 1-15 digits (11-15: the
length generalisation of an encoder classifier).

Launch:
  python launch/train.py --config=configs/difference.py --workdir=/tmp/difference
  python launch/evaluate.py --workdir=/tmp/difference --split=test --num_examples=-1
  (`configs/difference.py:tiny,smoke` is a seconds-long smoke run on CPU.)

Expected result (measured, 2-core CPU, 8 min of training on a shared
machine): test accuracy 96.5% on lengths 1-10 (`accuracy_trained_lengths`;
the 99% target is not reached yet), 60.8% on 11-15: above chance, so the
model partly compares digit by digit rather than memorising lengths.
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
