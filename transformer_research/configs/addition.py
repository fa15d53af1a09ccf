"""Reversed-digit addition: "321+54" -> "861" then EOS (123 + 45 = 168).

Trained on numbers of up to 10 digits, evaluated per length up to 20
digits: the per-length table shows length generalisation.

Launch:
  python launch/train.py --config=configs/addition.py --workdir=/tmp/addition
  python launch/evaluate.py --workdir=/tmp/addition --split=test --num_examples=-1
  (`configs/addition.py:tiny,smoke` is a seconds-long smoke run on CPU.)

The `index_hints` recipe (`--config=configs/addition.py:index_hints`) is the
position scheme that generalises: each number's digits are numbered from its
least significant one (positions restart after "+"), and training shifts
every example's positions by a random 0-16, for 12,000 steps; evaluate it
with the mean of its last three checkpoints (steps 11,000, 11,500, 12,000):
  python launch/evaluate.py --workdir=DIR --split=test --num_examples=-1 --average_last=3

Expected result (measured, 2-core CPU, README results table): test sequence
accuracy on numbers of up to 10 digits / of 11-20 digits
(`sequence_accuracy_trained_lengths` / `_longer_lengths`):
  default (sinusoidal absolute positions): 100% / 0%, 8,000 steps (~40 min);
  `:index_hints`, last three checkpoints averaged: 99.45% / 90.3% at 12,000
  steps (32 min on 2 cores), 99.56% / 90.4% at 16,000, 99.23% / 92.1% at
  20,000 (the same run resumed); its last checkpoint alone: 99.1% / 89.7% at
  12,000 (98.0% / 89.0% at 8,000, 98.8% / 91.1% at 16,000, 99.1% / 89.9% at
  20,000);
  RoPE (`--config.model.positions=rope`): 99.6% / 2.1%; RoPE with the restarts
  alone: 99.7% / 4.6%.
"""

import ml_collections

from transformer_research.configs import base
from transformer_research.data import tasks

RECIPES = ("index_hints",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: the `index_hints` recipe, a model variant and/or `smoke` (see
  `base.parse_arg`); default "mini"."""
  recipe, arg = base.take_recipe(arg, RECIPES)
  variant, smoke = base.parse_arg(arg, default_variant="mini")
  c = base.get_config()
  c.model.variant = variant
  c.data.task = "addition"
  c.data.max_input_len = 41  # Two 20-digit numbers and "+".
  c.data.max_target_len = 22  # A 21-digit sum plus EOS.
  c.train.num_steps = 8000
  c.eval.every_steps = 2000
  c.train.batch_size = 64
  if recipe == "index_hints":
    # Each number's digits count 0, 1, 2... from the least significant, as the
    # sum's do, so digit i of both operands and of the sum share position i;
    # random shifts of up to 16 train the positions of longer numbers too.
    task_tokenizer, _ = tasks.char_tokenizers("addition", c.data)
    plus_id, = task_tokenizer.encode("+")
    c.model.position_restart_ids = (plus_id,)
    c.model.position_offset_max = 16
    c.train.num_steps = 12000  # 8,000 gave 98.0% on the trained lengths; 12,000 gave 99.1%.
  return base.finalize(c, smoke)
