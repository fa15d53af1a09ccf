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

from transformer_research.configs import reverse


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/reverse.py's recipe (lengths, steps, batch; `arg` as there) on the sort task."""
  c = reverse.get_config(arg)
  c.data.task = "sort"
  return c
