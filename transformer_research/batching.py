"""Decode batches: sentences sorted by length, padded to a few bucket widths.

A decode costs what its padded shape costs: the encoder and every
cross-attention step scale with the source width, and the search runs until
the longest row of a batch has ended. So sentences are sorted by length,
neighbours are batched together, and each batch is padded to the smallest
bucket width that holds it (8, 16, 32, ... up to the longest allowed): a
handful of shapes to compile instead of one per length, and a 5-token
sentence no longer pays for `data.max_input_len` positions. A first pass of
each batch stops at twice its width (`first_pass_steps`); the few rows it
leaves unfinished are decoded again in full (`decode`).

NumPy only (no jax, no Haiku, no config), so that `launch/translate.py`
(through `inference`) and the exported translator (`serve.py`) read the same
sentences from the same input (`text_lines`), plan the same batches from them,
and therefore decode the same tokens.
"""

import logging
import os
from typing import BinaryIO, Callable, Sequence

import numpy as np

SMALLEST_BUCKET = 8


def bucket_widths(longest: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
  """Padded widths smallest, 2 * smallest, ... below `longest`, then `longest`.

  Raises:
    ValueError: `longest` < 1.
  """
  if longest < 1:
    raise ValueError(f"longest={longest}: expected a positive width.")
  widths, w = [], smallest
  while w < longest:
    widths.append(w)
    w *= 2
  return (*widths, longest)


def cut_to(rows: Sequence[Sequence[int]], width: int, what: str) -> list[list[int]]:
  """Rows cut to `width` ids, with one warning naming how many were cut.

  Args:
    rows: token ids per sentence.
    width: the longest allowed row (the longest bucket).
    what: names the limit in the warning, e.g. "data.max_input_len=64".
  """
  cut = sum(len(r) > width for r in rows)
  if cut:  # The model never saw longer sources; say so instead of guessing.
    logging.warning("%d of %d sources cut to %s tokens", cut, len(rows), what)
  return [list(r[:width]) for r in rows]


def plan(lengths: Sequence[int], batch_size: int,
         widths: Sequence[int]) -> list[tuple[list[int], int]]:
  """Length-sorted batches: (row indices, padded width) for each batch.

  Longest rows first (stable among equal lengths), so a batch that does not
  fit in memory fails at once rather than at the end. Every batch but the
  last holds `batch_size` rows; the caller pads the last one (one shape per
  width).

  Args:
    lengths: ids per row; each at most max(widths).
    batch_size: rows per batch.
    widths: allowed padded widths, ascending (`bucket_widths`).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size={batch_size}: expected a positive int.")
  if lengths and max(lengths) > widths[-1]:
    raise ValueError(f"a row has {max(lengths)} ids; expected at most {widths[-1]} "
                     "(cut rows with cut_to first).")
  order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
  batches = []
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    longest = max(max(lengths[i] for i in chunk), 1)
    batches.append((chunk, next(w for w in widths if w >= longest)))
  return batches


def first_pass_steps(width: int, max_len: int) -> int:
  """Decode steps of a batch's first pass: twice its source width (16 at least),
  at most `max_len`.

  A batch runs until its longest row has ended, so one sentence that never
  emits EOS (an undertrained model repeating itself) would hold all the others
  to `max_len` steps. Translations rarely run past twice their source, so a
  first pass stops there, and the rows it did not finish are decoded again in
  full (`decode`). This moves time, not output: a row is kept from the first
  pass only when it is final.
  """
  return min(max_len, max(2 * width, 16))


Run = Callable[[np.ndarray, int, bool], tuple[np.ndarray, np.ndarray]]


def decode(rows: Sequence[Sequence[int]], widths: Sequence[int], batch_size: int,
           run: Run) -> list[np.ndarray]:
  """Each row's decoded tokens, in input order, from two passes of `plan` batches.

  Args:
    rows: token ids per source, each at most max(widths) long.
    widths: bucket widths (`bucket_widths`).
    batch_size: rows per batch.
    run: `run(batch [batch_size, width] int32, batch number, first) -> (tokens
      [batch_size, T], done [batch_size] bool)`. With first=True it may stop
      early (`first_pass_steps`) and report rows it has not finished; with
      first=False it must finish every row. Batch numbers count over both
      passes (a sampler folds them into its key).
  """
  lengths = [len(r) for r in rows]
  out: list[np.ndarray | None] = [None] * len(rows)
  again = []
  first = plan(lengths, batch_size, widths)
  for number, (indices, width) in enumerate(first):
    tokens, done = run(pad(rows, indices, batch_size, width), number, True)
    for i, t, d in zip(indices, tokens, done):
      if d:
        out[i] = t
      else:
        again.append(i)
  second = plan([lengths[i] for i in again], batch_size, widths)
  for number, (positions, width) in enumerate(second, start=len(first)):
    indices = [again[j] for j in positions]
    tokens, _ = run(pad(rows, indices, batch_size, width), number, False)
    for i, t in zip(indices, tokens):
      out[i] = t
  return out


def pad(rows: Sequence[Sequence[int]], indices: Sequence[int], batch_size: int,
        width: int) -> np.ndarray:
  """[batch_size, width] int32: rows[indices], right-padded with 0, then empty rows."""
  batch = np.zeros((batch_size, width), np.int32)
  for i, r in enumerate(indices):
    batch[i, :len(rows[r])] = rows[r]
  return batch


def batch_size_for(count: int, largest: int, multiple: int = 1) -> int:
  """Rows per batch for `count` sentences: `largest`, or fewer for a small
  input (a multiple of `multiple`, the mesh's batch shards), so one sentence
  does not pay for `largest` rows."""
  return min(largest, -(-count // multiple) * multiple)


def on_non_blank(texts: Sequence[str], fn: Callable[[list[str]], list[str]]) -> list[str]:
  """fn over the non-blank texts (stripped), in order; "" for blank ones.

  Raises:
    ValueError: no text is non-blank.
  """
  keep = [i for i, t in enumerate(texts) if t.strip()]
  if not keep:
    raise ValueError(f"texts={list(texts)!r}: expected at least one non-blank text.")
  result = [""] * len(texts)
  for i, out in zip(keep, fn([texts[i].strip() for i in keep])):
    result[i] = out
  return result


def text_lines(data: bytes, name: str) -> list[str]:
  """The lines of a user's text file (or stdin): see `_decoded`."""
  return _decoded(data, name).splitlines()


def input_texts(arguments: Sequence[str], stdin: BinaryIO) -> list[str]:
  """The texts of a command line: its arguments, else one per line of stdin."""
  if arguments:  # Bytes that are not UTF-8 reach Python as surrogates; fsencode undoes that.
    return [_decoded(os.fsencode(a), f"argument {i}") for i, a in enumerate(arguments, 1)]
  return text_lines(stdin.read(), "stdin")


def _decoded(data: bytes, name: str) -> str:
  """A user's text: UTF-8, a leading byte-order mark dropped (editors on
  Windows write one).

  Raises:
    ValueError: bytes that are not UTF-8, naming `name`, the line and the byte
      (else a traceback from the tokenizer's C++ code, or Python's message
      without the line).
  """
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    where = f"{name} line {line}" if b"\n" in data else name
    raise ValueError(f"{where}: byte {data[e.start]:#04x} is not UTF-8 text; "
                     "expected UTF-8 (convert it, e.g. iconv -f latin1 -t utf-8)") from None
