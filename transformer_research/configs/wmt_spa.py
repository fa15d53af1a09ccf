"""The main job: English -> Spanish translation on the Tatoeba spa-eng pairs.

Data: the `spa_eng` TFDS builder (70/15/15 split by English sentence), a
joint 8k SentencePiece vocabulary trained into the workdir, packed rows.
Offline: put spa-eng.zip in the TFDS manual dir or pass
`--config.data.manual_dir=DIR`. Your own pairs instead (any two languages):
`--config.data.train_path=pairs.tsv --config.data.eval_path=test.tsv`, files of
`source<TAB>target` lines (the Tatoeba / Anki layout); a fixed tenth of the
source sentences of train_path is held out as validation.

Launch:
  python launch/train.py --config=configs/wmt_spa.py --workdir=/tmp/wmt
  (`configs/wmt_spa.py:tiny,smoke` is a seconds-long smoke run on CPU.)

The `cpu` recipe (`--config=configs/wmt_spa.py:cpu`) is the 40-minute budget
of a 2-core CPU: `train.max_minutes=40` (preparation included), a step count
that fits it there, half the batch for twice the updates, a higher peak
learning rate annealed to zero by cosine, and one embedding table shared by
source, target and output (the vocabulary is joint).

Expected result (measured, README results table): `:cpu` reaches test
BLEU 44.3 / chrF 63.1 (beam 4, all 15,336 test sentences, all references)
after 1,200 steps, 38 minutes on an idle 2-core CPU from the command to the
last step; then
  python launch/evaluate.py --workdir=/tmp/wmt --split=test --num_examples=-1
The same recipe run longer, `--config.train.num_steps=2400
--config.train.max_minutes=65` (the cosine then spans 2,400 steps), reaches
test BLEU 48.3 / chrF 66.1 (greedy 46.8) in 50.5 minutes. The full recipe
reaches test BLEU 47.2 / chrF 65.5 (greedy 45.6 / 64.3) at its last step,
10,000, after 398 minutes of training on a 2-core CPU (1.6-1.8 s a step; four
starts, each resuming with a larger `--config.train.max_minutes`). On the
way: 45.8 / 64.5 at step 3,025 (a 100-minute budget), 46.8 / 65.1 at 4,776,
47.2 / 65.4 at 7,000; BLEU is flat after ~5,000 steps.
"""

import ml_collections

from transformer_research.configs import base

RECIPES = ("cpu",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: the `cpu` recipe, a model variant and/or `smoke` (see
  `base.parse_arg`); default "small"."""
  recipe, arg = base.take_recipe(arg, RECIPES)
  variant, smoke = base.parse_arg(arg, default_variant="small")
  c = base.get_config()
  c.model.variant = variant
  c.data.task = "spa_eng"
  c.data.packing = True
  c.data.max_input_len = 64  # Tatoeba sentences are short; longer pairs are skipped.
  c.data.max_target_len = 64
  c.data.vocab_size = 8000
  c.train.num_steps = 10000
  c.train.batch_size = 128  # Packed rows of 64 tokens: ~5 sentence pairs each.
  if recipe == "cpu":
    c.train.max_minutes = 40.0
    c.train.num_steps = 1200  # ~1.9 s a step on 2 cores: the cosine ends with the budget.
    c.train.batch_size = 64
    c.train.schedule = "cosine"
    c.train.learning_rate = 2e-3
    c.model.share_embeddings = True
    c.eval.every_steps = c.train.num_steps  # Decoding costs training time: eval at the end.
    c.checkpoint.every_steps = 200
  return base.finalize(c, smoke)
