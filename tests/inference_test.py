"""Cached decoding of real (tiny, random) models against full recomputation.

The naive decoder reruns `model.apply` on the whole prefix every step, so any
mistake in the key/value cache, the positions or the memory mask shows up as
a different token. One test reads the compiled decode loop: what a step copies.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_research import inference
from transformer_research import models
from transformer_research.configs import base

EOS, VOCAB, MAX_LEN = 1, 13, 8
SAMPLING = dict(eos_id=EOS, max_len=MAX_LEN, temperature=1.0, top_p=0.95)


def model_config(positions: str = "sinusoidal", scan_layers: bool = False):
  c = base.get_config().model
  c.variant, c.positions, c.scan_layers = "tiny", positions, scan_layers
  return c


# Both layouts: Python-unrolled blocks (layer_XX caches) and one scanned
# hk.layer_stack (a stacked cache sliced per layer).
@pytest.fixture(scope="module", params=["seq2seq", "lm", "seq2seq/scanned", "lm/scanned"])
def setup(request):
  """A tiny random model and its inputs: sources with padding, or prompts."""
  kind, scanned = request.param.split("/")[0], request.param.endswith("/scanned")
  positions = "rope" if kind == "lm" else "sinusoidal"
  model = models.build(model_config(positions, scanned), kind, input_vocab_size=VOCAB,
                       target_vocab_size=VOCAB)
  rng = np.random.default_rng(0)
  if kind == "seq2seq":
    inputs = rng.integers(2, VOCAB, size=(4, 6)).astype(np.int32)
    inputs[1, 4:] = inputs[3, 2:] = 0  # Padded sources.
    batch = {"inputs": inputs, "targets": inputs}
  else:
    inputs = rng.integers(2, VOCAB, size=(4, 3)).astype(np.int32)
    inputs[1, 1:] = inputs[2, 2:] = 0  # Prompts of 3, 1, 2 and 3 tokens.
    batch = {"targets": inputs}
  params = model.init(jax.random.key(2), batch)
  # Random init gives near-uniform logits; larger weights make the
  # distributions peaked enough for search choices to matter.
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, params)
  return model, params, jnp.asarray(inputs)


def generate(model, params, inputs, **kw):
  fn = inference.make_generate_fn(model, eos_id=EOS, max_len=MAX_LEN, **kw)
  tokens, log_probs, done = fn(params, inputs)
  assert np.asarray(done).all()  # A full decode finishes every row.
  return np.asarray(tokens), np.asarray(log_probs)


def teacher_forced_log_prob(model, params, inputs, tokens) -> np.ndarray:
  """log p(tokens) from one full forward pass, prompt tokens excluded."""
  batch = {"targets": jnp.asarray(tokens)}
  if model.kind == "seq2seq":
    batch["inputs"] = inputs
  logp = jax.nn.log_softmax(model.apply(params, None, batch))  # [B, L, V]
  picked = np.take_along_axis(np.asarray(logp), tokens[..., None], axis=-1)[..., 0]
  free = tokens > 0
  if model.kind == "lm":
    free[:, :inputs.shape[1]] &= np.asarray(inputs) == 0  # Forced prompt.
  return (picked * free).sum(axis=1)


def test_cached_greedy_equals_full_recompute(setup):
  model, params, inputs = setup
  cached, cached_logp = generate(model, params, inputs)
  naive, naive_logp = generate(model, params, inputs, cached=False)
  np.testing.assert_array_equal(cached, naive)
  np.testing.assert_allclose(cached_logp, naive_logp, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      cached_logp, teacher_forced_log_prob(model, params, inputs, cached),
      rtol=1e-4, atol=1e-4)
  if model.kind == "lm":  # The prompt comes back first.
    np.testing.assert_array_equal(cached[:, :3][inputs > 0], np.asarray(inputs)[inputs > 0])


def test_cached_sampling_equals_full_recompute(setup):
  """Random models decode greedily into repetitive strings; samples are
  varied, so they check the cache along many different histories."""
  model, params, inputs = setup
  inputs = jnp.tile(inputs, (4, 1))  # [16, ...]
  rng = jax.random.key(4)
  cached, cached_logp, _ = inference.make_generate_fn(model, **SAMPLING)(params, inputs, rng)
  naive, naive_logp, _ = inference.make_generate_fn(model, cached=False, **SAMPLING)(
      params, inputs, rng)
  np.testing.assert_array_equal(cached, naive)
  np.testing.assert_allclose(cached_logp, naive_logp, rtol=1e-4, atol=1e-4)
  assert len({tuple(row) for row in np.asarray(cached)}) >= 4, "samples too alike"
  # Same rng, same samples; another rng, other samples.
  again = inference.make_generate_fn(model, **SAMPLING)(params, inputs, rng)[0]
  np.testing.assert_array_equal(again, cached)
  other = inference.make_generate_fn(model, **SAMPLING)(params, inputs, jax.random.key(5))[0]
  assert not np.array_equal(other, cached)


@pytest.mark.slow
def test_cached_beam_search_equals_full_recompute(setup):
  model, params, inputs = setup
  cached, _ = generate(model, params, inputs, beam_size=3)
  naive, _ = generate(model, params, inputs, beam_size=3, cached=False)
  np.testing.assert_array_equal(cached, naive)


def test_beam_size_one_is_greedy(setup):
  model, params, inputs = setup
  greedy, greedy_logp = generate(model, params, inputs)
  beam, beam_logp = generate(model, params, inputs, beam_size=1, alpha=0.0)
  np.testing.assert_array_equal(beam, greedy)
  np.testing.assert_allclose(beam_logp, greedy_logp, rtol=1e-5, atol=1e-5)


def test_beam_search_log_prob_at_least_greedy(setup):
  model, params, inputs = setup
  greedy, _ = generate(model, params, inputs)
  beam, _ = generate(model, params, inputs, beam_size=4, alpha=0.0)
  greedy_score = teacher_forced_log_prob(model, params, inputs, greedy)
  beam_score = teacher_forced_log_prob(model, params, inputs, beam)
  assert np.all(beam_score >= greedy_score - 1e-4), (beam_score, greedy_score)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_a_short_first_pass_keeps_only_rows_a_full_decode_agrees_with(beam_size):
  """max_steps: the rows reported done are what the full decode gives. A random
  LM ends some of 32 prompts' continuations within 5 steps and not others."""
  model = models.build(model_config("rope"), "lm", target_vocab_size=VOCAB)
  prompts = jnp.asarray(np.random.default_rng(0).integers(2, VOCAB, (32, 3)), jnp.int32)
  params = model.init(jax.random.key(2), {"targets": prompts})
  params = jax.tree.map(lambda x: x * 3.0 if x.ndim >= 2 else x, params)
  full, _ = generate(model, params, prompts, beam_size=beam_size)
  fn = inference.make_generate_fn(model, eos_id=EOS, max_len=MAX_LEN, beam_size=beam_size,
                                  max_steps=5)
  short, _, done = (np.asarray(x) for x in fn(params, prompts))
  assert short.shape == (32, 5) and 0 < done.sum() < 32, done
  np.testing.assert_array_equal(short[done], full[done][:, :5])
  assert not full[done][:, 5:].any()


def test_classifier_cannot_generate():
  model = models.build(model_config(), "classify", input_vocab_size=VOCAB, num_classes=2)
  with pytest.raises(ValueError, match="kind='classify' cannot generate"):
    inference.make_generate_fn(model, eos_id=EOS, max_len=MAX_LEN)


def test_beam_with_sampling_is_refused(setup):
  model, _, _ = setup
  with pytest.raises(ValueError, match="beam_size=4 with temperature=0.7"):
    inference.make_generate_fn(model, eos_id=EOS, max_len=MAX_LEN, beam_size=4,
                               temperature=0.7)


def _while_body(hlo: str) -> str:
  """The text of the (one) while loop body in a compiled module's HLO."""
  body = re.search(r"body=(%[\w.\-]+)", hlo).group(1)
  start = hlo.index(f"\n{body} ")
  return hlo[start:hlo.index("\n}\n", start)]


@pytest.mark.parametrize("beam_size", [1, 4])
def test_the_decode_loop_reads_the_cross_attention_keys_as_they_were_laid_out(beam_size):
  """Keys and values of the source are laid out once, before the loop: no step
  transposes or copies them (XLA used to move that transpose into the loop,
  one copy of every layer's keys and values per step). Unrolled layers only:
  a scanned stack slices each layer's keys out of the stacked ones per step."""
  model = models.build(model_config(), "seq2seq", input_vocab_size=VOCAB,
                       target_vocab_size=VOCAB)
  sources = jnp.asarray(np.random.default_rng(0).integers(2, VOCAB, (3, 5)), jnp.int32)
  params = model.init(jax.random.key(0), {"inputs": sources, "targets": sources})
  fn = inference.make_generate_fn(model, eos_id=EOS, max_len=MAX_LEN, beam_size=beam_size)
  body = _while_body(fn.lower(params, sources).compile().as_text())
  heads = model.sizes.num_heads
  kv_dims = sorted((3, 5, heads, model.sizes.d_model // heads))  # [B, S, H, Dh] in any order
  written = [line.split(" = ")[0].strip() for line in body.splitlines()
             if (m := re.search(r" = f32\[([\d,]+)\]\{[\d,]*\} (\w[\w-]*)\(", line))
             and sorted(map(int, m.group(1).split(","))) == kv_dims
             and m.group(2) not in ("get-tuple-element", "bitcast", "parameter")]
  assert len(re.findall(r"cross_attn/.*dot_general", body)) >= 2 * model.sizes.num_decoder_layers
  assert not written, written
