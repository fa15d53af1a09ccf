"""Task registry: what a config's `data.task` name means for the rest of the code.

A task ties together the model kind, the raw data source, the tokenizers and
the eval metrics, so the training loop, the evaluator and the CLIs ask one
object (`build(config, workdir)`) instead of branching on task names.

What the model needs to know of a task (its kind, vocabulary sizes and
classes) is answered from the config alone, by `spec` and `vocab_sizes`, so a
model can be built without reading data. `build` opens data lazily: a split
is read when it is first iterated, and the training split for tokenizer
training only when no trained tokenizer model is found in the workdir.

Multi-process runs assume no disk shared by the hosts. Tokenizer models are
trained (or loaded) by process 0 alone and their bytes broadcast to the other
processes. A TFDS dataset is prepared by process 0 first; after a barrier the
other processes open it too, which finds the prepared copy when
`data.tfds_data_dir` is shared (a bucket such as `gs://bucket/tfds`: prepared
once) and prepares a copy of their own when it is host-local (once per host).
Two processes never prepare into the same directory at once. Local data files
(`data.train_path`) are read by every process: put them where every host can
read them (a bucket, or a copy on each host).

Batches follow the contract in `pipeline.py`: targets end with the target
tokenizer's EOS, inputs carry no EOS (`Task.encode_inputs` is the one way to
turn a source sentence into model inputs, so decoding uses the same path),
pad is 0. Long examples are handled per kind: a seq2seq pair longer than the
limit is skipped (counted); a classification text is cut to its first
`max_input_len` tokens (the usual IMDB practice) or to its head and tail
(`data.truncation`); an LM document is cut into
chunks of `max_target_len` tokens, the last one ending with EOS; a masked-LM
document into chunks of `max_input_len` tokens (no EOS: they are encoder
inputs), whose batches are masked as they are made (`masking.py`).
"""

import dataclasses
import functools
import hashlib
import json
from typing import Any, Callable, Iterator, Mapping, Sequence

from etils import epath
import ml_collections
import numpy as np

from transformer_research import distributed
from transformer_research.data import cache as cache_lib
from transformer_research.data import masking
from transformer_research.data import pipeline
from transformer_research.data import synthetic
from transformer_research.data import text_files
from transformer_research.data import tokenizers as tok_lib

EVAL_SPLITS = ("validation", "test")
TRUNCATIONS = ("head", "head_tail")


def cut(ids: list[int], max_len: int, truncation: str) -> list[int]:
  """A classification text's ids cut to `max_len`: its head, or its first
  quarter and last three quarters ("head_tail")."""
  if len(ids) <= max_len or truncation == "head":
    return ids[:max_len]
  head = max_len // 4
  return ids[:head] + ids[len(ids) - (max_len - head):]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What a task is made of; `build` turns it into a `Task` for one config."""
  kind: str  # One of models.KINDS: selects the model head and the batch keys.
  tokenizer: str  # "config" (data.tokenizer decides) or "char" (fixed alphabet).
  metric_names: tuple[str, ...]  # Eval metrics the evaluator reports.
  num_classes: int | None = None  # Classification tasks only.
  local_files: bool = False  # Reads data.train_path / eval_path when they are set.


@dataclasses.dataclass(frozen=True)
class VocabSizes:
  """What the model's embeddings and head are sized by (None: not used)."""
  input: int | None  # Rows of the input embedding (seq2seq, classify).
  target: int | None  # Rows of the target embedding / logits (seq2seq, lm).
  num_classes: int | None  # Classes of the head (classify).


_SEQ_METRICS = ("loss", "accuracy", "sequence_accuracy", "sequence_accuracy_by_length")
_TRANSLATION_METRICS = ("loss", "accuracy", "bleu", "chrf")
REGISTRY: dict[str, TaskSpec] = {
    # TFDS spa_eng / wmt13 (en->es), or local source<TAB>target files (data.train_path).
    "spa_eng": TaskSpec("seq2seq", "config", _TRANSLATION_METRICS, local_files=True),
    "wmt13_es_en": TaskSpec("seq2seq", "config", _TRANSLATION_METRICS, local_files=True),
    # TFDS imdb_reviews, or local files (data.train_path).
    "imdb": TaskSpec("classify", "config", ("loss", "accuracy"), num_classes=2,
                     local_files=True),
    "lm_imdb": TaskSpec("lm", "config", ("loss", "accuracy", "perplexity"), local_files=True),
    # Masked-LM pre-training of an encoder on IMDB's unlabelled reviews.
    "mlm_imdb": TaskSpec("mlm", "config", ("loss", "accuracy", "perplexity"), local_files=True),
    "reverse": TaskSpec("seq2seq", "char", _SEQ_METRICS),
    "sort": TaskSpec("seq2seq", "char", _SEQ_METRICS),
    "addition": TaskSpec("seq2seq", "char", _SEQ_METRICS),
    "difference": TaskSpec("classify", "char", ("loss", "accuracy", "accuracy_by_length"),
                           num_classes=2),
}


def spec(name: str) -> TaskSpec:
  """The registry entry of `config.data.task`, or an error listing the names."""
  if name not in REGISTRY:
    raise ValueError(f"config.data.task={name!r}; expected one of {sorted(REGISTRY)}")
  return REGISTRY[name]


def check_data_paths(data: ml_collections.ConfigDict) -> None:
  """Refuses local data paths the task would not read: spa_eng trained on
  TFDS spa_eng with data.train_path=pairs.tsv set, and an eval_path without a
  train_path left the test split TFDS's, each without a word."""
  readers = sorted(name for name, entry in REGISTRY.items() if entry.local_files)
  for field in ("train_path", "eval_path"):
    if data.get(field) and not spec(data.task).local_files:
      raise ValueError(f"config.data.{field}={data[field]!r}: data.task={data.task!r} reads no "
                       f"local files; expected '' (the tasks that do: {', '.join(readers)})")
  if data.get("eval_path") and not data.get("train_path"):
    raise ValueError(f"config.data.eval_path={data.eval_path!r} without a data.train_path: the "
                     "test file is read beside local training files; set both, or neither for "
                     f"the TFDS dataset of data.task={data.task!r}")


def num_classes(data: ml_collections.ConfigDict) -> int | None:
  """Classes of a classification task: `data.class_names` when given (a user's
  own classes), else the registry's; None for the other kinds."""
  task_spec = spec(data.task)
  if task_spec.num_classes is None or not data.get("class_names", ()):
    return task_spec.num_classes
  return len(data.class_names)


def class_labels(data: ml_collections.ConfigDict) -> tuple[str, ...]:
  """What a classifier's labels are called, in label order: `data.class_names`,
  else IMDB's own ('neg', 'pos') when the labels are TFDS imdb_reviews', else
  the label numbers (the classes of a folder layout are its folder names only
  where the files are: a run directory is read without them)."""
  if data.get("class_names", ()):
    return tuple(data.class_names)
  if data.task == "imdb" and not data.get("train_path"):
    return ("neg", "pos")  # imdb_reviews' ClassLabel names.
  return tuple(str(i) for i in range(num_classes(data)))


class _Indexed(Sequence):
  """A source whose records carry their own index, so eval batches and eval
  examples can be matched after bad records were skipped.

  The source is opened on first use: a task whose tokenizers are already
  trained never opens its training split until training asks for batches.
  """

  def __init__(self, open_source: Callable[[], Sequence[Mapping[str, Any]]], limit: int = -1):
    self._open, self._limit = open_source, limit

  @functools.cached_property
  def _source(self) -> Sequence[Mapping[str, Any]]:
    return self._open()

  def __len__(self) -> int:
    n = len(self._source)
    return n if self._limit < 0 else min(self._limit, n)

  def __getitem__(self, i):
    return {**self._source[i], "index": i}

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    read = getattr(self._source, "__getitems__", None)
    records = read(indices) if read else [self._source[i] for i in indices]
    return [{**r, "index": i} for i, r in zip(indices, records)]


class Task:
  """One task for one config: tokenizers plus train / eval data access.

  Attributes:
    name, kind, metric_names, num_classes: from the registry.
    input_tokenizer: tokenizer of `inputs` (None for lm).
    target_tokenizer: tokenizer of `targets` (None for classify).
    input_vocab_size, target_vocab_size: their vocab sizes (None when absent).
    num_classes: classify only (None otherwise).
    eval_splits: split names accepted by `eval_batches` / `eval_examples`:
      the task's own, and any added with `add_split`.
  """

  def __init__(self, name: str, data: ml_collections.ConfigDict, seed: int,
               raw: Callable[[str], Sequence[Mapping[str, Any]]],
               input_tokenizer: tok_lib.Tokenizer | None,
               target_tokenizer: tok_lib.Tokenizer | None, *, cache_dir: str | None = None,
               data_fingerprint: Callable[[str], Any] | None = None,
               data_content: Callable[[], str | None] = lambda: None):
    """Args:
      name, data, seed: the task name, `config.data` and `config.seed`.
      raw: split -> raw records.
      input_tokenizer, target_tokenizer: as the attributes.
      cache_dir: where tokenized splits are cached (`cache.py`); None = no cache.
      data_fingerprint: split -> what identifies its raw records cheaply
        (needed with `cache_dir`).
      data_content: a digest of the bytes of the files the fingerprint stamps
        (None: not local files), for a cache whose stamps alone changed.
    """
    task_spec = spec(name)
    self.name, self.kind, self.metric_names = name, task_spec.kind, task_spec.metric_names
    self.input_tokenizer, self.target_tokenizer = input_tokenizer, target_tokenizer
    self.input_vocab_size = input_tokenizer.vocab_size if input_tokenizer else None
    self.target_vocab_size = target_tokenizer.vocab_size if target_tokenizer else None
    self.num_classes = num_classes(data)
    self.truncation = _truncation(data)
    self.data = data  # config.data
    self._seed, self._source_raw = seed, raw
    self._added: dict[str, Sequence[Mapping[str, Any]]] = {}
    self._max_lengths = {"seq2seq": {"inputs": data.max_input_len, "targets": data.max_target_len},
                         "classify": {"inputs": data.max_input_len},
                         "lm": {"targets": data.max_target_len},
                         "mlm": {"inputs": data.max_input_len}}[self.kind]
    self._tokenized: dict[str, pipeline.TokenizedData] = {}
    self._cache_dir, self._data_fingerprint = cache_dir, data_fingerprint
    self._data_content = data_content

  @property
  def eval_splits(self) -> tuple[str, ...]:
    return EVAL_SPLITS + tuple(self._added)

  def add_split(self, name: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Adds in-memory records, in the raw format of the task's kind (seq2seq:
    `{"inputs", "targets"}`), as an eval split: evaluating sentences from
    local files (`launch/evaluate.py --source_file`) opens no dataset.
    """
    if name in EVAL_SPLITS:
      raise ValueError(f"split name {name!r} is one of the task's own {EVAL_SPLITS}; "
                       "expected another name")
    self._added[name] = records
    self._tokenized.pop(name, None)

  def _raw(self, split: str) -> Sequence[Mapping[str, Any]]:
    return self._added[split] if split in self._added else self._source_raw(split)

  def encode_inputs(self, text: str) -> list[int]:
    """Source text (an LM: the prompt) -> ids without EOS, as in the batches
    (a masked LM's before masking)."""
    return (self.target_tokenizer if self.kind == "lm" else self.input_tokenizer).encode(text)

  def classifier_inputs(self, text: str) -> list[int]:
    """A classifier's inputs for `text`, as in its batches: cut to
    `data.max_input_len` by `data.truncation`."""
    return cut(self.encode_inputs(text), self.data.max_input_len, self.truncation)

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
      inputs = self.classifier_inputs(record["text"])
      return {"inputs": inputs, "label": label, "length": len(inputs), **extra}
    if self.kind == "mlm":  # Every chunk of a document: pre-training uses all the text.
      ids, n = self.encode_inputs(record["text"]), self.data.max_input_len
      return [{"inputs": ids[i:i + n], "length": len(ids), **extra}
              for i in range(0, max(len(ids), 1), n)]
    ids, n = self._with_eos(record["text"]), self.data.max_target_len
    return [{"targets": ids[i:i + n], "length": len(ids), **extra}
            for i in range(0, max(len(ids), 1), n)]

  def _tokenize(self, split: str) -> pipeline.TokenizedData:
    if split not in self._tokenized:
      limit = self.data.max_train_examples if split == "train" else -1
      tokenize = lambda: pipeline.tokenize(
          _Indexed(lambda: self._raw(split), limit), self._encode, self._max_lengths,
          name=f"{self.name}/{split}")
      if self._cache_dir is None or split in self._added:  # Added records: no file to key on.
        self._tokenized[split] = tokenize()
      else:
        key = {"task": self.name, "split": split, "kind": self.kind, "limit": limit,
               "max_lengths": self._max_lengths,
               "truncation": self.truncation,
               "tokenizers": [t.fingerprint if t else None
                              for t in (self.input_tokenizer, self.target_tokenizer)],
               "data": self._data_fingerprint(split)}
        self._tokenized[split] = cache_lib.load_or_tokenize(
            epath.Path(self._cache_dir) / f"{split}.npz", key, tokenize, self._data_content)
      data = self._tokenized[split]
      if not len(data) and any(data.skipped.values()):  # Scored as 0 / 0, or a KeyError.
        limits = ", ".join(f"data.max_{'input' if f == 'inputs' else 'target'}_len={n}"
                           for f, n in self._max_lengths.items())
        raise ValueError(
            f"{self.name}/{split}: no example is usable (skipped: {data.skipped}); too_long "
            f"is longer than {limits}: raise those, or give the split shorter examples")
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
    batches = pipeline.BatchIterator(
        data, batch_size=batch_size, max_lengths=self._max_lengths,
        packing=self.data.packing and self.kind != "classify",
        num_buckets=self.data.num_buckets, seed=self._seed,
        process_index=process_index, process_count=process_count)
    if self.kind == "mlm":
      return masking.MaskedBatches(batches, self._masker(), seed=self._seed,
                                   process_index=process_index, process_count=process_count)
    return batches

  def _masker(self) -> masking.Masker:
    tok = self.input_tokenizer
    return masking.Masker(rate=self.data.mask_rate, mask_id=tok.bos_id, vocab_size=tok.vocab_size,
                          special_ids=(tok.pad_id, tok.eos_id, tok.bos_id))

  def eval_batches(self, split: str, batch_size: int, process_index: int | None = None,
                   process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One padded pass over `split` (fixed shape [B/process_count, max_len]).

    Besides the model keys, batches carry `length` [B] (the task's length:
    sequence length / digits for synthetic tasks, input tokens otherwise),
    `index` [B] (position in `eval_examples`' source order) and
    `example_mask` [B] (0 for padding rows of the last batch).
    """
    self._check_split(split)
    batches = pipeline.eval_batches(self._tokenize(split), batch_size=batch_size,
                                    max_lengths=self._max_lengths,
                                    process_index=process_index, process_count=process_count)
    if self.kind == "mlm":
      return masking.masked_eval_batches(batches, self._masker(), seed=self._seed,
                                         process_index=process_index,
                                         process_count=process_count)
    return batches

  def data_identity(self, split: str) -> dict[str, Any]:
    """The number of examples of `split` and their digest: what every process
    of a run must agree on (`distributed.check_same_data`)."""
    data = self._tokenize(split)
    return {"num_examples": len(data), "data_sha256": data.sha256}

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


def _truncation(data: ml_collections.ConfigDict) -> str:
  """`data.truncation`, checked; "head" for an older config.json without it."""
  truncation = data.get("truncation", "head")
  if truncation not in TRUNCATIONS:
    raise ValueError(f"config.data.truncation={truncation!r}; expected one of {TRUNCATIONS}")
  return truncation


def _validation_fraction(data: ml_collections.ConfigDict) -> float:
  """`data.validation_fraction`, checked; 0.1 for an older config.json without it."""
  held_out = data.get("validation_fraction", 0.1)
  if not 0 < held_out < 1:
    raise ValueError(f"config.data.validation_fraction={held_out!r}; expected a share "
                     "of train in (0, 1)")
  return held_out


def _text_raw(name: str, data: ml_collections.ConfigDict) -> Callable[[str], Sequence[Mapping[str, Any]]]:
  """Raw records per split; validation is carved from train where a dataset has none."""
  from transformer_research.data import sources  # Deferred: pulls in TFDS.
  cache: dict[str, Sequence[Mapping[str, Any]]] = {}
  tfds_dirs = dict(data_dir=data.tfds_data_dir or None)
  held_out = _validation_fraction(data)

  def raw(split: str) -> Sequence[Mapping[str, Any]]:
    if split in cache:
      return cache[split]
    if data.train_path:  # Local files or folders: the user's own data (text_files.py).
      read = _local_reader(name, data)
      if split == "test":
        if not data.eval_path:
          raise ValueError("config.data.eval_path=''; expected a test file when "
                           f"data.train_path={data.train_path!r} is set")
        cache[split] = read(data.eval_path)
      else:
        if "local_train" not in cache:
          cache["local_train"] = _carve(read(data.train_path), held_out, data.train_path,
                                        by_source=spec(name).kind == "seq2seq")
        cache[split] = cache["local_train"][split]
    elif name in ("spa_eng", "wmt13_es_en"):
      reader = sources.spa_eng if name == "spa_eng" else sources.wmt13_es_en
      cache[split] = reader(split, manual_dir=data.manual_dir or None, **tfds_dirs)
    else:
      # The language models (masked and causal) learn text from the 50,000
      # unlabelled reviews; the classifier learns its labels from train.
      train = "train" if name == "imdb" else "unsupervised"
      kept = f"{100 - 100 * held_out:g}%"
      tfds_split = {"train": f"{train}[:{kept}]", "validation": f"{train}[{kept}:]",
                    "test": "test"}[split]
      cache[split] = sources.imdb(tfds_split, with_label=name == "imdb", **tfds_dirs)
    return cache[split]
  return raw


def _local_reader(name: str, data: ml_collections.ConfigDict
                  ) -> Callable[[str], list[dict[str, Any]]]:
  """paths -> raw records of the task's kind, from the user's own files."""
  if spec(name).kind == "seq2seq":
    return text_files.sentence_pairs
  classes = num_classes(data)  # None: text only (language modelling).
  # .get: a run directory's config.json from before these fields existed.
  labels = dict(with_label=classes is not None, num_labels=classes,
                text_field=data.get("text_field", ""), label_field=data.get("label_field", ""))
  if classes is not None:  # One class order for train and test: from train's layout.
    labels["label_names"] = (list(data.get("class_names", ())) or
                             text_files.class_names(data.train_path))
  return lambda paths: text_files.text_files(paths, **labels)


def _carve(records: list[dict[str, Any]], held_out: float, path: str, *, by_source: bool
           ) -> dict[str, list[dict[str, Any]]]:
  """{"train", "validation"}: the last `held_out` share of one fixed shuffle.

  Files are often sorted by label: one fixed shuffle makes both the held-out
  share and a `max_train_examples` prefix representative. Translation pairs
  are shuffled by source sentence (`by_source`), so every translation of one
  source lands in one split (as the spa_eng builder splits): a validation
  source seen in training would score its memorised references.
  """
  groups: dict[Any, list[int]] = {}
  for i, record in enumerate(records):
    groups.setdefault(record["inputs"] if by_source else i, []).append(i)
  groups = list(groups.values())
  order = np.random.default_rng(0).permutation(len(groups))
  kept = len(groups) - round(len(groups) * held_out)
  train = [records[i] for g in order[:kept] for i in groups[g]]
  validation = [records[i] for g in order[kept:] for i in groups[g]]
  if not train or not validation:  # An empty split trains on nothing or scores 0 / 0.
    raise ValueError(
        f"config.data.validation_fraction={held_out!r} of the {len(records)} examples of "
        f"data.train_path={path!r} leaves {len(train)} to train on and {len(validation)} to "
        "validate on; expected a share that leaves both some"
        + (f" (pairs are carved by source sentence: {len(groups)} of them)" if by_source
           else ""))
  return {"train": train, "validation": validation}


def _check_local_paths(name: str, data: ml_collections.ConfigDict) -> None:
  """Refuses a `data.train_path` / `data.eval_path` that matches no file, or
  files of a layout the task does not read, naming the field, before a
  tokenizer is trained on the other (the test file is otherwise first read at
  the first test eval)."""
  check = (text_files.pairs_files if spec(name).kind == "seq2seq" else
           lambda paths: text_files.layout_of(text_files.expand(paths)))
  for field in ("train_path", "eval_path"):
    if data.get(field):
      try:
        check(data[field])
      except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"config.data.{field}: {e}") from None


def _text_fingerprint(data: ml_collections.ConfigDict,
                      raw: Callable[[str], Sequence[Mapping[str, Any]]], split: str) -> Any:
  """What identifies a text task's raw split: the TFDS files, or the local files."""
  if data.train_path:  # Local files, carved into train / validation in _text_raw.
    paths = [data.train_path] + ([data.eval_path] if data.eval_path else [])
    return {"split": split, "files": text_files.fingerprint(paths),
            "validation_fraction": _validation_fraction(data)}
  records = raw(split)
  if hasattr(records, "fingerprint"):  # sources.Source: TFDS files, no record read.
    return records.fingerprint()
  # Anything else (in-memory records): a hash of the content, cheap next to tokenizing it.
  digest = hashlib.sha256()
  for _, record in pipeline.read_records(records):
    digest.update(json.dumps(record, sort_keys=True, default=str).encode())
  return {"split": split, "examples": len(records), "sha256": digest.hexdigest()}


def _text_content(data: ml_collections.ConfigDict) -> str | None:
  """A digest of the bytes of the local files `_text_fingerprint` stamps (None
  for TFDS data: preparing a dataset again can write other bytes for the same
  records; five preparations of spa_eng gave two different files)."""
  if not data.train_path:
    return None
  paths = [data.train_path] + ([data.eval_path] if data.eval_path else [])
  return text_files.content_digest(paths)


def char_tokenizers(name: str, data: ml_collections.ConfigDict
                    ) -> tuple[tok_lib.Tokenizer, tok_lib.Tokenizer | None]:
  """The (input, target) tokenizers of a synthetic task (target None: a label).

  Public because a config may need a token id (`addition:index_hints` restarts
  positions after "+"): it asks here rather than rebuilding the vocabulary.
  """
  if name in ("reverse", "sort"):
    tok = tok_lib.CharTokenizer(synthetic.ALPHABET[:data.num_symbols])
    return tok, tok
  if name == "addition":
    tok = tok_lib.digit_tokenizer("+")
    return tok, tok
  return tok_lib.digit_tokenizer("-"), None


def _text_tokenizers(name: str, kind: str, data: ml_collections.ConfigDict,
                     raw: Callable[[str], Sequence[Mapping[str, Any]]], workdir: str,
                     process_index: int, process_count: int, train: bool
                     ) -> tuple[tok_lib.Tokenizer, tok_lib.Tokenizer]:
  """(inputs, targets) tokenizers, whose model files live in `workdir`.

  SentencePiece models are trained into it by process 0 and broadcast to the
  others (see `tokenizers.load_or_train_sentencepiece`); pretrained BPEmb
  models are copied into it on first use. With `train=False` (a restored run)
  they are only loaded from it, and a missing file is an error naming it.
  """
  if data.tokenizer == "sentencepiece":
    procs = dict(process_index=process_index, train=train,
                 broadcast=distributed.broadcast_bytes if process_count > 1 else None)
    # Trained on the records the model trains on (all, or the first N).
    records = _Indexed(lambda: raw("train"), data.max_train_examples)
    if kind == "seq2seq":
      pair = tok_lib.translation_sentencepiece(
          records, workdir, data.vocab_size, joint=data.joint_vocab,
          standardize_text=data.standardize, **procs)
    else:
      texts = lambda: ((tok_lib.standardize(r["text"]) if data.standardize else r["text"])
                       for _, r in pipeline.read_records(records) if not isinstance(r, Exception))
      tok = tok_lib.load_or_train_sentencepiece(
          epath.Path(workdir) / sentencepiece_files(data)[0], texts, data.vocab_size, **procs)
      pair = (tok, tok)
  elif data.tokenizer == "bpemb":
    def bpemb(lang: str) -> tok_lib.BPEmbTokenizer:
      local = epath.Path(workdir) / f"bpemb_{lang}_{data.vocab_size}.model"
      if local.exists():
        return tok_lib.BPEmbTokenizer(lang, data.vocab_size, model_file=local)
      if not train:
        raise tok_lib.missing_model(local)
      tok = tok_lib.BPEmbTokenizer(lang, data.vocab_size, cache_dir=data.bpemb_cache_dir or None)
      if process_index == 0:
        tok.save(local)
      return tok
    english = bpemb("en")
    pair = (english, bpemb("es") if kind == "seq2seq" else english)
  elif data.tokenizer == "tiktoken":
    pair = (tok_lib.TiktokenTokenizer(),) * 2
  else:
    raise _unknown_tokenizer(data)
  if data.standardize:
    pair = tuple(tok_lib.Standardized(t) for t in pair)
  return pair


def sentencepiece_files(data: ml_collections.ConfigDict) -> tuple[str, str] | None:
  """File names of the (inputs, targets) SentencePiece models a task trains into
  its run directory (the same name twice for one model); None when it trains none."""
  if spec(data.task).tokenizer == "char" or data.tokenizer != "sentencepiece":
    return None
  if spec(data.task).kind == "seq2seq":
    return tok_lib.translation_model_names(data.vocab_size, joint=data.joint_vocab,
                                           standardize_text=data.standardize)
  name = f"spm_{data.task}_{tok_lib.model_suffix(data.vocab_size, data.standardize)}"
  return name, name


def _text_vocab_size(data: ml_collections.ConfigDict) -> int:
  """Ids of the tokenizer `data.tokenizer` will give, known without training it."""
  if data.tokenizer in ("sentencepiece", "bpemb") and (
      isinstance(data.vocab_size, bool) or not isinstance(data.vocab_size, int) or
      data.vocab_size < 1):
    raise ValueError(f"config.data.vocab_size={data.vocab_size!r}: expected a positive number "
                     f"of {data.tokenizer} pieces")
  if data.tokenizer == "sentencepiece":
    return data.vocab_size  # SentencePiece trains exactly this many pieces.
  if data.tokenizer == "bpemb":
    return data.vocab_size + 1  # BPEmb's pieces, shifted by one for pad 0.
  if data.tokenizer == "tiktoken":
    return tok_lib.TiktokenTokenizer().vocab_size  # A fixed encoding file, not data.
  raise _unknown_tokenizer(data)


def _unknown_tokenizer(data: ml_collections.ConfigDict) -> ValueError:
  return ValueError(f"config.data.tokenizer={data.tokenizer!r}; expected "
                    "'sentencepiece', 'bpemb' or 'tiktoken'")


def vocab_sizes(config: ml_collections.ConfigDict) -> VocabSizes:
  """What the model of `config` is sized by, from the config alone (no data read)."""
  name, data = config.data.task, config.data
  task_spec = spec(name)
  if task_spec.tokenizer == "char":
    in_tok, tgt_tok = char_tokenizers(name, data)
    sizes = (in_tok.vocab_size, tgt_tok.vocab_size if tgt_tok else None)
  else:
    sizes = (_text_vocab_size(data),) * 2
  # A masked LM predicts input tokens: its "target" vocabulary is the input one.
  return VocabSizes(input=None if task_spec.kind == "lm" else sizes[0],
                    target=None if task_spec.kind == "classify" else
                    sizes[0] if task_spec.kind == "mlm" else sizes[1],
                    num_classes=num_classes(data))


def check_vocab_sizes(task: Task, expected: VocabSizes) -> None:
  """The tokenizers `build` found give the sizes `vocab_sizes` promised the model.

  Raises:
    ValueError: naming both, e.g. a tokenizer model left in the workdir by
      another config.
  """
  got = VocabSizes(task.input_vocab_size, task.target_vocab_size, task.num_classes)
  if got != expected:
    raise ValueError(f"data.task={task.name!r}: the tokenizers give {got}, but the config "
                     f"implies {expected} (data.tokenizer={task.data.tokenizer!r}, "
                     f"data.vocab_size={task.data.vocab_size})")


def build(config: ml_collections.ConfigDict, workdir: str | None, *, train_tokenizers: bool = True,
          process_index: int | None = None, process_count: int | None = None) -> Task:
  """The task named by `config.data.task`, with tokenizers trained/loaded in `workdir`.

  Args:
    config: a full config (uses `config.data` and `config.seed`).
    workdir: where trained tokenizer models are written and found again
      (unused by the synthetic tasks' fixed alphabets).
    train_tokenizers: False for a restored run: tokenizer models are only
      loaded from `workdir` (a missing one is a FileNotFoundError naming it),
      so no split is opened until one is iterated.
    process_index, process_count: who trains a tokenizer (process 0; the
      others receive its bytes); default from jax.
  """
  name, data = config.data.task, config.data
  task_spec = spec(name)
  _truncation(data)  # A bad value is refused before a tokenizer is trained.
  if task_spec.tokenizer == "char":
    raw = _synthetic_raw(name, data, config.seed)
    in_tok, tgt_tok = char_tokenizers(name, data)
  else:
    if train_tokenizers:  # Every process stops when one host lacks the files.
      distributed.raise_together(lambda: _check_local_paths(name, data))
    raw = _text_raw(name, data)
    pi, pc = pipeline.default_process(process_index, process_count)
    if pc > 1 and train_tokenizers:  # TFDS preparation: once by process 0, then found
      # (or made per host) by the rest. A restored run opens no split here.
      distributed.process_0_first(lambda: raw("train"), f"prepare {name}")
    in_tok, tgt_tok = _text_tokenizers(name, task_spec.kind, data, raw, workdir, pi, pc,
                                       train_tokenizers)
  if task_spec.kind == "lm":
    in_tok = None
  elif task_spec.kind == "classify":
    tgt_tok = None
  if task_spec.tokenizer == "char":  # Generated from the config in well under a second.
    return Task(name, data, config.seed, raw, in_tok, tgt_tok)
  return Task(name, data, config.seed, raw, in_tok, tgt_tok,
              cache_dir=str(epath.Path(workdir) / "tokenized") if workdir else None,
              data_fingerprint=lambda split: _text_fingerprint(data, raw, split),
              # Once per start: the same files back every split's cache.
              data_content=functools.cache(lambda: _text_content(data)))
