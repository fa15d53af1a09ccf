"""Local text datasets as sources, in the layouts people keep them in.

Lets users bring their own classification, language-modelling or translation
data without writing a TFDS builder. Classification and language modelling
(`text_files`); layouts, chosen by the path (`.gz` is stripped first):

* `.jsonl` / `.json`: one JSON object per line, e.g. `{"text": "...", "label": 1}`;
  other fields are ignored.
* `.tsv`: a header line naming the columns (so column order is free), then one
  example per line; text may not contain tabs or newlines.
* `.txt`: one example per non-empty line; with labels, the file is one class,
  named by the file name (`neg.txt`, `pos.txt`).
* a directory: one example per file under it; with labels, one sub-folder per
  class named by the class (`train/neg/*.txt`, `train/pos/*.txt`: the `aclImdb`
  and Keras `text_dataset_from_directory` layout).

JSON keys and TSV columns: `text_field` / `label_field` name them; left empty,
they are detected from the TSV header or the first JSON object's keys when
that is unambiguous (`text`, else one of `TEXT_FIELDS`; `label`, else one of
`LABEL_FIELDS`), and the choice is logged. Class names (folder and file
layouts) are the sorted folder / file names unless `label_names` gives them;
their order is the label order, so `neg`, `pos` are labels 0, 1.

Labels in JSON / TSV are ints (below `num_labels` when it is given), or strings
listed in `label_names` (mapped to their index). Lines end in LF or CRLF, and a
UTF-8 byte-order mark is ignored. Bad lines (undecodable bytes, broken JSON,
missing or empty text or label, a wrong column count) are skipped and counted
in one log line per file, with the file and line number of the first of each
kind: one bad line in a user's file should not stop a run, nor vanish
silently. A label that is there but is not one of the labels is an error
naming the file, line and value (it means the labels are configured wrong, and
skipping would quietly drop a class), and so is a file with no usable example
(naming the columns found and the skip counts).

Translation (`sentence_pairs`): `.tsv` or `.txt` files (optionally `.gz`) of
`source<TAB>target` lines, with no header: the layout of the Tatoeba / Anki
files of manythings.org (`spa.txt` of the shipped `spa-eng.zip`), whose
further columns (an attribution) are ignored. Lines with no tab or an empty
side are skipped and counted as above.
"""

from collections.abc import Iterator, Sequence
import glob
import gzip
import hashlib
import json
import logging
import os
from typing import Any

from etils import epath

from transformer_research import storage

# Column / key names taken for the text and the label when the config names
# none and the file has exactly one of them (`text` / `label` always win).
TEXT_FIELDS = ("text", "sentence", "review", "content", "document", "comment", "body",
               "tweet", "utterance", "phrase")
LABEL_FIELDS = ("label", "labels", "sentiment", "class", "category", "polarity", "target")


def _format(path: str) -> str:
  name = path[:-3] if path.endswith(".gz") else path
  for suffix, fmt in ((".jsonl", "json"), (".json", "json"), (".tsv", "tsv"), (".txt", "txt")):
    if name.endswith(suffix):
      return fmt
  raise ValueError(f"path={path!r}: expected a .jsonl, .json, .tsv or .txt file (optionally "
                   ".gz), or a directory")


def _lines(path: str) -> Iterator[bytes]:
  with epath.Path(path).open("rb") as f:
    yield from gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f


class _Skipped:
  """Bad lines of one file: a count per reason and where each reason first occurred."""

  def __init__(self, path: str):
    self.path, self.counts, self.first = path, {}, {}

  def add(self, reason: str, where: int | str) -> None:
    """`where`: a line number, or the file of a directory."""
    self.counts[reason] = self.counts.get(reason, 0) + 1
    self.first.setdefault(reason, where)

  def __str__(self) -> str:
    if not self.counts:
      return "none"
    where = lambda w: f"at line {w}" if isinstance(w, int) else f"in {w}"
    return ", ".join(f"{reason}={n} (first {where(self.first[reason])})"
                     for reason, n in self.counts.items())


def _text_lines(path: str, skipped: _Skipped) -> Iterator[tuple[int, str]]:
  """(line number, line without its end) of each non-blank line of a file;
  undecodable lines go to `skipped`."""
  for number, raw in enumerate(_lines(path), start=1):
    try:
      # "utf-8-sig" on the first line: editors on Windows start files with a BOM.
      line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
      skipped.add("not_utf8", number)
      continue
    if line.strip():
      yield number, line


def _records(path: str, skipped: _Skipped, columns: set[str]) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, raw field dict) of one file; bad lines go to `skipped`,
  the field names seen to `columns`."""
  fmt = _format(path)
  header = None
  for number, line in _text_lines(path, skipped):
    if fmt == "txt":
      yield number, {"text": line}
    elif fmt == "json":
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        record = None
      if not isinstance(record, dict):
        skipped.add("not_json_object", number)
        continue
      columns.update(record)
      yield number, record
    elif header is None:
      header = line.split("\t")
      columns.update(header)
    else:
      fields = line.split("\t")
      if len(fields) != len(header):
        skipped.add("wrong_columns", number)
        continue
      yield number, dict(zip(header, fields))


def split_pair(line: str) -> tuple[str, str] | str:
  """(source, target) of a `source<TAB>target[<TAB>...]` line, each stripped;
  else why it is no pair: "no_tab" or "empty_side". The one reading of the
  layout, for the spa_eng builder and a user's own files alike."""
  fields = line.split("\t")
  if len(fields) < 2:
    return "no_tab"
  source, target = fields[0].strip(), fields[1].strip()
  return (source, target) if source and target else "empty_side"


def _pick(configured: str, columns: Sequence[str], known: Sequence[str], what: str,
          path: str) -> str:
  """The configured field, else the one known name among `columns`."""
  if configured:
    return configured
  if known[0] in columns:
    return known[0]
  found = [c for c in columns if c.lower() in known]
  if len(found) == 1:
    return found[0]
  option = f"data.{what}_field"
  if found:
    raise ValueError(f"{path}: cannot tell the {what} field: {found} could each be it (columns "
                     f"found: {sorted(columns)}); set {option}")
  raise ValueError(f"{path}: no {what} field among the columns found: {sorted(columns)} "
                   f"(looked for {list(known)}); set {option}")


def _label(value: Any, label_names: Sequence[str] | None, num_labels: int | None) -> int | None:
  """The int label of a field value (a name, or an index below the number of
  labels); None if it is not one of the labels."""
  if label_names is not None and value in label_names:
    return list(label_names).index(value)
  limit = len(label_names) if label_names is not None else num_labels
  if isinstance(value, str) and value.strip().lstrip("-").isdigit():
    value = int(value)
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    return None
  return value if limit is None or value < limit else None


def read_text_file(path: os.PathLike | str, *, with_label: bool = True, text_field: str = "",
                   label_field: str = "", label_names: Sequence[str] | None = None,
                   num_labels: int | None = None) -> list[dict[str, Any]]:
  """Reads one file into `{"text": str, "label": int}` (or `{"text": str}`) examples.

  Args:
    path: a .jsonl / .json / .tsv file, optionally gzipped; without labels
      also a .txt file (one example per line; with labels, a .txt file is one
      class of several: see `text_files`).
    with_label: read labels (classification) or text only (language modelling).
    text_field: the field holding the text; "" = detect it (module docstring).
    label_field: the field holding the label; "" = detect it.
    label_names: string labels accepted, mapped to their index (e.g. ["neg", "pos"]).
    num_labels: int labels must be below this (the task's number of classes).

  Raises:
    ValueError: a label that is not one of the labels (naming the file, the
      line and the value), a field that cannot be detected, or no usable
      example in the file (naming the columns found and the skipped lines).
  """
  path = os.fspath(path)
  fmt = _format(path)
  if with_label and fmt == "txt":
    raise ValueError(f"{path}: a .txt file has no label column; with labels, pass one .txt "
                     "file per class (named by the class) or a directory of class folders")
  skipped, columns = _Skipped(path), set()
  examples, fields, chosen = [], None, ""
  for number, record in _records(path, skipped, columns):
    if fields is None:  # The first record: the fields, configured or detected.
      fields = (_pick(text_field, list(record), TEXT_FIELDS, "text", path),
                _pick(label_field, list(record), LABEL_FIELDS, "label", path) if with_label
                else None)
      if fmt != "txt" and fields != (text_field, label_field if with_label else None):
        chosen = (f" (text field {fields[0]!r}"
                  f"{f', label field {fields[1]!r}' if with_label else ''}, detected from the "
                  f"{'TSV header' if fmt == 'tsv' else 'first JSON object keys'} "
                  f"{sorted(record)})")
    text = record.get(fields[0])
    if not isinstance(text, str) or not text.strip():
      skipped.add("no_text", number)
      continue
    if not with_label:
      examples.append({"text": text})
      continue
    value = record.get(fields[1])
    if value is None or value == "":
      skipped.add("no_label", number)
      continue
    label = _label(value, label_names, num_labels)
    if label is None:
      expected = list(label_names) if label_names is not None else (
          f"an int in [0, {num_labels})" if num_labels else "a non-negative int")
      hint = "" if label_names is not None else (
          "; data.class_names names the classes, for labels that are names or more classes "
          "than that (class_names=('neg', 'pos'), or ('0', '1', '2') for 3)")
      raise ValueError(f"{path}:{number}: label {value!r} (field {fields[1]!r}) is not one "
                       f"of the labels: expected {expected}{hint}")
    examples.append({"text": text, "label": label})
  if not examples:
    text_field, label_field = fields or (text_field or "text", label_field or "label")
    raise ValueError(
        f"{path}: no usable example (text field {text_field!r}"
        f"{f', label field {label_field!r}' if with_label else ''}; columns found: "
        f"{sorted(columns)}; skipped lines: {skipped})")
  level = logging.WARNING if skipped.counts else logging.INFO
  logging.log(level, "%s: %d examples%s; skipped bad lines: %s", path, len(examples), chosen,
              skipped)
  return examples


def _glob(pattern: str) -> list[str]:
  """Sorted matches of a glob pattern on any epath file system (local, gs://).

  The pattern is split at its first component with a wildcard: the part
  before it is the directory to list, the rest is globbed under it.
  """
  path = epath.Path(pattern)
  parts = path.parts
  first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
  base = epath.Path(*parts[:first]) if first else epath.Path(".")
  return sorted(str(m) for m in base.glob("/".join(parts[first:])))


def _folder_files(directory: str) -> list[str]:
  """The .txt files under `directory` (any depth), sorted."""
  return sorted(str(epath.Path(root) / name) for root, _, names in epath.Path(directory).walk()
                for name in names if name.endswith(".txt"))


def _read_folder(directory: str, label: int | None) -> list[dict[str, Any]]:
  """One example per .txt file under `directory` (a class folder when `label` is set)."""
  skipped, examples = _Skipped(directory), []
  for path in _folder_files(directory):
    try:
      text = epath.Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
      skipped.add("not_utf8", path)
      continue
    if not text.strip():
      skipped.add("no_text", path)
      continue
    text = text.replace("\r\n", "\n").strip()
    examples.append({"text": text} if label is None else {"text": text, "label": label})
  if not examples:
    raise ValueError(f"{directory}: no usable example (one per .txt file under it; files "
                     f"found: {len(_folder_files(directory))}; skipped files: {skipped})")
  level = logging.WARNING if skipped.counts else logging.INFO
  logging.log(level, "%s: %d examples; skipped bad files: %s", directory, len(examples), skipped)
  return examples


def _class_folders(directory: str) -> list[str]:
  return sorted(p.name for p in epath.Path(directory).iterdir() if p.is_dir())


def _class_of_file(path: str) -> str:
  name = epath.Path(path).name
  return name[:-len(".txt.gz")] if name.endswith(".txt.gz") else name[:-len(".txt")]


def expand(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """Glob patterns and paths -> existing paths, sorted (so the example order,
  and the shuffled order downstream, do not depend on how a file system lists).

  Raises:
    FileNotFoundError: naming a path or pattern that matches nothing.
  """
  patterns = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  if not patterns:
    raise ValueError(f"paths={paths!r}: expected at least one path or pattern")
  files = []
  for pattern in patterns:
    pattern = os.fspath(pattern)
    matches = _glob(pattern) if glob.has_magic(pattern) else [pattern]
    if not matches or not epath.Path(matches[0]).exists():
      raise FileNotFoundError(f"paths={pattern!r}: no such file")
    files.extend(matches)
  return sorted(files)


def layout_of(files: Sequence[str]) -> str:
  """"folders", "class_files" (.txt, one per class) or "records" (JSON / TSV)."""
  kinds = {"folders" if epath.Path(f).is_dir() else "class_files" if _format(f) == "txt"
           else "records" for f in files}
  if len(kinds) > 1:
    raise ValueError(f"paths {list(files)} mix directories, .txt files and JSON / TSV files; "
                     "expected one layout")
  return kinds.pop()


def class_names(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str] | None:
  """The classes a folder or one-file-per-class layout names, sorted; None for
  JSON / TSV files (their labels are in the records)."""
  files = expand(paths)
  layout = layout_of(files)
  if layout == "records":
    return None
  if layout == "class_files":
    return sorted({_class_of_file(f) for f in files})
  return sorted({name for d in files for name in _class_folders(d)})


def text_files(paths: str | os.PathLike | Sequence[str | os.PathLike], *, with_label: bool = True,
               label_names: Sequence[str] | None = None, num_labels: int | None = None,
               **kwargs: Any) -> list[dict[str, Any]]:
  """Examples of files or directories (a glob pattern, a path, or a list), in sorted path order.

  Args:
    paths: file or directory paths or glob patterns (`data/train-*.jsonl.gz`,
      `data/train` with `neg/` and `pos/` folders, `data/{neg,pos}.txt` as a list).
    with_label: read labels (classification) or text only (language modelling).
    label_names: the class names in label order. Folder and one-file-per-class
      layouts: the folders / files to read (others are ignored); None = every
      one found, sorted. JSON / TSV: string labels accepted (`read_text_file`).
    num_labels: the task's number of classes; a class layout must have as many.
    **kwargs: `read_text_file` arguments (`text_field`, `label_field`).

  Raises:
    ValueError: a class layout with another number of classes than
      `num_labels`, or a class with no file or folder (naming what was found).
  """
  files = expand(paths)
  layout = layout_of(files)
  if layout == "records" or not with_label:
    examples = []
    for path in files:
      if epath.Path(path).is_dir():
        examples.extend(_read_folder(path, None))
      else:
        examples.extend(read_text_file(path, with_label=with_label, label_names=label_names,
                                       num_labels=num_labels, **kwargs))
    return examples
  found = class_names(files)
  names = list(label_names) if label_names else found
  if num_labels is not None and len(names) != num_labels:
    raise ValueError(f"{list(files)}: {len(names)} classes {names}, but the task has "
                     f"{num_labels}; set data.class_names to the {num_labels} class names to use")
  missing = [n for n in names if n not in found]
  if missing:
    raise ValueError(f"{list(files)}: no {'folder' if layout == 'folders' else 'file'} for "
                     f"the classes {missing}; found {found}")
  ignored = sorted(set(found) - set(names))
  if ignored:
    logging.info("%s: ignoring %s (not among the classes %s)", list(files), ignored, names)
  examples = []
  for path in files:
    if layout == "class_files":
      if _class_of_file(path) in names:
        label = names.index(_class_of_file(path))
        examples.extend({"text": e["text"], "label": label}
                        for e in read_text_file(path, with_label=False, text_field="text"))
      continue
    for name in names:
      if (epath.Path(path) / name).is_dir():
        examples.extend(_read_folder(str(epath.Path(path) / name), names.index(name)))
  return examples


def pairs_files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """`expand(paths)`, each a .tsv / .txt file (optionally .gz) as
  `sentence_pairs` reads; a directory or JSON is an error naming it."""
  files = expand(paths)
  for path in files:
    if epath.Path(path).is_dir() or _format(path) not in ("tsv", "txt"):
      raise ValueError(f"{path}: expected a .tsv or .txt file (optionally .gz) of "
                       "source<TAB>target lines, the Tatoeba / Anki layout")
  return files


def sentence_pairs(paths: str | os.PathLike | Sequence[str | os.PathLike]
                   ) -> list[dict[str, str]]:
  """`{"inputs": source, "targets": target}` of each pair of `source<TAB>target`
  files (a glob pattern, a path, or a list), in sorted path order.

  Raises:
    ValueError: a path that is not a .tsv / .txt file (a directory, JSON), or
      a file with no pair (naming the skipped lines).
  """
  examples = []
  for path in pairs_files(paths):
    skipped, before = _Skipped(path), len(examples)
    for number, line in _text_lines(path, skipped):
      pair = split_pair(line)
      if isinstance(pair, str):
        skipped.add(pair, number)
        continue
      examples.append({"inputs": pair[0], "targets": pair[1]})
    if len(examples) == before:
      raise ValueError(f"{path}: no usable pair (expected source<TAB>target lines; skipped "
                       f"lines: {skipped})")
    level = logging.WARNING if skipped.counts else logging.INFO
    logging.log(level, "%s: %d pairs; skipped bad lines: %s", path, len(examples) - before,
                skipped)
  return examples


def _files_read(paths: str | os.PathLike | Sequence[str | os.PathLike]
                ) -> list[tuple[str, str]]:
  """(path given, file) for each file `text_files(paths)` reads: the path
  itself, or the .txt files of a folder of class folders."""
  return [(path, file) for path in expand(paths)
          for file in (_folder_files(path) if epath.Path(path).is_dir() else [path])]


def content_digest(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
  """sha256 of the bytes of each file `text_files(paths)` reads, with its place
  under the path given (a class folder's name is its label), not where that
  path is: the same data copied elsewhere, or again, has the same digest."""
  digest = hashlib.sha256()
  for path, file in _files_read(paths):
    size = storage.file_stamp(file)[0]
    digest.update(f"{os.path.relpath(file, path)}\0{size}\0".encode())
    with epath.Path(file).open("rb") as f:
      for chunk in iter(lambda: f.read(1 << 24), b""):
        digest.update(chunk)
  return digest.hexdigest()


def fingerprint(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[list[Any]]:
  """[path, size, modification time] of each file `text_files(paths)` reads
  (the .txt files of class folders included), so a cache of what was made
  from them notices an edited or added file."""
  files = [file for _, file in _files_read(paths)]
  return [[path if storage.is_remote(path) else os.path.abspath(path), *storage.file_stamp(path)]
          for path in files]
