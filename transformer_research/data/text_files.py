"""Local text datasets as sources: JSON lines or TSV files, optionally gzipped.

Lets users bring their own classification or language-modelling data without
writing a TFDS builder. Formats, chosen by file suffix (`.gz` is stripped first):

* `.jsonl` / `.json`: one JSON object per line, e.g. `{"text": "...", "label": 1}`;
  other fields are ignored.
* `.tsv`: a header line naming the columns (so column order is free), then one
  example per line; text may not contain tabs or newlines.

Labels are ints, or strings listed in `label_names` (mapped to their index).
Bad lines (undecodable bytes, broken JSON, missing or empty text, a bad label,
a wrong column count) are skipped and counted in one log line per file: one
bad line in a user's file should not stop a run, nor vanish silently.
"""

from collections.abc import Iterator, Sequence
import glob
import gzip
import json
import logging
import os
from typing import Any

from etils import epath


def _format(path: str) -> str:
  name = path[:-3] if path.endswith(".gz") else path
  for suffix, fmt in ((".jsonl", "json"), (".json", "json"), (".tsv", "tsv")):
    if name.endswith(suffix):
      return fmt
  raise ValueError(f"path={path!r}: expected a .jsonl, .json or .tsv file (optionally .gz)")


def _lines(path: str) -> Iterator[bytes]:
  with epath.Path(path).open("rb") as f:
    yield from gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f


def _records(path: str, bad: dict[str, int]) -> Iterator[dict[str, Any]]:
  """Raw field dicts of one file; undecodable or unparsable lines are counted in `bad`."""
  fmt = _format(path)
  header = None
  for raw in _lines(path):
    try:
      line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
      bad["not_utf8"] = bad.get("not_utf8", 0) + 1
      continue
    if not line.strip():
      continue
    if fmt == "json":
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        record = None
      if not isinstance(record, dict):
        bad["not_json_object"] = bad.get("not_json_object", 0) + 1
        continue
      yield record
    elif header is None:
      header = line.split("\t")
    else:
      fields = line.split("\t")
      if len(fields) != len(header):
        bad["wrong_columns"] = bad.get("wrong_columns", 0) + 1
        continue
      yield dict(zip(header, fields))


def _label(value: Any, label_names: Sequence[str] | None) -> int | None:
  """The int label of a field value, or None if it is not a valid label."""
  if label_names is not None and isinstance(value, str) and value in label_names:
    return list(label_names).index(value)
  if isinstance(value, bool):
    return None
  if isinstance(value, int):
    return value
  if isinstance(value, str) and value.strip().lstrip("-").isdigit():
    return int(value)
  return None


def read_text_file(path: os.PathLike | str, *, with_label: bool = True, text_field: str = "text",
                   label_field: str = "label", label_names: Sequence[str] | None = None
                   ) -> list[dict[str, Any]]:
  """Reads one file into `{"text": str, "label": int}` (or `{"text": str}`) examples.

  Args:
    path: a .jsonl / .json / .tsv file, optionally gzipped.
    with_label: read labels (classification) or text only (language modelling).
    text_field: the field holding the text.
    label_field: the field holding the label.
    label_names: string labels accepted, mapped to their index (e.g. ["neg", "pos"]).
  """
  path = os.fspath(path)
  bad: dict[str, int] = {}
  examples = []
  for record in _records(path, bad):
    text = record.get(text_field)
    if not isinstance(text, str) or not text.strip():
      bad["no_text"] = bad.get("no_text", 0) + 1
      continue
    if not with_label:
      examples.append({"text": text})
      continue
    label = _label(record.get(label_field), label_names)
    if label is None or label < 0:
      bad["bad_label"] = bad.get("bad_label", 0) + 1
      continue
    examples.append({"text": text, "label": label})
  level = logging.WARNING if bad else logging.INFO
  logging.log(level, "%s: %d examples; skipped bad lines: %s", path, len(examples), bad or "none")
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
  examples = []
  for path in sorted(files):
    examples.extend(read_text_file(path, **kwargs))
  return examples
