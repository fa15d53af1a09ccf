"""IMDB sentiment classifier whose encoder starts from a masked LM (`imdb_mlm.py`).

Step 2 of the transfer recipe. With `checkpoint.init_from` naming an
`imdb_mlm.py` run directory, the classifier's token embedding and encoder
(`embed/...`, `encoder/...`) load that run's, the pooling head starts fresh
(listed in the log), and the run reads text with that run's SentencePiece
model, copied into this run directory (warm_start.py). Without init_from it
is the same classifier trained from scratch, the baseline of the comparison;
`--config.data.tokenizer_from=DIR` gives the baseline the pre-trained run's
tokenizer without its weights.

Local data: as imdb.py (`--config.data.train_path=... --config.data.eval_path=...`:
JSON lines, TSV, one .txt file per class, or a directory with one folder per
class such as aclImdb's `train/` with `pos/` and `neg/`).

Launch:
  python launch/train.py --config=configs/imdb_mlm.py --workdir=/tmp/imdb_mlm
  python launch/train.py --config=configs/imdb_finetune.py --workdir=/tmp/imdb_ft \\
      --config.checkpoint.init_from=/tmp/imdb_mlm
  (`:tiny,smoke` on both gives a seconds-long smoke run on CPU.)

Expected result: see the README's transfer table (test accuracy from scratch
and from the masked LM, with all 22,500 and with 1,000 labelled reviews).
"""

import ml_collections

from transformer_research.configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg`: a model variant and/or `smoke` (see `base.parse_arg`); default "mini"."""
  variant, smoke = base.parse_arg(arg, default_variant="mini")
  c = base.get_config()
  c.model.variant = variant  # The variant the masked LM was trained with.
  c.data.task = "imdb"
  c.data.max_input_len = 128  # As imdb_mlm.py: the length the encoder was pre-trained on.
  c.data.vocab_size = 8000  # As imdb_mlm.py: its tokenizer is reused.
  c.train.num_steps = 1000
  c.train.batch_size = 32
  c.eval.every_steps = 250
  c.checkpoint.every_steps = 250
  # The masked LM's embedding and encoder, one to one; the head starts fresh.
  c.checkpoint.init_rules = ((r"^(embed|encoder)/", r"\1/"),)
  return base.finalize(c, smoke)
