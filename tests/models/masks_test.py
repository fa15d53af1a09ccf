"""Tests for models/masks.py against explicit loops."""

import numpy as np

from transformer_research.models import masks


def test_padding_mask_masks_pad_queries_and_keys():
  q = np.array([[5, 0]])
  k = np.array([[1, 2, 0]])
  np.testing.assert_array_equal(
      masks.padding_mask(q, k)[0, 0], [[True, True, False], [False, False, False]])


def test_causal_mask_is_lower_triangular():
  m = np.asarray(masks.causal_mask(4))
  assert m.shape == (1, 1, 4, 4)
  for i in range(4):
    for j in range(4):
      assert m[0, 0, i, j] == (j <= i)


def test_decoder_mask_is_causal_and_padding():
  targets = np.array([[3, 4, 0]])
  np.testing.assert_array_equal(
      masks.decoder_mask(targets)[0, 0],
      [[True, False, False], [True, True, False], [False, False, False]])


def test_memory_mask_shape_and_values():
  m = masks.memory_mask(np.array([[3, 0]]), np.array([[1, 1, 0]]))
  assert m.shape == (1, 1, 2, 3)
  np.testing.assert_array_equal(m[0, 0], [[True, True, False], [False, False, False]])


def test_segment_masks_keep_packed_examples_apart():
  seg = np.array([[1, 1, 2, 2, 0]])
  tokens = np.array([[5, 6, 7, 8, 0]])
  enc = np.asarray(masks.encoder_mask(tokens, seg))[0, 0]
  dec = np.asarray(masks.decoder_mask(tokens, seg))[0, 0]
  for i in range(5):
    for j in range(5):
      same = seg[0, i] == seg[0, j] and seg[0, i] > 0
      assert enc[i, j] == same
      assert dec[i, j] == (same and j <= i)
  mem = np.asarray(masks.memory_mask(tokens, np.array([[1, 2, 2]]), seg,
                                     np.array([[1, 2, 2]])))[0, 0]
  np.testing.assert_array_equal(mem[:, 0], [True, True, False, False, False])
  np.testing.assert_array_equal(mem[:, 1], [False, False, True, True, False])


def test_shift_right_plain_and_segment_aware():
  x = np.array([[5, 6, 7, 8, 9, 0]])
  np.testing.assert_array_equal(masks.shift_right(x), [[0, 5, 6, 7, 8, 9]])
  seg = np.array([[1, 1, 2, 2, 2, 0]])
  np.testing.assert_array_equal(masks.shift_right(x, seg), [[0, 5, 0, 7, 8, 0]])
