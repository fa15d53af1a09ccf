"""Tokenizers: text <-> int ids behind one small interface, with pad id 0.

Every model and batch in the project assumes that id 0 is padding (the
decoder input is `shift_right(targets)`, which puts 0 in front, and decoding
starts from 0). Third-party vocabularies that use 0 for something else
(BPEmb: `<unk>`; tiktoken: `!`) are therefore shifted by one, so that
`pad_id == 0` holds for every tokenizer here.

`encode` never appends EOS (the pipeline appends `eos_id` to targets, so one
place decides it) and `decode` stops at the first EOS and drops padding, so it
can be applied directly to a decoded row.

SentencePiece models are trained on the training split, written once
(atomically) and reused; in multi-host runs process 0 trains (or loads) the
model and sends its bytes to the other processes, which never read the file.
A restored run (`train=False`) only loads: a missing model is an error naming
its path, never a freshly trained one.
"""

import abc
import hashlib
import io
import logging
import os
import re
import string
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from etils import epath
import sentencepiece as spm

from transformer_research import storage
from transformer_research.data import pipeline

PAD_ID = 0
# Ids of our own SentencePiece models (the flax WMT layout, plus a BOS).
_SPM_EOS, _SPM_UNK, _SPM_BOS = 1, 2, 3

# Keras / NNX translation tutorials strip `string.punctuation + "¿"`; "¡" is
# added so Spanish exclamations are stripped the same way as questions.
_STRIP_CHARS = re.compile("[" + re.escape(string.punctuation + "¿¡") + "]")


def standardize(text: str) -> str:
  """Lowercases and strips punctuation, as in the Keras translation tutorial.

  Off by default: it makes the task easier and BLEU incomparable with
  published numbers, but it reproduces the tutorials. Whitespace runs left by
  removed punctuation are collapsed so tokenisation does not change.
  """
  return " ".join(_STRIP_CHARS.sub("", text.lower()).split())


def _trim(ids: Iterable[Any], eos_id: int) -> list[int]:
  """Ids up to (excluding) the first EOS, with padding removed."""
  out = []
  for i in ids:
    i = int(i)
    if i == eos_id:
      break
    if i != PAD_ID:
      out.append(i)
  return out


class Tokenizer(abc.ABC):
  """The interface every tokenizer implements (see module docstring)."""

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids, pad included: embedding tables have this many rows."""

  @property
  @abc.abstractmethod
  def eos_id(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def bos_id(self) -> int:
    ...

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Text -> ids, without EOS."""

  @property
  @abc.abstractmethod
  def fingerprint(self) -> str:
    """Changes whenever `encode` could: keys the tokenized-data cache."""

  def decode(self, ids: Iterable[Any]) -> str:
    """Ids -> text; stops at the first EOS and drops pad ids."""
    return self._decode(_trim(ids, self.eos_id))

  @abc.abstractmethod
  def _decode(self, ids: list[int]) -> str:
    ...


class CharTokenizer(Tokenizer):
  """One id per character of a fixed alphabet, for synthetic tasks.

  Ids: 0 pad, 1 EOS, 2 BOS, then the alphabet in order. An unknown character
  is an error rather than an UNK id: synthetic data with a character outside
  its alphabet is a bug in the generator.
  """

  def __init__(self, alphabet: str):
    if not alphabet or len(set(alphabet)) != len(alphabet):
      raise ValueError(f"alphabet={alphabet!r}: expected a non-empty string of distinct characters")
    self._alphabet = alphabet
    self._ids = {c: i + 3 for i, c in enumerate(alphabet)}

  @property
  def alphabet(self) -> str:
    return self._alphabet

  @property
  def vocab_size(self) -> int:
    return len(self._alphabet) + 3

  @property
  def eos_id(self) -> int:
    return 1

  @property
  def bos_id(self) -> int:
    return 2

  @property
  def fingerprint(self) -> str:
    return f"chars:{self._alphabet}"

  def encode(self, text: str) -> list[int]:
    try:
      return [self._ids[c] for c in text]
    except KeyError as e:
      raise ValueError(f"text={text!r}: character {e.args[0]!r} is not in alphabet {self._alphabet!r}") from None

  def _decode(self, ids: list[int]) -> str:
    if any(not 3 <= i < self.vocab_size for i in ids if i != self.bos_id):
      raise ValueError(f"ids={ids}: expected character ids in [3, {self.vocab_size})")
    return "".join(self._alphabet[i - 3] for i in ids if i != self.bos_id)


def digit_tokenizer(extra: str = "") -> CharTokenizer:
  """Digits 0-9 plus `extra` symbols (e.g. "+" for addition)."""
  return CharTokenizer("0123456789" + extra)


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece model trained by `train_sentencepiece` (pad 0, EOS 1)."""

  def __init__(self, model_proto: bytes):
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self._fingerprint = "sentencepiece:" + hashlib.sha256(model_proto).hexdigest()
    if self._sp.pad_id() != PAD_ID or self._sp.eos_id() < 0:
      raise ValueError(f"model_proto: pad id {self._sp.pad_id()}, eos id {self._sp.eos_id()}; expected pad 0 and an EOS (train it with train_sentencepiece)")

  @classmethod
  def from_file(cls, path: os.PathLike | str) -> "SentencePieceTokenizer":
    return cls(epath.Path(path).read_bytes())

  def save(self, path: os.PathLike | str) -> None:
    """Writes the model file to `path` (an exported translator carries it)."""
    write_atomically(path, self._sp.serialized_model_proto())

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id()

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id()

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  def normalize(self, text: str) -> str:
    """The text as the model sees it (NFKC, whitespace runs collapsed).

    SentencePiece's own normaliser marks spaces as "▁" and adds one in front;
    both are undone so the result is comparable with `decode` output.
    """
    return self._sp.normalize(text).replace("\u2581", " ").strip(" ")

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def _decode(self, ids: list[int]) -> str:
    return self._sp.decode(ids)


def train_sentencepiece(texts: Iterable[str], path: os.PathLike | str, vocab_size: int, *,
                        model_type: str = "unigram", character_coverage: float = 1.0,
                        byte_fallback: bool = False, max_sentences: int = 2_000_000) -> None:
  """Trains a model on `texts` and writes it to `path` atomically.

  The model is written to a temporary name and renamed, so a run killed
  while writing never leaves a half-written model to be loaded later. `max_sentences` bounds memory:
  SentencePiece samples that many sentences from the input.
  """
  if vocab_size < 8:
    raise ValueError(f"vocab_size={vocab_size}: expected at least 8")
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        byte_fallback=byte_fallback, input_sentence_size=max_sentences,
        shuffle_input_sentence=True, pad_id=PAD_ID, eos_id=_SPM_EOS,
        unk_id=_SPM_UNK, bos_id=_SPM_BOS, minloglevel=2)
  except RuntimeError as e:
    # A small corpus (a first try on local files) has fewer pieces than asked for.
    most = re.search(r"Vocabulary size too high .* a value <= (\d+)", str(e))
    if most is None:
      raise
    raise ValueError(f"data.vocab_size={vocab_size}: the training text for {path} has pieces "
                     f"for at most {most.group(1)}; set data.vocab_size <= {most.group(1)}") from e
  write_atomically(path, model.getvalue())


def write_atomically(path: os.PathLike | str, data: bytes) -> None:
  """`storage.replace_bytes` into a directory created if missing: a reader
  never sees half a file."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  storage.replace_bytes(path, data)


def missing_model(path: os.PathLike | str) -> FileNotFoundError:
  """The error of a restored run whose tokenizer model is not where it was written."""
  return FileNotFoundError(
      f"tokenizer model {path} not found: expected the file its training run wrote there "
      "(a run directory carries its tokenizers; a new one would not match the checkpoint)")


def load_or_train_sentencepiece(path: os.PathLike | str, texts_fn: Callable[[], Iterable[str]],
                                vocab_size: int, *, process_index: int = 0,
                                broadcast: Callable[[bytes | None], bytes] | None = None,
                                train: bool = True, **train_kwargs: Any) -> SentencePieceTokenizer:
  """Loads the model at `path`, training it first if it is missing.

  Only process 0 touches `path` (any epath file system: a local directory or
  a bucket) and trains (`texts_fn` is not called elsewhere). In multi-process
  runs the model reaches the other processes as bytes through `broadcast`
  (`distributed.broadcast_bytes`: process 0 passes the bytes, the others None),
  so no disk shared by every host is assumed and nobody polls for a file. A
  model found with a different vocabulary size is an error rather than
  silently reused (raised on every process, which all hold the same bytes).
  With `train=False` (a restored run) a missing model is an error naming `path`.
  """
  if process_index != 0 and broadcast is None:
    raise ValueError(f"process_index={process_index}: processes other than 0 receive the model "
                     "from process 0; expected a broadcast function")
  proto = None
  if process_index == 0:
    path = epath.Path(path)
    if not path.exists():
      if not train:
        raise missing_model(path)
      logging.info("Training SentencePiece (vocab %d) -> %s", vocab_size, path)
      train_sentencepiece(texts_fn(), path, vocab_size, **train_kwargs)
    proto = path.read_bytes()
  if broadcast is not None:
    proto = broadcast(proto)
  try:
    tok = SentencePieceTokenizer(proto)
  except RuntimeError:  # SentencePiece's parse error names its own source line, not the file.
    raise ValueError(f"{path}: SentencePiece cannot read this model file (damaged, or not a "
                     "model); restore it from a copy of the run") from None
  if tok.vocab_size != vocab_size:
    raise ValueError(f"vocab_size={vocab_size}: the model at {path} has {tok.vocab_size}; delete it or change the size")
  return tok


def _side_texts(source: Sequence[dict[str, str]], keys: tuple[str, ...], standardize_text: bool,
                max_examples: int | None) -> Iterator[str]:
  n = len(source) if max_examples is None else min(len(source), max_examples)
  for i, ex in pipeline.read_records(source):
    if i >= n:
      return
    if isinstance(ex, Exception):
      continue  # Unreadable: tokenize() counts it as malformed.
    for k in keys:
      yield standardize(ex[k]) if standardize_text else ex[k]


def translation_sentencepiece(train_source: Sequence[dict[str, str]], model_dir: os.PathLike | str,
                              vocab_size: int, *, joint: bool = True, standardize_text: bool = False,
                              max_examples: int | None = None, **kwargs: Any
                              ) -> tuple[SentencePieceTokenizer, SentencePieceTokenizer]:
  """(inputs, targets) tokenizers trained on a translation training source.

  Args:
    train_source: examples `{"inputs": str, "targets": str}`, the training split only
      (training on eval text would leak it into the vocabulary).
    model_dir: where models are saved and found again (e.g. the workdir).
    vocab_size: pieces per model.
    joint: one model over both languages (allows shared embeddings) or one per side.
    standardize_text: train on `standardize`d text; keep it equal to the
      tokenizer's switch. It is part of the file name, so flipping it retrains.
    max_examples: train on at most this many examples (the first ones).
    **kwargs: `load_or_train_sentencepiece` arguments (process_index, ...).
  """
  model_dir = epath.Path(model_dir)
  names = translation_model_names(vocab_size, joint=joint, standardize_text=standardize_text)
  if joint:
    tok = load_or_train_sentencepiece(
        model_dir / names[0],
        lambda: _side_texts(train_source, ("inputs", "targets"), standardize_text, max_examples),
        vocab_size, **kwargs)
    return tok, tok
  return tuple(load_or_train_sentencepiece(
      model_dir / name,
      lambda side=side: _side_texts(train_source, (side,), standardize_text, max_examples),
      vocab_size, **kwargs) for side, name in zip(("inputs", "targets"), names))


def model_suffix(vocab_size: int, standardize_text: bool) -> str:
  """The end of a SentencePiece model's file name: what it was trained with."""
  return f"{vocab_size}{'_std' if standardize_text else ''}.model"


def translation_model_names(vocab_size: int, *, joint: bool, standardize_text: bool
                            ) -> tuple[str, str]:
  """File names of the (inputs, targets) models `translation_sentencepiece` writes."""
  suffix = model_suffix(vocab_size, standardize_text)
  if joint:
    return f"spm_joint_{suffix}", f"spm_joint_{suffix}"
  return f"spm_inputs_{suffix}", f"spm_targets_{suffix}"


class BPEmbTokenizer(Tokenizer):
  """A pretrained BPEmb SentencePiece model (Heinzerling & Strube, 2018).

  BPEmb models use id 0 for `<unk>` and have no pad, so every id is shifted by
  one. Text is lowercased and digits mapped to 0 first, as BPEmb was trained.
  """

  def __init__(self, lang: str = "en", vocab_size: int = 10000, *,
               cache_dir: os.PathLike | str | None = None, model_file: os.PathLike | str | None = None):
    """Finds the model in `model_file`, else in bpemb's cache dir (downloading if online).

    Args:
      lang: BPEmb language code.
      vocab_size: BPEmb vocabulary size (1000, 3000, 5000, 10000, ...).
      cache_dir: bpemb's cache dir (default `~/.cache/bpemb`), laid out `<lang>/<file>`.
      model_file: an explicit `.model` file, overriding the cache.
    """
    import bpemb  # pylint: disable=g-import-not-at-top  (only needed here)
    if model_file is None:
      cache_dir = epath.Path(cache_dir or epath.Path.home() / ".cache/bpemb")
      expected = cache_dir / bpemb.BPEmb.model_tpl.format(lang=lang, vs=vocab_size)
      if not expected.exists():
        try:
          bpemb.BPEmb(lang=lang, vs=vocab_size, cache_dir=cache_dir, segmentation_only=True, vs_fallback=False)
        except Exception as e:  # bpemb raises requests / OS errors offline.
          raise FileNotFoundError(f"BPEmb model not found at {expected} and the download failed ({e!r}); put the file there or pass model_file=") from e
      model_file = expected
    model_file = epath.Path(model_file)
    if not model_file.exists():
      raise FileNotFoundError(f"model_file={model_file}: no such BPEmb model file")
    proto = model_file.read_bytes()
    self._sp = spm.SentencePieceProcessor(model_proto=proto)
    self._fingerprint = "bpemb:" + hashlib.sha256(proto).hexdigest()

  def save(self, path: os.PathLike | str) -> None:
    """Writes the model file to `path` (a run directory keeps its own copy)."""
    write_atomically(path, self._sp.serialized_model_proto())

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size() + 1

  @property
  def eos_id(self) -> int:
    return self._sp.eos_id() + 1

  @property
  def bos_id(self) -> int:
    return self._sp.bos_id() + 1

  @property
  def fingerprint(self) -> str:
    return self._fingerprint

  def encode(self, text: str) -> list[int]:
    return [i + 1 for i in self._sp.encode(re.sub(r"\d", "0", text.lower()))]

  def _decode(self, ids: list[int]) -> str:
    return self._sp.decode([i - 1 for i in ids])


class TiktokenTokenizer(Tokenizer):
  """A tiktoken encoding (default `cl100k_base`), ids shifted by one for pad 0.

  Offline: tiktoken reads `$TIKTOKEN_CACHE_DIR/<sha1 of the encoding URL>`;
  the error below names that file.
  """

  def __init__(self, name: str = "cl100k_base"):
    import tiktoken  # pylint: disable=g-import-not-at-top  (optional dependency)
    try:
      self._enc = tiktoken.get_encoding(name)
    except Exception as e:  # Offline: requests errors from the download.
      url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
      cache_name = hashlib.sha1(url.encode()).hexdigest()
      raise FileNotFoundError(
          f"tiktoken encoding {name!r} is not cached and could not be downloaded ({e!r}); "
          f"copy {name}.tiktoken to $TIKTOKEN_CACHE_DIR/{cache_name}") from e
    self._eot = self._enc.eot_token
    self._name = name

  @property
  def vocab_size(self) -> int:
    return self._enc.n_vocab + 1

  @property
  def eos_id(self) -> int:
    return self._eot + 1

  @property
  def bos_id(self) -> int:
    # tiktoken has one special document separator; it serves both ends.
    return self._eot + 1

  @property
  def fingerprint(self) -> str:
    return f"tiktoken:{self._name}:{self._enc.n_vocab}"

  def encode(self, text: str) -> list[int]:
    return [i + 1 for i in self._enc.encode_ordinary(text)]

  def _decode(self, ids: list[int]) -> str:
    return self._enc.decode([i - 1 for i in ids])


class Standardized(Tokenizer):
  """Applies `standardize` before encoding: the config switch, off by default."""

  def __init__(self, tokenizer: Tokenizer):
    self._tok = tokenizer

  @property
  def vocab_size(self) -> int:
    return self._tok.vocab_size

  @property
  def eos_id(self) -> int:
    return self._tok.eos_id

  @property
  def bos_id(self) -> int:
    return self._tok.bos_id

  @property
  def fingerprint(self) -> str:
    return f"standardized({self._tok.fingerprint})"

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(standardize(text))

  def _decode(self, ids: list[int]) -> str:
    return self._tok._decode(ids)  # pylint: disable=protected-access
