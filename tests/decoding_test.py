"""Search algorithms against toy `logits_fn`s whose answers are known.

A Markov chain (logits depend only on the previous token) is small enough to
enumerate every sequence, so beam search can be checked against the true
best-scoring sequence; the real-model checks live in inference_test.py.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_research import decoding

EOS = 1


def markov_fn(table: np.ndarray):
  """logits_fn whose next-token log-probs are `table[previous token]`."""
  log_table = jnp.asarray(np.log(table), jnp.float32)  # [V, V]

  def logits_fn(tokens, cache):
    return log_table[tokens], {"step": cache["step"] + 1}

  return logits_fn


def random_table(seed: int, vocab: int = 5) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = rng.dirichlet(np.ones(vocab) * 0.7, size=vocab)
  return t.astype(np.float32)


def cache_for(n: int):
  return {"step": jnp.zeros((n,), jnp.int32)}


# Token 0 = pad/start, 1 = EOS, 2 = A, 3 = B. Greedy takes A (0.5) then EOS
# (0.4): p = 0.2. B (0.4) then EOS (0.9) is better: p = 0.36.
TRAP = np.array([[1e-9, .1, .5, .4],
                 [1e-9, .25, .25, .5],
                 [1e-9, .4, .3, .3],
                 [1e-9, .9, .05, .05]], np.float32)


def test_beam_search_escapes_the_greedy_trap():
  fn = markov_fn(TRAP)
  tokens, _ = decoding.greedy(fn, cache_for(2), max_len=4, eos_id=EOS)
  np.testing.assert_array_equal(tokens, [[2, 1, 0, 0]] * 2)
  beams, scores, logp, done = decoding.beam_search(
      fn, cache_for(2), beam_size=2, max_len=4, eos_id=EOS, alpha=0.0)
  assert done.all()
  np.testing.assert_array_equal(beams[:, 0], [[3, 1, 0, 0]] * 2)
  np.testing.assert_allclose(logp[:, 0], np.log(0.36), rtol=1e-5)
  np.testing.assert_allclose(scores, logp, rtol=1e-6)  # alpha=0: no penalty


def brute_force_best(table: np.ndarray, max_len: int, alpha: float) -> float:
  """Best length-penalised score over every sequence of <= max_len tokens."""
  vocab = table.shape[0]
  best = -np.inf
  for n in range(1, max_len + 1):
    for seq in itertools.product(range(vocab), repeat=n):
      if EOS in seq[:-1] or (n < max_len and seq[-1] != EOS):
        continue  # Must end with EOS, unless cut at max_len.
      prev = (0,) + seq[:-1]
      logp = sum(np.log(table[p, t]) for p, t in zip(prev, seq))
      best = max(best, logp / ((5.0 + n) / 6.0) ** alpha)
  return best


@pytest.mark.parametrize("seed,alpha", [(0, 0.0), (1, 0.6), (2, 1.0)])
def test_exhaustive_beam_finds_the_best_sequence(seed, alpha):
  table, max_len = random_table(seed), 3
  _, scores, _, _ = decoding.beam_search(
      markov_fn(table), cache_for(1), beam_size=25, max_len=max_len,
      eos_id=EOS, alpha=alpha)  # 25 = 5**2 live prefixes: nothing is pruned.
  np.testing.assert_allclose(scores[0, 0], brute_force_best(table, max_len, alpha),
                             rtol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_beam_one_without_penalty_is_greedy(seed):
  fn = markov_fn(random_table(seed, vocab=7))
  tokens, logp = decoding.greedy(fn, cache_for(3), max_len=6, eos_id=EOS)
  beams, _, beam_logp, _ = decoding.beam_search(
      fn, cache_for(3), beam_size=1, max_len=6, eos_id=EOS, alpha=0.0)
  np.testing.assert_array_equal(beams[:, 0], tokens)
  np.testing.assert_allclose(beam_logp[:, 0], logp, rtol=1e-5)


def repeat_penalty_fn(table: np.ndarray):
  """Markov chain that penalises tokens already seen: needs the right cache.

  The cache holds which tokens each row has consumed, so a beam search that
  reorders beams without reordering the cache scores the wrong histories.
  """
  log_table = jnp.asarray(np.log(table), jnp.float32)

  def logits_fn(tokens, cache):
    seen = cache["seen"] | jax.nn.one_hot(tokens, table.shape[0], dtype=bool)
    return log_table[tokens] - 3.0 * seen, {"seen": seen}

  return logits_fn


def brute_force_repeat_penalty(table: np.ndarray, max_len: int) -> np.ndarray:
  """Log-probs of every complete sequence, best first."""
  vocab, found = table.shape[0], []
  for n in range(1, max_len + 1):
    for seq in itertools.product(range(1, vocab), repeat=n):  # never pad
      if EOS in seq[:-1] or (n < max_len and seq[-1] != EOS):
        continue
      history, logp = (0,), 0.0
      for tok in seq:
        logits = np.log(table[history[-1]]) - 3.0 * np.isin(np.arange(vocab), history)
        logp += logits[tok] - np.log(np.exp(logits).sum())
        history += (tok,)
      found.append(logp)
  return np.sort(found)[::-1]


def test_beam_cache_is_reordered_with_its_beam():
  table = random_table(3)
  table[:, EOS] = 1e-6  # Full-length answers, so the history matters.
  table /= table.sum(axis=1, keepdims=True)
  cache = {"seen": jnp.zeros((2, 5), bool)}
  beams, scores, _, _ = decoding.beam_search(
      repeat_penalty_fn(table), cache, beam_size=25, max_len=3, eos_id=EOS,
      alpha=0.0)
  assert beams.shape == (2, 25, 3)
  # All 25 two-token prefixes stay live, so the 25 beams are the 25 best
  # sequences; a beam continued with another beam's cache would score wrong.
  expected = brute_force_repeat_penalty(table, 3)[:25]
  np.testing.assert_allclose(scores, np.stack([expected] * 2), rtol=1e-5)


def test_rows_stop_at_eos_and_pad_after():
  table = np.full((4, 4), 1e-3, np.float32)
  table[0, 2] = table[2, 3] = table[3, 1] = 1.0  # start -> 2 -> 3 -> EOS
  tokens, _ = decoding.greedy(markov_fn(table), cache_for(2), max_len=6, eos_id=EOS)
  np.testing.assert_array_equal(tokens, [[2, 3, 1, 0, 0, 0]] * 2)


def test_prompt_is_forced_and_costs_nothing():
  fn = markov_fn(TRAP)
  prompt = jnp.array([[3, 3], [2, 0]], jnp.int32)  # row 1 has a 1-token prompt
  tokens, logp = decoding.greedy(fn, cache_for(2), max_len=4, eos_id=EOS,
                                 prompt=prompt)
  np.testing.assert_array_equal(tokens, [[3, 3, 1, 0], [2, 1, 0, 0]])
  np.testing.assert_allclose(logp, np.log([0.9, 0.4]), rtol=1e-5)
  beams, _, _, _ = decoding.beam_search(fn, cache_for(2), beam_size=2, max_len=4,
                                     eos_id=EOS, prompt=prompt)
  np.testing.assert_array_equal(beams[:, 0, :2], [[3, 3], [2, 1]])


def test_sampling_is_reproducible_and_filters():
  fn = markov_fn(random_table(5, vocab=8))
  kw = dict(max_len=6, eos_id=EOS)
  a = decoding.sample(fn, cache_for(16), jax.random.key(0), **kw)[0]
  b = decoding.sample(fn, cache_for(16), jax.random.key(0), **kw)[0]
  c = decoding.sample(fn, cache_for(16), jax.random.key(1), **kw)[0]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  top1 = decoding.sample(fn, cache_for(16), jax.random.key(2), top_k=1, **kw)[0]
  np.testing.assert_array_equal(top1, decoding.greedy(fn, cache_for(16), **kw)[0])


def test_filter_logits_top_p_keeps_smallest_set_reaching_mass():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = decoding.filter_logits(logits, top_p=0.8) > decoding.NEG_INF
  np.testing.assert_array_equal(kept, [[True, True, False, False]])
  kept = decoding.filter_logits(logits, top_p=0.1) > decoding.NEG_INF
  np.testing.assert_array_equal(kept, [[True, False, False, False]])
  kept = decoding.filter_logits(logits, top_k=3) > decoding.NEG_INF
  np.testing.assert_array_equal(kept, [[True, True, True, False]])


def test_bad_arguments_raise_value_errors():
  fn = markov_fn(TRAP)
  with pytest.raises(ValueError, match="beam_size=0"):
    decoding.beam_search(fn, cache_for(1), beam_size=0, max_len=3, eos_id=EOS)
  with pytest.raises(ValueError, match="temperature=0"):
    decoding.sample(fn, cache_for(1), jax.random.key(0), max_len=3, eos_id=EOS,
                    temperature=0.0)
  with pytest.raises(ValueError, match="top_p=1.5"):
    decoding.filter_logits(jnp.zeros((1, 4)), top_p=1.5)
  with pytest.raises(ValueError, match="leading batch dim"):
    decoding.greedy(fn, {"a": jnp.zeros((2,)), "b": jnp.zeros((3,))},
                    max_len=3, eos_id=EOS)
  with pytest.raises(ValueError, match="max_len=0"):
    decoding.greedy(fn, cache_for(1), max_len=0, eos_id=EOS)


def test_a_bounded_beam_search_reports_the_rows_it_finished():
  """max_steps < max_len: a row reported done has the full search's answer."""
  table = random_table(6, vocab=6)
  table[:, EOS] *= 10.0  # Short answers for some histories, long for others.
  table /= table.sum(axis=1, keepdims=True)
  seen = jnp.asarray(np.random.default_rng(0).random((8, 6)) < 0.4)  # Rows differ.
  kw = dict(beam_size=2, max_len=8, eos_id=EOS, alpha=0.6)
  full, full_scores, _, full_done = decoding.beam_search(
      repeat_penalty_fn(table), {"seen": seen}, **kw)
  short, scores, _, done = decoding.beam_search(
      repeat_penalty_fn(table), {"seen": seen}, max_steps=3, **kw)
  assert full_done.all() and short.shape == (8, 2, 3)
  assert 0 < done.sum() < 8, done  # Some rows finished within 3 steps, some not.
  np.testing.assert_array_equal(short[done], full[done][:, :, :3])
  assert not full[done][:, :, 3:].any()
  np.testing.assert_allclose(scores[done], full_scores[done], rtol=1e-6)
  with pytest.raises(ValueError, match="max_steps=9"):
    decoding.beam_search(repeat_penalty_fn(table), {"seen": seen}, max_steps=9, **kw)
