"""Sort a string of digits (Trax TransformerLM guide style), seq2seq.

Launch:
  python launch/train.py --config=configs/sort.py --workdir=/tmp/sort
  (`configs/sort.py:tiny,smoke` is a seconds-long smoke run on CPU.)

Expected result: not yet measured here. A `small` model should reach
sequence accuracy near 1.0 on test lengths <= 10; lengths 11-20 (never
trained on) show how far it generalises.
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
