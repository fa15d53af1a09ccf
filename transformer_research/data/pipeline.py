"""Deterministic input pipeline: tokenize once, then shuffle, pack or pad, shard.

Plain NumPy rather than grain: every dataset this project trains on (spa-eng,
IMDB, the synthetic tasks) tokenizes in seconds and fits in memory as flat
int32 arrays, so the whole pipeline is a few array gathers per batch. That
keeps the iterator state two integers (JSON, exact after a resume) and the
packing plan a pure function of (seed, epoch, position) that the tests can
check token by token, with no worker processes competing for the CPU that
feeds the accelerator.

How a batch is made:

* `tokenize` encodes every record once. Bad records (the source raising on
  undecodable bytes or a malformed line, an encoder error, an empty field, a
  field longer than its limit) are skipped and counted, and one log line
  reports the counts: never a crash, never a silent drop.
* The example stream is the concatenation of per-epoch permutations, each
  drawn from `(seed, epoch)`. The *global* batch is planned from that stream
  (packing needs only lengths), identically on every process; process `i` of
  `n` then materialises rows `[i*B/n, (i+1)*B/n)`. So a run on n processes
  sees exactly the global batches of a 1-process run, every example lands in
  exactly one row, and the iterator state is the same on every process.
* Packing (`packing=True`) puts several examples in one row, in stream order, with
  segment ids (1, 2, ... per row; 0 = padding) and positions that restart at 0
  in every segment. Padding (`packing=False`) pads each row to the smallest of
  a few bucket lengths that fits the longest example of the global batch.
* `Prefetch` runs an iterator a few batches ahead in a background thread (the
  training loop also puts each batch on the devices there), so the training
  thread only dispatches steps. One producer and a FIFO queue keep the order
  exactly that of the wrapped iterator, and its state is the wrapped state
  after the last batch handed out, so a checkpoint never skips the batches
  still waiting in the queue.
"""

import array
from collections.abc import Callable, Iterator, Mapping, Sequence
import dataclasses
import functools
import hashlib
import logging
import queue
import threading
from typing import Any

import numpy as np

# Rows open for packing at a time (see BatchIterator._pack).
_OPEN_ROWS = 8

# What an encoder returns for one record: token lists for sequence fields,
# ints for scalar fields (e.g. "label", "length"). A list means several
# examples from one record (LM documents cut into chunks).
Encoded = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class TokenizedData:
  """Examples stored column-wise: flat int32 tokens plus offsets per field.

  One int32 per token keeps 100k sentence pairs at a few MB and lets a batch
  be gathered by slicing instead of touching Python objects per token.
  """
  tokens: dict[str, np.ndarray]  # field -> [total_tokens] int32
  offsets: dict[str, np.ndarray]  # field -> [N + 1] int64
  scalars: dict[str, np.ndarray]  # field -> [N] int32
  skipped: dict[str, int]  # reason -> count

  def __len__(self) -> int:
    return len(next(iter(self.offsets.values()))) - 1

  def lengths(self, field: str) -> np.ndarray:
    return np.diff(self.offsets[field])

  def get(self, field: str, index: int) -> np.ndarray:
    return self.tokens[field][self.offsets[field][index]:self.offsets[field][index + 1]]

  @functools.cached_property
  def sha256(self) -> str:
    """What identifies the examples: a digest of every array (16 hex digits).

    A checkpoint's data position records it, so a resume on other data of the
    same size is refused rather than silently shuffled differently (a position
    indexes examples), and `evaluate.py` knows whether a validation split
    carved from the training files is still the one the run held out.
    """
    digest = hashlib.sha256()
    for group in ("tokens", "offsets", "scalars"):
      for field, values in sorted(getattr(self, group).items()):
        digest.update(f"{group}.{field}:{values.dtype.str}:".encode())
        digest.update(np.ascontiguousarray(values).data)
    return digest.hexdigest()[:16]


def identity_changes(ours: Mapping[str, Any], theirs: Mapping[str, Any], ours_label: str,
                     theirs_label: str) -> str:
  """'num_examples 15 now, 20 then; ...' for each key of `theirs` that `ours` does not match.

  How the messages that refuse other data (another host's copy, a carve that
  moved) name what differs between two identities (`TokenizedData.sha256`
  and the number of examples); "" when none does.
  """
  return "; ".join(f"{key} {ours.get(key)!r} {ours_label}, {value!r} {theirs_label}"
                   for key, value in theirs.items() if ours.get(key) != value)


def tokenize(source: Sequence[Mapping[str, Any]],
             encode: Callable[[Mapping[str, Any]], Encoded | list[Encoded]],
             max_lengths: Mapping[str, int],
             name: str = "data") -> TokenizedData:
  """Encodes every record of `source`, skipping and counting bad ones.

  Args:
    source: random-access records (raw dicts); `source[i]` may raise
      ValueError/UnicodeError/KeyError for a malformed record.
    encode: raw record -> {field: list[int] | int} (or a list of those);
      raises ValueError/UnicodeError/KeyError/TypeError on a malformed record.
    max_lengths: limit per sequence field; a longer field skips the example.
    name: names the data in the log line.

  Returns:
    The kept examples and the skip counts by reason.
  """
  if not max_lengths:
    raise ValueError(f"max_lengths={max_lengths!r}; expected a limit for at least one field")
  seq_fields = tuple(max_lengths)
  # Compact typed buffers (4 bytes a token): a list of Python lists would
  # take ~10x the memory of the tokens on a WMT-sized training set.
  tokens = {f: array.array("i") for f in seq_fields}
  sizes = {f: array.array("q") for f in seq_fields}
  scalars: dict[str, list[int]] = {}
  skipped = {"malformed": 0, "empty": 0, "too_long": 0}
  num_records = len(source)
  for _, record in read_records(source):
    try:
      if isinstance(record, Exception):
        raise record
      out = encode(record)
    except (ValueError, UnicodeError, KeyError, TypeError):
      skipped["malformed"] += 1
      continue
    for example in (out if isinstance(out, list) else [out]):
      if any(len(example[f]) == 0 for f in seq_fields):
        skipped["empty"] += 1
      elif any(len(example[f]) > max_lengths[f] for f in seq_fields):
        skipped["too_long"] += 1
      else:
        for f in seq_fields:
          tokens[f].extend(example[f])
          sizes[f].append(len(example[f]))
        for f, v in example.items():
          if f not in max_lengths:
            scalars.setdefault(f, []).append(int(v))
  data = TokenizedData(
      tokens={f: np.frombuffer(t, np.int32).copy() for f, t in tokens.items()},
      offsets={f: np.concatenate([[0], np.cumsum(np.frombuffer(n, np.int64))]).astype(np.int64)
               for f, n in sizes.items()},
      scalars={f: np.asarray(v, np.int32) for f, v in scalars.items()},
      skipped=skipped)
  # Examples per label: a classifier's file sorted by label and cut short
  # (max_train_examples, `head`) holds one class, and trains to say it.
  counts = np.bincount(data.scalars["label"]) if len(data.scalars.get("label", ())) else None
  labels = "" if counts is None else "; examples per label " + ", ".join(
      f"{label}: {n}" for label, n in enumerate(counts.tolist()) if n)
  one_label = counts is not None and np.count_nonzero(counts) == 1
  if one_label:
    labels += " (every example has the same label: is the data sorted by label and cut?)"
  logging.log(logging.WARNING if sum(skipped.values()) or one_label else logging.INFO,
              "%s: kept %d examples from %d records; skipped %d (%s)%s", name, len(data),
              num_records, sum(skipped.values()),
              ", ".join(f"{k}={v}" for k, v in skipped.items()), labels)
  return data


# Records per batched read in `tokenize`.
_READ_CHUNK = 1024


def read_records(source: Sequence[Mapping[str, Any]]) -> Iterator[tuple[int, Any]]:
  """(index, record or the exception reading it raised) for every record.

  Reads `_READ_CHUNK` records at a time through `source.__getitems__` where
  the source has one (TFDS array_record: ~8x the records/s of `source[i]`);
  a chunk that fails is read again one by one, so only its bad records are
  reported as bad.
  """
  read_many = getattr(source, "__getitems__", None)
  for start in range(0, len(source), _READ_CHUNK):
    indices = range(start, min(start + _READ_CHUNK, len(source)))
    if read_many is not None:
      try:
        yield from zip(indices, read_many(indices))
        continue
      except (ValueError, UnicodeError, KeyError, TypeError):
        pass
    for i in indices:
      try:
        yield i, source[i]
      except (ValueError, UnicodeError, KeyError, TypeError) as e:
        yield i, e


def bucket_lengths(max_length: int, num_buckets: int) -> tuple[int, ...]:
  """Halving bucket lengths up to `max_length`: few shapes, so few compiles."""
  if num_buckets < 1:
    raise ValueError(f"num_buckets={num_buckets}; expected >= 1")
  return tuple(sorted({max(1, max_length >> k) for k in range(num_buckets)}))


def default_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """Fills unset process arguments from jax, so single-host callers pass nothing."""
  if process_index is None or process_count is None:
    import jax  # Deferred: the pipeline itself needs no jax.
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index}, process_count={process_count}; "
                     "expected 0 <= process_index < process_count")
  return process_index, process_count


class BatchIterator(Iterator[dict[str, np.ndarray]]):
  """Endless training batches with a JSON state, identical on every process.

  The state is the position of the next unused example in the (seed, epoch)
  stream; since a batch is a pure function of that position, `set_state`
  followed by `next` gives exactly the batches of the uninterrupted run.
  """

  def __init__(self, data: TokenizedData, *, batch_size: int,
               max_lengths: Mapping[str, int], packing: bool, num_buckets: int = 3,
               seed: int = 0, process_index: int | None = None,
               process_count: int | None = None):
    """Checks the arguments; no batch is built before the first `next`.

    Args:
      data: tokenized examples (non-empty).
      batch_size: global rows per batch; each process yields batch_size // process_count.
      max_lengths: row length per sequence field (packing) or largest bucket.
      packing: pack several examples per row (else one example per padded row).
      num_buckets: number of padded lengths per field when not packing.
      seed: shuffling seed; epoch e uses the permutation drawn from (seed, e).
      process_index, process_count: this process's share; default from jax.
    """
    self._pi, self._pc = default_process(process_index, process_count)
    if len(data) == 0:
      raise ValueError("data has no examples; expected at least one (see the skip log line)")
    if batch_size < 1 or batch_size % self._pc:
      raise ValueError(f"batch_size={batch_size}; expected a positive multiple of "
                       f"process_count={self._pc}")
    self._data, self._batch_size, self._seed = data, batch_size, seed
    if len(max_lengths) > 2:
      raise ValueError(f"max_lengths={dict(max_lengths)}; expected one or two sequence fields")
    self._max_lengths, self._packing = dict(max_lengths), packing
    self._buckets = {f: bucket_lengths(n, num_buckets) for f, n in max_lengths.items()}
    self._lengths = {f: data.lengths(f) for f in max_lengths}
    # Packing reads plain ints (no per-example numpy) of exactly two fields:
    # a missing second field needs 0 tokens of a 0-token budget.
    self._pack_lengths = [self._lengths[f].tolist() for f in max_lengths]
    self._pack_limits = list(max_lengths.values())
    if len(max_lengths) == 1:
      self._pack_lengths.append([0] * len(data))
      self._pack_limits.append(0)
    self._num_examples, self._data_sha256 = len(data), data.sha256
    self._epoch, self._position = 0, 0
    self._order_epoch, self._order = -1, []

  def get_state(self) -> dict[str, Any]:
    return {"epoch": self._epoch, "position": self._position, "seed": self._seed,
            "num_examples": self._num_examples, "data_sha256": self._data_sha256}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Resumes at `state`; refuses a state written for other data or seed."""
    expected = {"seed": self._seed, "num_examples": self._num_examples,
                "data_sha256": self._data_sha256}
    if "data_sha256" not in state:  # Saved before the digest was recorded.
      del expected["data_sha256"]
    for key, want in expected.items():
      if state.get(key) != want:
        raise ValueError(f"iterator state {key}={state.get(key)!r}, expected {want}: the state "
                         "was saved for other data or another seed")
    self._epoch, self._position = int(state["epoch"]), int(state["position"])

  def _peek(self) -> int:
    """The next example index of the (seed, epoch) stream, not consumed."""
    if self._epoch != self._order_epoch:
      rng = np.random.default_rng([self._seed, self._epoch])
      self._order, self._order_epoch = rng.permutation(len(self._data)).tolist(), self._epoch
    return self._order[self._position]

  def _advance(self) -> None:
    self._position += 1
    if self._position == self._num_examples:
      self._epoch, self._position = self._epoch + 1, 0

  def _pack(self) -> list[list[int]]:
    """Packs the stream, in order, into the rows of one global batch.

    First fit over the last `_OPEN_ROWS` rows: an example goes into the first
    open row with room in every field, else opens a new row (closing the
    fullest open one). This keeps ~99% of the fill of first fit over all
    rows at a fraction of the cost, since this loop is the pipeline's hot
    path. The example that would need row B + 1 is left for the next batch,
    so the state stays a stream position.
    """
    (first_lengths, second_lengths), limits = self._pack_lengths, self._pack_limits
    rows: list[list[int]] = []
    open_rows: list[list[int]] = []  # [free in field 0, free in field 1, row number]
    while True:
      index = self._peek()
      a, b = first_lengths[index], second_lengths[index]
      for row in open_rows:
        if row[0] >= a and row[1] >= b:
          break
      else:
        if len(rows) == self._batch_size:
          return rows
        if len(open_rows) == _OPEN_ROWS:
          open_rows.remove(min(open_rows, key=lambda r: r[0] + r[1]))
        row = [*limits, len(rows)]
        open_rows.append(row)
        rows.append([])
      row[0] -= a
      row[1] -= b
      rows[row[-1]].append(index)
      self._advance()

  def __next__(self) -> dict[str, np.ndarray]:
    if self._packing:
      rows, shapes = self._pack(), self._max_lengths
    else:
      rows = []
      for _ in range(self._batch_size):
        rows.append([self._peek()])
        self._advance()
      shapes = {}
      for f, buckets in self._buckets.items():
        longest = max(self._lengths[f][r[0]] for r in rows)
        shapes[f] = next(b for b in buckets if b >= longest)
    per_process = self._batch_size // self._pc
    mine = rows[self._pi * per_process:(self._pi + 1) * per_process]
    return assemble(self._data, mine, shapes, packed=self._packing)


def assemble(data: TokenizedData, rows: Sequence[Sequence[int]], shapes: Mapping[str, int],
             packed: bool) -> dict[str, np.ndarray]:
  """Builds one batch from example indices per row (an empty row is all padding).

  Returns int32 arrays: each sequence field [B, L], plus `<field>_segmentation`
  and `<field>_position` [B, L] when packed, plus every scalar field [B]
  (taken from the row's first example; 0 for an empty row).
  """
  # Vectorised over all tokens of the batch: one gather instead of a slice
  # per example, which was half the cost of a batch.
  row_of = np.array([r for r, row in enumerate(rows) for _ in row], np.int64)  # [S]
  segment_of = np.array([s for row in rows for s in range(1, len(row) + 1)], np.int32)  # [S]
  index_of = np.array([i for row in rows for i in row], np.int64)  # [S]
  first_of_row = np.maximum.accumulate(np.where(segment_of == 1, np.arange(len(index_of)), 0))
  batch = {}
  for f, length in shapes.items():
    starts = data.offsets[f][index_of]  # [S]
    sizes = data.offsets[f][index_of + 1] - starts  # [S]
    begin = np.cumsum(sizes) - sizes  # [S] start of each segment in the flat batch
    position = np.arange(sizes.sum()) - np.repeat(begin, sizes)  # [N] tokens
    column = np.repeat(begin - begin[first_of_row], sizes) + position  # [N]
    row = np.repeat(row_of, sizes)  # [N]
    tokens = np.zeros((len(rows), length), np.int32)
    tokens[row, column] = data.tokens[f][np.repeat(starts, sizes) + position]
    batch[f] = tokens
    if packed:
      batch[f + "_segmentation"] = np.zeros((len(rows), length), np.int32)
      batch[f + "_segmentation"][row, column] = np.repeat(segment_of, sizes)
      batch[f + "_position"] = np.zeros((len(rows), length), np.int32)
      batch[f + "_position"][row, column] = position
  for f, values in data.scalars.items():
    batch[f] = np.array([values[row[0]] if row else 0 for row in rows], np.int32)
  return batch


def eval_batches(data: TokenizedData, *, batch_size: int, max_lengths: Mapping[str, int],
                 process_index: int | None = None,
                 process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `data` in order, padded to `max_lengths`: one shape, no recompiles.

  Every process yields the same number of batches (collectives need that);
  rows past the end are all padding, marked by `example_mask` [B] = 0.

  Args:
    data: tokenized examples.
    batch_size: global rows per batch; each process yields batch_size // process_count.
    max_lengths: padded length per sequence field.
    process_index, process_count: this process's share; default from jax.
  """
  pi, pc = default_process(process_index, process_count)
  if batch_size < 1 or batch_size % pc:
    raise ValueError(f"batch_size={batch_size}; expected a positive multiple of "
                     f"process_count={pc}")
  per_process = batch_size // pc
  for start in range(0, len(data), batch_size):
    mine = range(start + pi * per_process, start + (pi + 1) * per_process)
    rows = [[i] if i < len(data) else [] for i in mine]
    batch = assemble(data, rows, max_lengths, packed=False)
    batch["example_mask"] = np.array([1 if row else 0 for row in rows], np.int32)
    yield batch


def check_depth(depth: Any) -> None:
  """Raises ValueError unless `depth` (`config.data.prefetch`) is an int >= 1."""
  if not isinstance(depth, int) or depth < 1:
    raise ValueError(f"config.data.prefetch={depth!r}: expected an int >= 1 (batches made "
                     "ahead of the training step)")


class Prefetch(Iterator[Any]):
  """`iterator`'s items, `depth` ahead, made (and `transform`ed) in a thread.

  `get_state` / `set_state` are those of the wrapped iterator as of the last
  item handed out, so saving `get_state()` and resuming with `set_state`
  continues exactly after that item, whatever the thread had read ahead.
  An exception in the thread is raised by the `next` that would have
  returned the failed item.
  """

  def __init__(self, iterator: Any, depth: int, transform: Callable[[Any], Any] | None = None):
    """Args:
      iterator: has `__next__`, `get_state` and `set_state` (a BatchIterator).
      depth: items kept ready (`config.data.prefetch`), at least 1.
      transform: applied to each item in the thread (e.g. the device transfer).
    """
    check_depth(depth)
    self._iterator, self._depth = iterator, depth
    self._transform = transform or (lambda item: item)
    self._state = iterator.get_state()
    self._thread: threading.Thread | None = None
    self._queue: queue.Queue = queue.Queue(depth)
    self._stop = threading.Event()

  def get_state(self) -> Any:
    return self._state

  def set_state(self, state: Any) -> None:
    self.close()
    self._iterator.set_state(state)
    self._state = self._iterator.get_state()

  def __next__(self) -> Any:
    if self._thread is None:
      self._stop.clear()
      self._queue = queue.Queue(self._depth)
      self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop),
                                      name="prefetch", daemon=True)
      self._thread.start()
    item, state, error = self._queue.get()
    if error is not None:
      self.close()
      raise error
    self._state = state
    return item

  def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
      try:
        item = next(self._iterator)
        entry = (self._transform(item), self._iterator.get_state(), None)
      except Exception as e:  # Handed to the consumer, raised there.
        entry = (None, None, e)
      while not stop.is_set():
        try:
          out.put(entry, timeout=0.1)
          break
        except queue.Full:
          continue
      if entry[2] is not None:
        return

  def close(self) -> None:
    """Stops the thread; items it had made ahead are dropped, and the wrapped
    iterator is rewound to `get_state()`, so a later `next` continues there."""
    if self._thread is not None:
      self._stop.set()
      self._thread.join()
      self._thread = None
      self._iterator.set_state(self._state)
