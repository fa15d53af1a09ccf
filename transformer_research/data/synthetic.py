"""Synthetic algorithmic tasks, generated from a seed with no files.

These are the quick, exactly-scored checks of a model (Trax TransformerLM guide
style for reverse and sort; reversed-digit addition and number comparison for
length generalisation). Each example is a raw record like the real sources
give (`inputs`/`targets` strings, or `text`/`label`), plus `length`, the
task's notion of size that the per-length accuracy table groups by.

Train and evaluation examples are disjoint by construction, not by luck:
every input string is assigned to a split by a CRC32 hash (stable across
runs, platforms and seeds), `test` owns 1/10 of the input space, `validation`
another 1/10, `train` the rest, and each generator keeps only the inputs of
its own split.
"""

import zlib
from typing import Any

import numpy as np

TASKS = ("reverse", "sort", "addition", "difference")
SPLITS = ("train", "validation", "test")
ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"  # Symbols of reverse / sort.

# Rejection sampling gives up on a length after this many draws per example
# asked for: short lengths have few distinct inputs of the wanted split.
_MAX_TRIES_PER_EXAMPLE = 50


def split_of(inputs: str) -> str:
  """The one split that owns the input string `inputs`."""
  bucket = zlib.crc32(inputs.encode("utf-8")) % 10
  return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _digits(rng: np.random.Generator, length: int) -> str:
  """A number with exactly `length` digits (no leading zero unless length is 1)."""
  first = str(rng.integers(0 if length == 1 else 1, 10))
  return first + "".join(map(str, rng.integers(0, 10, length - 1)))


def _operands(rng: np.random.Generator, length: int) -> tuple[str, str]:
  """Two numbers: one with `length` digits, the other as long or shorter, in random order."""
  a = _digits(rng, length)
  b = _digits(rng, length if rng.random() < 0.5 else int(rng.integers(1, length + 1)))
  return (a, b) if rng.random() < 0.5 else (b, a)


def _example(task: str, rng: np.random.Generator, length: int,
             num_symbols: int) -> tuple[str, dict[str, Any]]:
  """Draws one example of `length`; returns (its input string, the record)."""
  if task in ("reverse", "sort"):
    inputs = "".join(rng.choice(list(ALPHABET[:num_symbols]), length))
    targets = inputs[::-1] if task == "reverse" else "".join(sorted(inputs))
    return inputs, {"inputs": inputs, "targets": targets, "length": length}
  a, b = _operands(rng, length)
  if task == "addition":
    # Digits least significant first, so carries flow left to right as decoded.
    inputs = f"{a[::-1]}+{b[::-1]}"
    return inputs, {"inputs": inputs, "targets": str(int(a) + int(b))[::-1], "length": length}
  text = f"{a}-{b}"
  return text, {"text": text, "label": int(int(a) > int(b)), "length": length}


def check_config(data: Any) -> None:
  """The synthetic-task fields of `config.data`, before anything trains.

  The eval splits are generated at the first eval: a bad eval length range
  was found only there, after the first steps had trained and checkpointed.

  Raises:
    ValueError naming the config field(s) and value(s).
  """
  for field in ("num_train_examples", "num_eval_per_length"):
    if isinstance(data[field], bool) or not isinstance(data[field], int) or data[field] < 1:
      raise ValueError(f"config.data.{field}={data[field]!r}: expected a positive number of "
                       "examples")
  for low, high in (("min_len", "train_max_len"), ("eval_min_len", "eval_max_len")):
    if not 1 <= data[low] <= data[high]:
      raise ValueError(f"config.data.{low}={data[low]!r}, config.data.{high}={data[high]!r}: "
                       f"expected 1 <= {low} <= {high}")
  if not 2 <= data.num_symbols <= len(ALPHABET):
    raise ValueError(f"config.data.num_symbols={data.num_symbols!r}: expected 2..{len(ALPHABET)} "
                     "(the symbols of reverse / sort)")


def generate(task: str, split: str, *, num_examples: int, min_len: int, max_len: int,
             seed: int, num_symbols: int = 10) -> list[dict[str, Any]]:
  """Generates the examples of one split.

  Args:
    task: one of TASKS.
    split: one of SPLITS.
    num_examples: for "train", the total number of examples (lengths drawn
      uniformly from [min_len, max_len]); for "validation"/"test", the number
      per length, so every length of the per-length table is covered (fewer
      when a short length has fewer distinct inputs in the split).
    min_len, max_len: inclusive range of `length`.
    seed: the same seed gives the same examples.
    num_symbols: alphabet size of reverse / sort (at most len(ALPHABET)).

  Returns:
    Records `{"inputs", "targets", "length"}` (reverse, sort, addition) or
    `{"text", "label", "length"}` (difference).
  """
  if task not in TASKS:
    raise ValueError(f"task={task!r}; expected one of {TASKS}")
  if split not in SPLITS:
    raise ValueError(f"split={split!r}; expected one of {SPLITS}")
  if not 1 <= min_len <= max_len:
    raise ValueError(f"min_len={min_len}, max_len={max_len}; expected 1 <= min_len <= max_len")
  if not 2 <= num_symbols <= len(ALPHABET):
    raise ValueError(f"num_symbols={num_symbols}; expected 2..{len(ALPHABET)}")
  if num_examples < 0:
    raise ValueError(f"num_examples={num_examples}; expected >= 0")
  rng = np.random.default_rng([seed, TASKS.index(task), SPLITS.index(split)])
  if split == "train":
    examples = []
    for _ in range(num_examples * _MAX_TRIES_PER_EXAMPLE):
      if len(examples) == num_examples:
        break
      key, record = _example(task, rng, int(rng.integers(min_len, max_len + 1)), num_symbols)
      if split_of(key) == "train":
        examples.append(record)
    return examples
  examples = []
  for length in range(min_len, max_len + 1):
    seen: set[str] = set()
    for _ in range(num_examples * _MAX_TRIES_PER_EXAMPLE):
      if len(seen) == num_examples:
        break
      key, record = _example(task, rng, length, num_symbols)
      if key not in seen and split_of(key) == split:
        seen.add(key)
        examples.append(record)
  return examples
