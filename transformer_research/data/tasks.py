"""Task registry: what a config's `data.task` name means for the rest of the code.

A task ties together the model kind, the raw data source, the tokenizers, the
loss and the eval metrics, so the training loop, the evaluator and the CLIs
ask one object (`build(config, workdir)`) instead of branching on task names.

Batches follow the contract in `pipeline.py`: targets end with the target
tokenizer's EOS, inputs carry no EOS (`Task.encode_inputs` is the one way to
turn a source sentence into model inputs, so decoding uses the same path),
pad is 0. Long examples are handled per kind: a seq2seq pair longer than the
limit is skipped (counted); a classification text is cut to its first
`max_input_len` tokens (the usual IMDB practice); an LM document is cut into
chunks of `max_target_len` tokens, the last one ending with EOS.
"""

import dataclasses
import os
from typing import Any, Callable, Iterator, Mapping, Sequence

import ml_collections
import numpy as np

from transformer_research.data import pipeline
from transformer_research.data import synthetic
from transformer_research.data import tokenizers as tok_lib

KINDS = ("seq2seq", "classify", "lm")
EVAL_SPLITS = ("validation", "test")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What a task is made of; `build` turns it into a `Task` for one config."""
  kind: str  # One of KINDS: selects the model head and the batch keys.
  source: str  # Where raw records come from (informational, for docs/logs).
  tokenizer: str  # "config" (data.tokenizer decides) or "char" (fixed alphabet).
  loss: str  # Loss name the engine computes.
  metric_names: tuple[str, ...]  # Eval metrics the evaluator reports.


_SEQ_METRICS = ("loss", "accuracy", "sequence_accuracy", "sequence_accuracy_by_length")
REGISTRY: dict[str, TaskSpec] = {
    "spa_eng": TaskSpec("seq2seq", "tfds:spa_eng (en->es)", "config", "cross_entropy",
                        ("loss", "accuracy", "bleu", "chrf")),
    "wmt13_es_en": TaskSpec("seq2seq", "tfds:wmt13_translate/es-en (en->es)", "config",
                            "cross_entropy", ("loss", "accuracy", "bleu", "chrf")),
    "imdb": TaskSpec("classify", "tfds:imdb_reviews or data.train_path", "config",
                     "cross_entropy", ("loss", "accuracy")),
    "lm_imdb": TaskSpec("lm", "tfds:imdb_reviews text or data.train_path", "config",
                        "cross_entropy", ("loss", "accuracy", "perplexity")),
    "reverse": TaskSpec("seq2seq", "synthetic", "char", "cross_entropy", _SEQ_METRICS),
    "sort": TaskSpec("seq2seq", "synthetic", "char", "cross_entropy", _SEQ_METRICS),
    "addition": TaskSpec("seq2seq", "synthetic", "char", "cross_entropy", _SEQ_METRICS),
    "difference": TaskSpec("classify", "synthetic", "char", "cross_entropy",
                           ("loss", "accuracy", "accuracy_by_length")),
}


class _Indexed(Sequence):
  """A source whose records carry their own index, so eval batches and eval
  examples can be matched after bad records were skipped."""

  def __init__(self, source: Sequence[Mapping[str, Any]], limit: int = -1):
    self._source = source
    self._len = len(source) if limit < 0 else min(limit, len(source))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i):
    return {**self._source[i], "index": i}


class Task:
  """One task for one config: tokenizers plus train / eval data access.

  Attributes:
    name, kind, loss, metric_names: from the registry.
    input_tokenizer: tokenizer of `inputs` (None for lm).
    target_tokenizer: tokenizer of `targets` (None for classify).
    input_vocab_size, target_vocab_size: their vocab sizes (None when absent).
    num_classes: classify only (None otherwise).
    eval_splits: split names accepted by `eval_batches` / `eval_examples`.
  """

  def __init__(self, name: str, data: ml_collections.ConfigDict, seed: int,
               raw: Callable[[str], Sequence[Mapping[str, Any]]],
               input_tokenizer: tok_lib.Tokenizer | None,
               target_tokenizer: tok_lib.Tokenizer | None, num_classes: int | None):
    spec = REGISTRY[name]
    self.name, self.kind, self.loss, self.metric_names = name, spec.kind, spec.loss, spec.metric_names
    self.input_tokenizer, self.target_tokenizer = input_tokenizer, target_tokenizer
    self.input_vocab_size = input_tokenizer.vocab_size if input_tokenizer else None
    self.target_vocab_size = target_tokenizer.vocab_size if target_tokenizer else None
    self.num_classes = num_classes
    self.eval_splits = EVAL_SPLITS
    self._data, self._seed, self._raw = data, seed, raw
    self._max_lengths = {"seq2seq": {"inputs": data.max_input_len, "targets": data.max_target_len},
                         "classify": {"inputs": data.max_input_len},
                         "lm": {"targets": data.max_target_len}}[self.kind]
    self._tokenized: dict[str, pipeline.TokenizedData] = {}

  def encode_inputs(self, text: str) -> list[int]:
    """Source text (an LM: the prompt) -> ids without EOS, as in the batches."""
    return (self.target_tokenizer if self.kind == "lm" else self.input_tokenizer).encode(text)

  def _with_eos(self, text: str) -> list[int]:
    """Target ids + EOS; an empty text stays empty so it is skipped as "empty"."""
    ids = self.target_tokenizer.encode(text)
    return ids + [self.target_tokenizer.eos_id] if ids else []

  def _encode(self, record: Mapping[str, Any]) -> dict[str, Any] | list[dict[str, Any]]:
    extra = {k: int(record[k]) for k in ("index", "length") if k in record}
    if self.kind == "seq2seq":
      inputs = self.encode_inputs(record["inputs"])
      targets = self._with_eos(record["targets"])
      return {"inputs": inputs, "targets": targets, "length": len(inputs), **extra}
    if self.kind == "classify":
      label = int(record["label"])
      if not 0 <= label < self.num_classes:
        raise ValueError(f"label={label}; expected 0..{self.num_classes - 1}")
      inputs = self.encode_inputs(record["text"])[:self._data.max_input_len]
      return {"inputs": inputs, "label": label, "length": len(inputs), **extra}
    ids, n = self._with_eos(record["text"]), self._data.max_target_len
    return [{"targets": ids[i:i + n], "length": len(ids), **extra}
            for i in range(0, max(len(ids), 1), n)]

  def _tokenize(self, split: str) -> pipeline.TokenizedData:
    if split not in self._tokenized:
      limit = self._data.max_train_examples if split == "train" else -1
      self._tokenized[split] = pipeline.tokenize(
          _Indexed(self._raw(split), limit), self._encode, self._max_lengths,
          name=f"{self.name}/{split}")
    return self._tokenized[split]

  def train_iterator(self, batch_size: int, process_index: int | None = None,
                     process_count: int | None = None) -> pipeline.BatchIterator:
    """Endless training batches with `get_state`/`set_state`.

    Args:
      batch_size: the global batch; this process yields batch_size // process_count
        rows, its slice of the global batch (identical for any process count).
      process_index, process_count: default to jax.process_index()/process_count().
    """
    data = self._tokenize("train")
    # Training batches carry only model keys; length / index are for eval tables.
    data = dataclasses.replace(data, scalars={k: v for k, v in data.scalars.items()
                                              if k == "label"})
    return pipeline.BatchIterator(
        data, batch_size=batch_size, max_lengths=self._max_lengths,
        packing=self._data.packing and self.kind != "classify",
        num_buckets=self._data.num_buckets, seed=self._seed,
        process_index=process_index, process_count=process_count)

  def eval_batches(self, split: str, batch_size: int, process_index: int | None = None,
                   process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One padded pass over `split` (fixed shape [B/process_count, max_len]).

    Besides the model keys, batches carry `length` [B] (the task's length:
    sequence length / digits for synthetic tasks, input tokens otherwise),
    `index` [B] (position in `eval_examples`' source order) and
    `example_mask` [B] (0 for padding rows of the last batch).
    """
    self._check_split(split)
    return pipeline.eval_batches(self._tokenize(split), batch_size=batch_size,
                                 max_lengths=self._max_lengths,
                                 process_index=process_index, process_count=process_count)

  def eval_examples(self, split: str) -> list[dict[str, Any]]:
    """Raw examples of `split` for decoding, grouped by source text.

    Returns dicts with `source` (str), `references` (list[str]: every target
    of that source, so BLEU is multi-reference), `length` (int) and, for
    classify, `label`. Records skipped as bad in the batches are left out too.
    """
    self._check_split(split)
    raw, kept = self._raw(split), self._tokenize(split)
    lengths = dict(zip(kept.scalars["index"].tolist(), kept.scalars["length"].tolist()))
    grouped: dict[str, dict[str, Any]] = {}
    for i in dict.fromkeys(kept.scalars["index"].tolist()):
      record = raw[i]
      if self.kind == "seq2seq":
        entry = grouped.setdefault(record["inputs"], {"source": record["inputs"], "references": [],
                                                      "length": lengths[i]})
        entry["references"].append(record["targets"])
      elif self.kind == "classify":
        grouped[f"{i}"] = {"source": record["text"], "references": [str(record["label"])],
                           "label": int(record["label"]), "length": lengths[i]}
      else:
        grouped[f"{i}"] = {"source": record["text"], "references": [record["text"]],
                           "length": lengths[i]}
    return list(grouped.values())

  def _check_split(self, split: str) -> None:
    if split not in self.eval_splits:
      raise ValueError(f"split={split!r}; expected one of {self.eval_splits}")


def _synthetic_raw(name: str, data: ml_collections.ConfigDict,
                   seed: int) -> Callable[[str], Sequence[Mapping[str, Any]]]:
  cache: dict[str, list[dict[str, Any]]] = {}

  def raw(split: str) -> list[dict[str, Any]]:
    if split not in cache:
      train = split == "train"
      cache[split] = synthetic.generate(
          name, split, seed=seed, num_symbols=data.num_symbols,
          num_examples=data.num_train_examples if train else data.num_eval_per_length,
          min_len=data.min_len if train else data.eval_min_len,
          max_len=data.train_max_len if train else data.eval_max_len)
    return cache[split]
  return raw


def _text_raw(name: str, data: ml_collections.ConfigDict) -> Callable[[str], Sequence[Mapping[str, Any]]]:
  """Raw records per split; validation is carved from train where a dataset has none."""
  from transformer_research.data import sources  # Deferred: pulls in TFDS.
  cache: dict[str, Sequence[Mapping[str, Any]]] = {}
  tfds_dirs = dict(data_dir=data.tfds_data_dir or None)

  def raw(split: str) -> Sequence[Mapping[str, Any]]:
    if split in cache:
      return cache[split]
    if name in ("spa_eng", "wmt13_es_en"):
      reader = sources.spa_eng if name == "spa_eng" else sources.wmt13_es_en
      cache[split] = reader(split, manual_dir=data.manual_dir or None, **tfds_dirs)
    elif data.train_path:  # Local JSON lines / TSV: the user's own data.
      with_label = name == "imdb"
      if split == "test":
        if not data.eval_path:
          raise ValueError("config.data.eval_path=''; expected a test file when "
                           f"data.train_path={data.train_path!r} is set")
        cache[split] = sources.text_files(data.eval_path, with_label=with_label)
      else:
        if "local_train" not in cache:
          records = sources.text_files(data.train_path, with_label=with_label)
          # Files are often sorted by label: one fixed shuffle makes both the
          # held-out tenth and a `max_train_examples` prefix representative.
          order = np.random.default_rng(0).permutation(len(records))
          cache["local_train"] = [records[i] for i in order]
        records = cache["local_train"]
        cut = len(records) - len(records) // 10  # Last tenth held out for validation.
        cache[split] = records[:cut] if split == "train" else records[cut:]
    else:
      tfds_split = {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"}[split]
      cache[split] = sources.imdb(tfds_split, with_label=name == "imdb", **tfds_dirs)
    return cache[split]
  return raw


def _char_tokenizers(name: str, data: ml_collections.ConfigDict
                     ) -> tuple[tok_lib.Tokenizer, tok_lib.Tokenizer | None]:
  if name in ("reverse", "sort"):
    tok = tok_lib.CharTokenizer(synthetic.ALPHABET[:data.num_symbols])
    return tok, tok
  if name == "addition":
    tok = tok_lib.digit_tokenizer("+")
    return tok, tok
  return tok_lib.digit_tokenizer("-"), None


def _text_tokenizers(name: str, kind: str, data: ml_collections.ConfigDict,
                     raw: Callable[[str], Sequence[Mapping[str, Any]]], workdir: str,
                     process_index: int, process_count: int
                     ) -> tuple[tok_lib.Tokenizer, tok_lib.Tokenizer]:
  """(inputs, targets) tokenizers; SentencePiece models are trained into `workdir`."""
  if data.tokenizer == "sentencepiece":
    procs = dict(process_index=process_index, process_count=process_count)
    # Trained on the records the model trains on (all, or the first N).
    train = _Indexed(raw("train"), data.max_train_examples)
    if kind == "seq2seq":
      pair = tok_lib.translation_sentencepiece(
          train, workdir, data.vocab_size, joint=data.joint_vocab,
          standardize_text=data.standardize, **procs)
    else:
      texts = lambda: ((tok_lib.standardize(train[i]["text"]) if data.standardize
                        else train[i]["text"]) for i in range(len(train)))
      suffix = f"{data.vocab_size}{'_std' if data.standardize else ''}.model"
      tok = tok_lib.load_or_train_sentencepiece(
          os.path.join(workdir, f"spm_{name}_{suffix}"), texts, data.vocab_size, **procs)
      pair = (tok, tok)
  elif data.tokenizer == "bpemb":
    cache = dict(cache_dir=data.bpemb_cache_dir or None)
    english = tok_lib.BPEmbTokenizer("en", data.vocab_size, **cache)
    pair = (english, tok_lib.BPEmbTokenizer("es", data.vocab_size, **cache)
            if kind == "seq2seq" else english)
  elif data.tokenizer == "tiktoken":
    pair = (tok_lib.TiktokenTokenizer(),) * 2
  else:
    raise ValueError(f"config.data.tokenizer={data.tokenizer!r}; expected "
                     "'sentencepiece', 'bpemb' or 'tiktoken'")
  if data.standardize:
    pair = tuple(tok_lib.Standardized(t) for t in pair)
  return pair


def build(config: ml_collections.ConfigDict, workdir: str, *,
          process_index: int | None = None, process_count: int | None = None) -> Task:
  """The task named by `config.data.task`, with tokenizers trained/loaded in `workdir`.

  Args:
    config: a full config (uses `config.data` and `config.seed`).
    workdir: where trained tokenizer models are written and found again.
    process_index, process_count: who trains a tokenizer (process 0; the
      others wait for its file); default from jax.
  """
  name, data = config.data.task, config.data
  if name not in REGISTRY:
    raise ValueError(f"config.data.task={name!r}; expected one of {sorted(REGISTRY)}")
  spec = REGISTRY[name]
  if spec.tokenizer == "char":
    raw = _synthetic_raw(name, data, config.seed)
    in_tok, tgt_tok = _char_tokenizers(name, data)
  else:
    raw = _text_raw(name, data)
    pi, pc = pipeline.default_process(process_index, process_count)
    in_tok, tgt_tok = _text_tokenizers(name, spec.kind, data, raw, workdir, pi, pc)
  if spec.kind == "lm":
    in_tok = None
  elif spec.kind == "classify":
    tgt_tok = None
  return Task(name, data, config.seed, raw, in_tok, tgt_tok,
              num_classes=2 if spec.kind == "classify" else None)
