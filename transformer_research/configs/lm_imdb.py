"""Decoder-only language model on IMDB review text.

It learns from IMDB's 50,000 unlabelled reviews (TFDS `unsupervised`; the
last tenth is the validation split) and is tested on the 25,000 test reviews,
labels unused. Reviews are tokenized with an 8k SentencePiece model, cut into
256-token chunks and packed. Local data: `--config.data.train_path=...
--config.data.eval_path=...`.

Launch:
  python launch/train.py --config=configs/lm_imdb.py --workdir=/tmp/lm_imdb
  (`configs/lm_imdb.py:tiny,smoke` is a seconds-long smoke run on CPU.)

Expected result (measured on the 2-core CPU, README results (b)): the `mini`
model after 2,000 steps of 32 rows (27 min) has test perplexity 183.4 on the
25,000 test reviews; the default `small` 10,000-step run is not measured.
"""

import ml_collections

from transformer_research.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a model variant and/or `smoke` (see `base.parse_arg`); default "small"."""
  variant, smoke = base.parse_arg(arg, default_variant="small")
  c = base.get_config()
  c.model.variant = variant
  c.data.task = "lm_imdb"
  c.data.packing = True
  c.data.max_target_len = 256
  c.data.vocab_size = 8000
  c.train.num_steps = 10000
  c.train.batch_size = 64
  return base.finalize(c, smoke)
