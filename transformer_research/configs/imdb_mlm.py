"""Masked-LM pre-training of an encoder on IMDB's 50,000 unlabelled reviews (BERT's objective).

Step 1 of the transfer recipe; step 2, `imdb_finetune.py`, starts a classifier's
encoder from this run and reads text with this run's tokenizer. Reviews are
cut into 128-token chunks and packed; 15% of the tokens are selected (80%
masked, 10% a random token, 10% kept) and the loss counts only those.

Local data (offline; the labels of eval_path are not used):
  --config.data.train_path=/work/shared/data/sentiment/imdb/imdb_train_unsup.jsonl.gz
  --config.data.eval_path=/work/shared/data/sentiment/imdb/imdb_test.jsonl.gz
Any local text works the same way: JSON lines, TSV, .txt files (one text a
line) or a directory of .txt files (one text a file).

Launch:
  python launch/train.py --config=configs/imdb_mlm.py --workdir=/tmp/imdb_mlm
  (`configs/imdb_mlm.py:tiny,smoke` is a seconds-long smoke run on CPU.)

Expected result: see the README's transfer table (masked-token accuracy of the
`mini` model on the 2-core CPU machine, and what it does for IMDB accuracy).
"""

import ml_collections

from transformer_research.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a model variant and/or `smoke` (see `base.parse_arg`); default "mini"."""
  variant, smoke = base.parse_arg(arg, default_variant="mini")
  c = base.get_config()
  c.model.variant = variant  # imdb_finetune.py must use the same variant.
  c.data.task = "mlm_imdb"
  c.data.packing = True
  c.data.max_input_len = 128  # Tokens per chunk; also imdb_finetune's review length.
  c.data.vocab_size = 8000
  c.train.num_steps = 2000
  c.train.batch_size = 32
  c.train.label_smoothing = 0.0  # BERT's plain cross entropy: perplexity stays meaningful.
  c.eval.every_steps = 1000  # Validation: a tenth of the unlabelled reviews.
  c.checkpoint.every_steps = 500
  return base.finalize(c, smoke)
