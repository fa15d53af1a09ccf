"""Sort a string of digits (Trax TransformerLM guide style), seq2seq.

Launch:
  python launch/train.py --config=configs/sort.py --workdir=/tmp/sort
  python launch/evaluate.py --workdir=/tmp/sort --split=test --num_examples=-1
  (`configs/sort.py:tiny,smoke` is a seconds-long smoke run on CPU.)

Expected result (measured, 2-core CPU, ~20 min of training on a shared
machine): test sequence accuracy 99.6% (796 of 799) on the trained lengths 1-10
(`sequence_accuracy_trained_lengths`), 14.7% on lengths 11-20.
"""

import ml_collections

from transformer_research.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a model variant and/or `smoke` (see `base.parse_arg`); default "mini"."""
  variant, smoke = base.parse_arg(arg, default_variant="mini")
  c = base.get_config()
  c.model.variant = variant
  c.data.task = "sort"
  c.data.max_input_len = 20  # eval_max_len symbols.
  c.data.max_target_len = 21  # ... plus EOS.
  c.train.num_steps = 3000
  c.eval.every_steps = 1000
  c.train.batch_size = 64
  return base.finalize(c, smoke)
