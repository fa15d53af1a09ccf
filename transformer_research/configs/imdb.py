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

Expected result: not yet measured here; a small Transformer from scratch
typically reaches about 85% test accuracy.
"""

import ml_collections

from transformer_research.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a model variant and/or `smoke` (see `base.parse_arg`); default "small"."""
  variant, smoke = base.parse_arg(arg, default_variant="small")
  c = base.get_config()
  c.model.variant = variant
  c.data.task = "imdb"
  c.data.max_input_len = 256  # Reviews are cut to their first 256 tokens.
  c.data.vocab_size = 8000
  c.train.num_steps = 5000
  c.train.batch_size = 64
  return base.finalize(c, smoke)
