"""Sources: random-access sequences of raw python examples, one per task kind.

A source has `len()` and `source[i] -> dict`, so the pipeline can shuffle by
index and shard by process without reading what it skips. Example kinds:

* translation (English -> Spanish): `{"inputs": str, "targets": str}`;
* classification: `{"text": str, "label": int}`;
* language modelling: `{"text": str}`.

TFDS sources are stored as array_record and read with `as_data_source()`,
which needs no TensorFlow. They are prepared on first use
(`download_and_prepare` is a no-op once the data is in `data_dir`).
"""

from collections.abc import Callable, Sequence
import contextlib
import fcntl
import importlib.util
import logging
import os
from typing import Any

from etils import epath

from transformer_research import storage

__all__ = ["Source", "spa_eng", "wmt13_es_en", "imdb", "group_references"]

PathLike = str | os.PathLike


class Source(Sequence):
  """A TFDS data source whose examples are converted by `fn` when read."""

  def __init__(self, data_source: Any, fn: Callable[[dict[str, Any]], dict[str, Any]], name: str):
    self._data_source = data_source
    self._fn = fn
    self._name = name

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    if not -len(self) <= index < len(self):
      raise IndexError(f"index={index}: source {self._name} has {len(self)} examples")
    return self._fn(self._data_source[index % len(self)])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Batched read: one array_record lookup for many records (~8x the rate of
    `source[i]` one by one), which is what start-up tokenization uses."""
    read = getattr(self._data_source, "__getitems__", None)
    if read is None:
      return [self[i] for i in indices]
    return [self._fn(ex) for ex in read(list(indices))]

  def fingerprint(self) -> dict[str, Any]:
    """What identifies the records: dataset, split and each file's size and
    modification time, so a re-prepared dataset invalidates caches of it."""
    from tensorflow_datasets.core.data_sources import base  # pylint: disable=g-import-not-at-top
    info = getattr(self._data_source, "dataset_info", None)
    if info is None:
      return {"source": self._name, "examples": len(self)}
    files = []
    for instruction in base.file_instructions(info, self._data_source.split):
      files.append([os.path.basename(instruction.filename), instruction.skip, instruction.take,
                    *storage.file_stamp(instruction.filename)])
    return {"source": self._name, "dataset": info.full_name, "examples": len(self),
            "files": files}

  def __repr__(self) -> str:
    return f"Source({self._name}, {len(self)} examples)"


def _text(value: bytes | str) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _check_split(split: str, allowed: tuple[str, ...], arg: str = "split") -> None:
  # Slices ("train[:1000]") are passed through to TFDS; the base name is checked here.
  if split.split("[", 1)[0] not in allowed:
    raise ValueError(f"{arg}={split!r}: expected one of {allowed} (optionally sliced, e.g. 'train[:1000]')")


def _prepared(make_builder: Callable[[], Any], manual_dir: PathLike | None, *,
              extracts_with_tf: bool = False, instead: str = "") -> Any:
  """A builder from `make_builder()` whose data is prepared, preparing it if needed.

  Processes that share a local data dir (two runs started at once on a fresh
  machine, or the commands of `sweep.py --print`) prepare it one at a time:
  without the lock the second failed at TFDS's final rename. A process that
  waited makes its builder again, which then finds the data.

  Stock builders that extract archives (`imdb_reviews`, `wmt13_translate`)
  go through TFDS's extractor, which needs TensorFlow even though reading the
  prepared array_record files does not: say so before a long download fails,
  with `instead`, the way around it where there is one.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (heavy; only TFDS sources)
  if manual_dir and not epath.Path(manual_dir).is_dir():
    raise FileNotFoundError(f"config.data.manual_dir={os.fspath(manual_dir)!r}: no such directory")
  builder = make_builder()
  if builder.is_prepared():
    return builder
  if extracts_with_tf and importlib.util.find_spec("tensorflow") is None:
    raise ModuleNotFoundError(
        f"Preparing TFDS {builder.name} extracts archives with TensorFlow, which is not installed: "
        f"`pip install tensorflow-cpu` once to prepare it into {builder.data_dir}"
        + (f", or {instead}" if instead else ""))
  with _preparing(builder) as waited:
    prepared = False  # As found before the lock, unless another process held it.
    if waited:  # That process's data is there now, or it failed.
      builder = make_builder()
      prepared = builder.is_prepared()
    if not prepared:
      tfds.disable_progress_bar()  # Its bars would break up the run's log and progress bar.
      logging.info("preparing TFDS %s into %s (once per data dir)", builder.name, builder.data_dir)
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=os.fspath(manual_dir) if manual_dir else None))
  return builder


@contextlib.contextmanager
def _preparing(builder: Any):
  """Holds DATA_DIR/.NAME.prepare.lock (a local data dir; a bucket has no locks);
  yields whether it had to wait for another process."""
  root = os.fspath(builder.data_dir_root)
  if storage.is_remote(root):
    yield False
    return
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f".{builder.name}.prepare.lock"), "a") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      waited = False
    except BlockingIOError:
      logging.info("waiting for another process preparing TFDS %s into %s", builder.name, root)
      fcntl.flock(lock, fcntl.LOCK_EX)
      waited = True
    try:
      yield waited
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def spa_eng(split: str, data_dir: PathLike | None = None, manual_dir: PathLike | None = None) -> Source:
  """English -> Spanish pairs of the `spa_eng` builder (Tatoeba; 70/15/15 split).

  Args:
    split: "train", "validation" or "test" (TFDS slices allowed).
    data_dir: TFDS data dir (default `~/tensorflow_datasets`).
    manual_dir: a directory holding a copy of `spa-eng.zip` to use instead of
      the one shipped with the package.
  """
  _check_split(split, ("train", "validation", "test"))
  from transformer_research.data.builders import spa_eng as spa_eng_lib  # pylint: disable=g-import-not-at-top
  builder = _prepared(lambda: spa_eng_lib.SpaEng(data_dir=data_dir), manual_dir)
  return Source(builder.as_data_source(split=split),
                lambda ex: {"inputs": _text(ex["en"]), "targets": _text(ex["es"])}, f"spa_eng:{split}")


def wmt13_es_en(split: str, data_dir: PathLike | None = None, manual_dir: PathLike | None = None) -> Source:
  """English -> Spanish pairs of the stock TFDS `wmt13_translate/es-en` (downloads ~GBs).

  Args:
    split: "train", "validation" (newstest2012) or "test" (newstest2013).
    data_dir: TFDS data dir.
    manual_dir: TFDS manual dir, for archives fetched by hand.
  """
  _check_split(split, ("train", "validation", "test"))
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets.translate.wmt13  # pylint: disable=g-import-not-at-top,unused-import  (registers it)
  builder = _prepared(lambda: tfds.builder("wmt13_translate/es-en", data_dir=data_dir,
                                           file_format="array_record"),
                      manual_dir, extracts_with_tf=True)
  return Source(builder.as_data_source(split=split),
                lambda ex: {"inputs": _text(ex["en"]), "targets": _text(ex["es"])}, f"wmt13_es_en:{split}")


def imdb(split: str, data_dir: PathLike | None = None, *, with_label: bool = True) -> Source:
  """IMDB reviews from TFDS `imdb_reviews/plain_text`.

  Args:
    split: "train", "test" or "unsupervised" (unlabelled; only with `with_label=False`).
    data_dir: TFDS data dir.
    with_label: classification examples, or `{"text"}` only for language modelling.
  """
  _check_split(split, ("train", "test", "unsupervised"))
  if with_label and split.startswith("unsupervised"):
    raise ValueError(f"split={split!r}: has no labels; expected with_label=False")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = _prepared(lambda: tfds.builder("imdb_reviews/plain_text", data_dir=data_dir,
                                           file_format="array_record"),
                      None, extracts_with_tf=True, instead=(
      "train on local copies: --config.data.train_path=FILE --config.data.eval_path=FILE "
      "(JSON lines or TSV; README, IMDB)"))

  def convert(ex: dict[str, Any]) -> dict[str, Any]:
    if with_label:
      return {"text": _text(ex["text"]), "label": int(ex["label"])}
    return {"text": _text(ex["text"])}

  return Source(builder.as_data_source(split=split), convert, f"imdb:{split}")


def group_references(source: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
  """Groups a translation split by source sentence, for multi-reference metrics.

  The Tatoeba data has several Spanish translations for many English
  sentences; scoring a hypothesis against only one of them underrates it.

  Returns:
    `{"inputs": str, "references": list[str]}` per distinct source sentence, in
    order of first appearance; references keep their order in the split.
  """
  grouped: dict[str, list[str]] = {}
  for i in range(len(source)):
    ex = source[i]
    grouped.setdefault(ex["inputs"], []).append(ex["targets"])
  return [{"inputs": k, "references": v} for k, v in grouped.items()]
