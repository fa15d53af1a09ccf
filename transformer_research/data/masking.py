"""BERT's masked-LM corruption of encoder batches, made on the host with the batches.

In each row, round(`rate` x its real tokens) of them (BERT: 15%) are selected
uniformly at random, at most P = ceil(`rate` x S); a selected token is
replaced by the mask id with probability 0.8, by a random ordinary token with
probability 0.1, and kept with probability 0.1 (Devlin et al., 2019, section
3.1; the count per row as in BERT's create_pretraining_data.py). The batch
then carries

    inputs          [B, S] int32: the corrupted tokens the encoder reads;
    mlm_positions   [B, P] int32: where the selected tokens are;
    targets         [B, P] int32: their original ids, 0 past the row's count,

so the model computes logits at P positions, not S (the output projection
is most of a small encoder's work), and the loss is the usual cross entropy
over `targets > 0`: exactly the selected tokens, and only those
(`losses.weights_for`). Packing keys pass through unchanged.

The mask id is the tokenizer's BOS id: no encoded text contains it (`encode`
adds neither BOS nor EOS, and inputs carry no EOS), so the vocabulary needs no
extra symbol and a classifier fine-tuned from the masked LM reads the same ids.

Reproducible and exactly resumable: the draws of a training batch are a pure
function of (seed, the iterator state before the batch), those of the k-th
eval batch of (seed, k), so every eval scores the same corruption. They are
drawn for the whole global batch and each process keeps its rows, so any
number of processes masks exactly the global batch of a one-process run.
"""

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import functools
from typing import Any

import numpy as np

from transformer_research.data import pipeline

# BERT's split of the selected tokens: replaced by the mask, by a random token; the rest kept.
MASK_FRACTION, RANDOM_FRACTION = 0.8, 0.1
_TRAIN, _EVAL = 0, 1  # Separate random streams for training and eval batches.


def predictions(rate: float, length: int) -> int:
  """P: tokens predicted per row at most, for rows of `length` tokens."""
  return max(1, int(np.ceil(rate * length)))


@dataclasses.dataclass(frozen=True)
class Masker:
  """How to corrupt the tokens of one vocabulary.

  Attributes:
    rate: fraction of the real tokens selected for prediction, in (0, 1].
    mask_id: what a masked token becomes.
    vocab_size: ids are in [0, vocab_size).
    special_ids: ids a random replacement never takes (pad, EOS, BOS = mask).
  """
  rate: float
  mask_id: int
  vocab_size: int
  special_ids: Sequence[int]

  def __post_init__(self):
    if not 0.0 < self.rate <= 1.0:
      raise ValueError(f"config.data.mask_rate={self.rate}; expected a fraction in (0, 1]")
    if not self._ordinary.size:
      raise ValueError(f"vocab_size={self.vocab_size}: no id besides {list(self.special_ids)} "
                       "to replace a token with")

  @functools.cached_property
  def _ordinary(self) -> np.ndarray:
    return np.setdiff1d(np.arange(self.vocab_size), self.special_ids)

  def __call__(self, inputs: np.ndarray, rng: np.random.Generator, global_rows: int,
               first_row: int) -> dict[str, np.ndarray]:
    """Masks `inputs`, rows [first_row, first_row + B_local) of a global batch.

    Args:
      inputs: [B_local, S] int token ids, 0 = pad.
      rng: drawn from for the whole global batch [global_rows, S].
      global_rows: rows of the global batch.
      first_row: the global index of this process's first row.

    Returns:
      {"inputs": corrupted [B_local, S], "mlm_positions": [B_local, P],
      "targets": [B_local, P]}, int32.
    """
    length = inputs.shape[1]
    p, rows = predictions(self.rate, length), slice(first_row, first_row + len(inputs))
    keys = rng.random((global_rows, length))[rows]  # [B_local, S]
    kind = rng.random((global_rows, p))[rows]  # [B_local, P]
    random_ids = self._ordinary[rng.integers(0, self._ordinary.size, (global_rows, p))[rows]]
    real = inputs > 0
    keys = np.where(real, keys, 2.0)  # Padding sorts last: never selected.
    positions = np.argsort(keys, axis=1, kind="stable")[:, :p]  # [B_local, P]
    count = np.minimum(p, np.rint(self.rate * real.sum(1)).astype(np.int64))  # [B_local]
    selected = np.arange(p) < count[:, None]  # [B_local, P]
    positions = np.where(selected, positions, 0)
    original = np.take_along_axis(inputs, positions, axis=1)
    masked = selected & (kind < MASK_FRACTION)
    randomised = selected & ~masked & (kind < MASK_FRACTION + RANDOM_FRACTION)
    corrupted = inputs.copy()
    row_index = np.broadcast_to(np.arange(len(inputs))[:, None], positions.shape)
    replacement = np.where(masked, self.mask_id, np.where(randomised, random_ids, original))
    corrupted[row_index[selected], positions[selected]] = replacement[selected]
    return {"inputs": corrupted.astype(np.int32),
            "mlm_positions": positions.astype(np.int32),
            "targets": np.where(selected, original, 0).astype(np.int32)}


def _masked(batch: Mapping[str, np.ndarray], masker: Masker, rng: np.random.Generator,
            process_index: int, process_count: int) -> dict[str, np.ndarray]:
  rows = len(batch["inputs"])
  return {**batch, **masker(batch["inputs"], rng, rows * process_count, rows * process_index)}


class MaskedBatches(Iterator[dict[str, np.ndarray]]):
  """A training `pipeline.BatchIterator` whose batches come masked; same state."""

  def __init__(self, batches: pipeline.BatchIterator, masker: Masker, *, seed: int,
               process_index: int | None = None, process_count: int | None = None):
    self._batches, self._masker, self._seed = batches, masker, seed
    self._pi, self._pc = pipeline.default_process(process_index, process_count)

  def get_state(self) -> dict[str, Any]:
    return self._batches.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self._batches.set_state(state)

  def __next__(self) -> dict[str, np.ndarray]:
    state = self._batches.get_state()
    rng = np.random.default_rng([self._seed, _TRAIN, state["epoch"], state["position"]])
    return _masked(next(self._batches), self._masker, rng, self._pi, self._pc)


def masked_eval_batches(batches: Iterator[dict[str, Any]], masker: Masker, *, seed: int,
                        process_index: int | None = None,
                        process_count: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """`pipeline.eval_batches` masked, the k-th batch from (seed, k): the same every eval."""
  pi, pc = pipeline.default_process(process_index, process_count)
  for k, batch in enumerate(batches):
    yield _masked(batch, masker, np.random.default_rng([seed, _EVAL, k]), pi, pc)
