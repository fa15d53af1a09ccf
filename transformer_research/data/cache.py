"""The tokenized splits of a text task, cached in the run directory.

Tokenizing the `wmt_spa` training split (83k pairs: read, SentencePiece,
pack into flat arrays) took most of a restart's start-up; a WMT-sized corpus
would take an hour per host per start. So `Task` keeps each tokenized split
in `WORKDIR/tokenized/<split>.npz`: the flat int32 arrays of
`pipeline.TokenizedData` plus a key that says what they were made from (the
tokenizers' fingerprints, the raw data's fingerprint, the lengths and limits
that decide what is kept, and `VERSION` for the encoding code itself).

A cache is used only when its key equals the current one, field for field.
Otherwise (or when the file cannot be read) it is rebuilt with one warning
naming the first field that differs, never silently reused. Files are
written whole (`storage.replace_bytes`: a temporary name renamed locally, one
object write on a bucket), so a process killed mid-write, or a second
process writing the same split, leaves either the old file or a whole new one.
"""

import io
import json
import logging
import os
import zipfile
from typing import Any, Callable

from etils import epath
import numpy as np

from transformer_research import storage
from transformer_research.data import pipeline

# Bump when the way records become examples changes (EOS, skipping, chunking).
VERSION = 1


def load_or_tokenize(path: str | os.PathLike, key: dict[str, Any],
                     tokenize: Callable[[], pipeline.TokenizedData]) -> pipeline.TokenizedData:
  """The cached data at `path` if it was made with `key`, else `tokenize()`, saved there.

  Args:
    path: the `.npz` file (any epath file system: local, gs://).
    key: JSON-serialisable description of everything the data depends on.
    tokenize: builds the data when the cache cannot be used.
  """
  path = epath.Path(path)
  key = json.loads(json.dumps({"version": VERSION, **key}))  # Lists, as read back.
  reason = "no cache yet"
  if path.exists():
    try:
      with path.open("rb") as f, np.load(f) as stored:
        cached_key = json.loads(bytes(stored["key"]).decode())
        reason = _difference(cached_key, key)
        if reason is None:
          data = _unpack(stored)
          logging.info("tokenized cache %s: %d examples, made with the same tokenizers and "
                       "data", path, len(data))
          return data
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # Torn or foreign.
      reason = f"unreadable ({type(e).__name__}: {e})"
    logging.warning("tokenized cache %s: %s; rebuilding it", path, reason)
  data = tokenize()
  _save(path, key, data)
  return data


def _difference(cached: Any, current: Any, where: str = "") -> str | None:
  """None if equal, else the first value that changed, by its place in the key:
  `data.files[1] changed (cached ["/data/train.jsonl", 31000, ...], now [...])`.
  Dicts and lists of lists are descended into, so a changed file is named by
  its own entry (path, size, time) rather than by the list of all files."""
  if isinstance(cached, dict) and isinstance(current, dict):
    for field in sorted(set(cached) | set(current)):
      found = _difference(cached.get(field), current.get(field),
                          f"{where}.{field}" if where else field)
      if found:
        return found
    return None
  if (isinstance(cached, list) and isinstance(current, list) and len(cached) == len(current)
      and all(isinstance(v, (list, dict)) for v in cached + current)):
    for i, (old, new) in enumerate(zip(cached, current)):
      found = _difference(old, new, f"{where}[{i}]")
      if found:
        return found
    return None
  if cached == current:
    return None
  show = lambda v: (s if len(s := json.dumps(v)) <= 200 else s[:197] + "...")
  return f"{where} changed (cached {show(cached)}, now {show(current)})"


def _save(path: epath.Path, key: dict[str, Any], data: pipeline.TokenizedData) -> None:
  arrays = {"key": np.frombuffer(json.dumps(key).encode(), np.uint8),
            "skipped": np.frombuffer(json.dumps(data.skipped).encode(), np.uint8)}
  for group in ("tokens", "offsets", "scalars"):
    for field, values in getattr(data, group).items():
      arrays[f"{group}.{field}"] = values
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  path.parent.mkdir(parents=True, exist_ok=True)
  storage.replace_bytes(path, buffer.getvalue())


def _unpack(stored: Any) -> pipeline.TokenizedData:
  groups: dict[str, dict[str, np.ndarray]] = {"tokens": {}, "offsets": {}, "scalars": {}}
  for name in stored.files:
    if "." in name:
      group, field = name.split(".", 1)
      groups[group][field] = stored[name]
  return pipeline.TokenizedData(skipped=json.loads(bytes(stored["skipped"]).decode()), **groups)
