"""The tokenized splits of a text task, cached in the run directory.

Tokenizing the `wmt_spa` training split (83k pairs: read, SentencePiece,
pack into flat arrays) took most of a restart's start-up; a WMT-sized corpus
would take an hour per host per start. So `Task` keeps each tokenized split
in `WORKDIR/tokenized/<split>.npz`: the flat int32 arrays of
`pipeline.TokenizedData` plus a key that says what they were made from (the
tokenizers' fingerprints, the raw data's fingerprint, the lengths and limits
that decide what is kept, and `VERSION` for the encoding code itself).

A cache is used only when its key equals the current one, field for field,
or when only the raw data's stamps (`key["data"]["files"]`: the files' paths,
sizes and times) differ and the files hold the same bytes as when it was made
(a digest of local files is stored beside the key): data copied afresh to a
host at every start, or moved, is not tokenized again. Otherwise (or when the file cannot be
read) it is rebuilt with one warning naming the first field that differs,
never silently reused. Files are
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
                     tokenize: Callable[[], pipeline.TokenizedData],
                     content: Callable[[], str | None] = lambda: None
                     ) -> pipeline.TokenizedData:
  """The cached data at `path` if it was made with `key`, else `tokenize()`, saved there.

  Args:
    path: the `.npz` file (any epath file system: local, gs://).
    key: JSON-serialisable description of everything the data depends on;
      `key["data"]["files"]` stamps the raw files cheaply (paths, sizes, times).
    tokenize: builds the data when the cache cannot be used.
    content: a digest of the raw files' bytes (None: not files); computed when
      a cache is made, and when one differs from `key` only in those stamps.
  """
  path = epath.Path(path)
  key = json.loads(json.dumps({"version": VERSION, **key}))  # Lists, as read back.
  reason, digest, same_bytes = "no cache yet", None, None
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
        if ("content" in stored.files and
            _difference(_unstamped(cached_key), _unstamped(key)) is None):
          digest = content()
          if digest is not None and bytes(stored["content"]).decode() == digest:
            same_bytes = _unpack(stored)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # Torn or foreign.
      reason = f"unreadable ({type(e).__name__}: {e})"
    if same_bytes is not None:
      logging.info("tokenized cache %s: %s, but the files hold the bytes it was made from; "
                   "using it (%d examples)", path, reason, len(same_bytes))
      _save(path, key, same_bytes, digest)  # Under the new stamps: the next start matches.
      return same_bytes
    logging.warning("tokenized cache %s: %s; rebuilding it", path, reason)
  data = tokenize()
  _save(path, key, data, digest if digest is not None else content())
  return data


def _unstamped(key: dict[str, Any]) -> dict[str, Any]:
  """`key` without the raw files' stamps (`key["data"]["files"]`: paths, sizes,
  times), which a digest of their bytes may stand in for."""
  data = key.get("data")
  return {**key, "data": {**data, "files": None}} if isinstance(data, dict) else key


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


def _save(path: epath.Path, key: dict[str, Any], data: pipeline.TokenizedData,
          content: str | None) -> None:
  arrays = {"key": np.frombuffer(json.dumps(key).encode(), np.uint8),
            "skipped": np.frombuffer(json.dumps(data.skipped).encode(), np.uint8)}
  if content is not None:
    arrays["content"] = np.frombuffer(content.encode(), np.uint8)
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
