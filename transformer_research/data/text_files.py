"""Local text datasets as sources: JSON lines or TSV files, optionally gzipped.

Lets users bring their own classification or language-modelling data without
writing a TFDS builder. Formats, chosen by file suffix (`.gz` is stripped first):

* `.jsonl` / `.json`: one JSON object per line, e.g. `{"text": "...", "label": 1}`;
  other fields are ignored.
* `.tsv`: a header line naming the columns (so column order is free), then one
  example per line; text may not contain tabs or newlines.

Labels are ints (below `num_labels` when it is given), or strings listed in
`label_names` (mapped to their index). Bad lines (undecodable bytes, broken
JSON, missing or empty text or label, a wrong column count) are skipped and
counted in one log line per file, with the file and line number of the first
of each kind: one bad line in a user's file should not stop a run, nor vanish
silently. A label that is there but is not one of the labels is an error
naming the file, line and value (it means the labels are configured wrong, and
skipping would quietly drop a class), and so is a file with no usable example.
"""

from collections.abc import Iterator, Sequence
import glob
import gzip
import json
import logging
import os
from typing import Any

from etils import epath

from transformer_research import storage


def _format(path: str) -> str:
  name = path[:-3] if path.endswith(".gz") else path
  for suffix, fmt in ((".jsonl", "json"), (".json", "json"), (".tsv", "tsv")):
    if name.endswith(suffix):
      return fmt
  raise ValueError(f"path={path!r}: expected a .jsonl, .json or .tsv file (optionally .gz)")


def _lines(path: str) -> Iterator[bytes]:
  with epath.Path(path).open("rb") as f:
    yield from gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f


class _Skipped:
  """Bad lines of one file: a count per reason and where each reason first occurred."""

  def __init__(self, path: str):
    self.path, self.counts, self.first = path, {}, {}

  def add(self, reason: str, line: int) -> None:
    self.counts[reason] = self.counts.get(reason, 0) + 1
    self.first.setdefault(reason, line)

  def __str__(self) -> str:
    if not self.counts:
      return "none"
    return ", ".join(f"{reason}={n} (first at line {self.first[reason]})"
                     for reason, n in self.counts.items())


def _records(path: str, skipped: _Skipped, columns: set[str]) -> Iterator[tuple[int, dict[str, Any]]]:
  """(line number, raw field dict) of one file; bad lines go to `skipped`,
  the field names seen to `columns`."""
  fmt = _format(path)
  header = None
  for number, raw in enumerate(_lines(path), start=1):
    try:
      line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
      skipped.add("not_utf8", number)
      continue
    if not line.strip():
      continue
    if fmt == "json":
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


def read_text_file(path: os.PathLike | str, *, with_label: bool = True, text_field: str = "text",
                   label_field: str = "label", label_names: Sequence[str] | None = None,
                   num_labels: int | None = None) -> list[dict[str, Any]]:
  """Reads one file into `{"text": str, "label": int}` (or `{"text": str}`) examples.

  Args:
    path: a .jsonl / .json / .tsv file, optionally gzipped.
    with_label: read labels (classification) or text only (language modelling).
    text_field: the field holding the text.
    label_field: the field holding the label.
    label_names: string labels accepted, mapped to their index (e.g. ["neg", "pos"]).
    num_labels: int labels must be below this (the task's number of classes).

  Raises:
    ValueError: a label that is not one of the labels (naming the file, the
      line and the value), or no usable example in the file (naming the
      columns found and the skipped lines).
  """
  path = os.fspath(path)
  skipped, columns = _Skipped(path), set()
  examples = []
  for number, record in _records(path, skipped, columns):
    text = record.get(text_field)
    if not isinstance(text, str) or not text.strip():
      skipped.add("no_text", number)
      continue
    if not with_label:
      examples.append({"text": text})
      continue
    value = record.get(label_field)
    if value is None or value == "":
      skipped.add("no_label", number)
      continue
    label = _label(value, label_names, num_labels)
    if label is None:
      expected = list(label_names) if label_names is not None else (
          f"an int in [0, {num_labels})" if num_labels else "a non-negative int")
      raise ValueError(f"{path}:{number}: label {value!r} (field {label_field!r}) is not one "
                       f"of the labels: expected {expected}")
    examples.append({"text": text, "label": label})
  if not examples:
    raise ValueError(
        f"{path}: no usable example (text field {text_field!r}"
        f"{f', label field {label_field!r}' if with_label else ''}; columns found: "
        f"{sorted(columns)}; skipped lines: {skipped})")
  level = logging.WARNING if skipped.counts else logging.INFO
  logging.log(level, "%s: %d examples; skipped bad lines: %s", path, len(examples), skipped)
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


def text_files(paths: str | os.PathLike | Sequence[str | os.PathLike], **kwargs: Any) -> list[dict[str, Any]]:
  """Examples of several files (a glob pattern, a path, or a list), in sorted path order.

  Sorting makes the example order, and so the shuffled order downstream,
  independent of how the file system lists a directory.

  Args:
    paths: file paths or glob patterns (`data/train-*.jsonl.gz`).
    **kwargs: `read_text_file` arguments.
  """
  examples = []
  for path in _files(paths):
    examples.extend(read_text_file(path, **kwargs))
  return examples


def fingerprint(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[list[Any]]:
  """[path, size, modification time] of each file `text_files(paths)` reads,
  so a cache of what was made from them notices an edited or added file."""
  return [[path if storage.is_remote(path) else os.path.abspath(path),
           *storage.file_stamp(path)] for path in _files(paths)]


def _files(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """The sorted files of paths or glob patterns; each pattern must match something."""
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
