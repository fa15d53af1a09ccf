"""IMDB sentiment classification (TFDS `imdb_reviews`, or local files).

Local data: `--config.data.train_path=/path/train.jsonl.gz
--config.data.eval_path=/path/test.jsonl.gz`: JSON lines or TSV (the text and
label fields detected from the keys / header, or `data.text_field`,
`data.label_field`), one .txt file per class (`neg.txt`, `pos.txt`), or a
directory with one folder per class (aclImdb's `train/` with
`--config.data.class_names="('neg', 'pos')"` to leave out its `unsup/`).

Launch:
  python launch/train.py --config=configs/imdb.py --workdir=/tmp/imdb
  (`configs/imdb.py:tiny,smoke` is a seconds-long smoke run on CPU.)

The `cpu` recipe (`--config=configs/imdb.py:cpu`) is the 40-minute budget of
a 2-core CPU: the `mini` model (the size can still be given: `:small,cpu`)
over 512 tokens of a review, its first 128 and its last 384 when it is longer
(9% of test reviews are), of a 32k SentencePiece vocabulary of lowercased text
without punctuation (nearer whole words), batch 32 for ~3-4 epochs, cosine from
1e-3, dropout 0.3, attention dropout 0.1 and weight decay against the
overfitting of 24,000 training reviews (1,000 are held out for validation;
training accuracy passes 95% in the third epoch), and the checkpoints kept by
validation accuracy.

Expected result (measured, README results table): `:cpu` reaches test
accuracy 88.15% (all 25,000 test reviews) when its budget stops it at step
2,154 of 2,800 on a 2-core CPU (0.92 steps/s), validation accuracy 89.5%
there; then
  python launch/evaluate.py --workdir=/tmp/imdb --split=test --num_examples=-1
"""

import ml_collections

from transformer_research.configs import base

RECIPES = ("cpu",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: the `cpu` recipe, a model variant and/or `smoke` (see
  `base.parse_arg`); default "small" ("mini" with `cpu`)."""
  recipe, arg = base.take_recipe(arg, RECIPES)
  variant, smoke = base.parse_arg(arg, default_variant="mini" if recipe == "cpu" else "small")
  c = base.get_config()
  c.model.variant = variant
  c.data.task = "imdb"
  c.data.max_input_len = 256  # Reviews are cut to their first 256 tokens.
  c.data.vocab_size = 8000
  c.train.num_steps = 5000
  c.train.batch_size = 64
  if recipe == "cpu":
    c.data.max_input_len = 512
    c.data.vocab_size = 32000
    c.data.standardize = True
    c.data.truncation = "head_tail"
    c.data.validation_fraction = 0.04  # 1,000 reviews: enough to pick a checkpoint.
    c.model.dropout_rate = 0.3
    c.model.attention_dropout_rate = 0.1  # With standardize: ~1.1 steps/s, not 1.75.
    c.train.max_minutes = 40.0
    c.train.num_steps = 2800  # On 2 cores the budget ends it at step 2,150-2,600.
    c.train.batch_size = 32
    c.train.schedule = "cosine"
    c.train.weight_decay = 0.1
    c.eval.every_steps = 700  # ~An epoch; 13 s a validation pass.
    c.checkpoint.every_steps = 700
    c.checkpoint.best_metric = "accuracy"
  return base.finalize(c, smoke)
