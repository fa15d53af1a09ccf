"""Shared helpers for the model tests: a tiny config factory and batches."""

import ml_collections
import numpy as np
import pytest

from transformer_research.configs import base


@pytest.fixture
def make_config():
  """Returns f(**model_overrides) -> config.model of the `tiny` variant."""

  def make(**overrides) -> ml_collections.ConfigDict:
    c = base.get_config().model
    c.variant = "tiny"
    for key, value in overrides.items():
      setattr(c, key, value)
    return c

  return make


def random_tokens(rng: np.random.Generator, batch: int, length: int,
                  vocab: int, lengths=None) -> np.ndarray:
  """[batch, length] int32 ids in 1..vocab-1, zero-padded after `lengths`."""
  tokens = rng.integers(1, vocab, (batch, length))
  if lengths is not None:
    tokens = np.where(np.arange(length) < np.asarray(lengths)[:, None], tokens, 0)
  return tokens.astype(np.int32)
