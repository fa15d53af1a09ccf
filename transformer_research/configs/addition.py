"""Reversed-digit addition: "321+54" -> "861" then EOS (123 + 45 = 168).

Trained on numbers of up to 10 digits, evaluated per length up to 20
digits: the per-length table shows length generalisation.

Launch:
  python launch/train.py --config=configs/addition.py --workdir=/tmp/addition
  python launch/evaluate.py --workdir=/tmp/addition --split=test --num_examples=-1
  (`configs/addition.py:tiny,smoke` is a seconds-long smoke run on CPU.)

Expected result (measured, 2-core CPU, ~40 min of training on a shared
machine): test sequence accuracy 100% (910 of 910) on numbers of up to 10
digits (`sequence_accuracy_trained_lengths`), 0% on 11-20 digits: sinusoidal
absolute positions do not extrapolate; other position schemes are untried.
"""

import ml_collections

from transformer_research.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a model variant and/or `smoke` (see `base.parse_arg`); default "mini"."""
  variant, smoke = base.parse_arg(arg, default_variant="mini")
  c = base.get_config()
  c.model.variant = variant
  c.data.task = "addition"
  c.data.max_input_len = 41  # Two 20-digit numbers and "+".
  c.data.max_target_len = 22  # A 21-digit sum plus EOS.
  c.train.num_steps = 8000
  c.eval.every_steps = 2000
  c.train.batch_size = 64
  return base.finalize(c, smoke)
