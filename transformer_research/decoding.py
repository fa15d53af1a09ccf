"""Autoregressive decoding over a `logits_fn` callback: greedy, beam, sampling.

Decoding never imports the model: it drives a callback

    logits, cache = logits_fn(tokens, cache)   # tokens [N] int32 -> logits [N, V] f32

where `cache` is any pytree whose leaves ALL have the leading dim N (keys and
values, the position index, ...). This keeps the search code testable with toy
callbacks and lets the same search drive an encoder-decoder (memory closed over
by the callback) or a decoder-only LM. Every search is one `jax.lax.while_loop`
that stops as soon as every sequence has emitted `eos_id` (or `max_len` tokens),
so the whole decode jit-compiles once per shape.

Conventions (as in `models/masks.py`): decoding starts from token 0 (the decoder
input is `shift_right(targets)`), the returned tokens exclude that start token,
and positions after a sequence's EOS hold the pad id 0. An optional `prompt`
[B, P] forces each row's first tokens (right-padded with 0, so rows may have
prompts of different lengths): an LM continues it inside the same loop, with
no separate prefill pass. Forced tokens are returned and add no log-prob.

Shape glossary: B batch, K beam size, L max_len (generated tokens), V vocab.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

PyTree = Any
LogitsFn = Callable[[jax.Array, PyTree], tuple[jax.Array, PyTree]]

# Large finite negative instead of -inf: beam scores are added and divided, and
# -inf - -inf would give NaN.
NEG_INF = -1.0e7
PAD_ID = 0


def _check(max_len: int, eos_id: int) -> None:
  if max_len < 1:
    raise ValueError(f"max_len={max_len!r}: expected an integer >= 1.")
  if eos_id < 1:
    raise ValueError(f"eos_id={eos_id!r}: expected a token id >= 1 (0 is pad).")


def _no_pad(x: jax.Array) -> jax.Array:
  """Rules out the pad id as a next token: [N, V] -> [N, V].

  Pad marks "after EOS" in the outputs and padding in the model's masks, so
  emitting it mid-sequence would be ambiguous. Only the choice is masked; the
  reported log-probabilities stay those of the model's full distribution.
  """
  return x.at[:, PAD_ID].set(NEG_INF)


def _batch_size(cache: PyTree, batch_size: int | None) -> int:
  """Reads N from the cache so callers cannot pass a mismatching batch size."""
  leaves = jax.tree.leaves(cache)
  if not leaves:
    if batch_size is None:
      raise ValueError("batch_size=None with an empty cache: expected an int.")
    return batch_size
  n = leaves[0].shape[0]
  for leaf in leaves:
    if leaf.ndim == 0 or leaf.shape[0] != n:
      raise ValueError(
          f"cache leaf of shape {leaf.shape}: expected every leaf to have the "
          f"leading batch dim {n}.")
  if batch_size is not None and batch_size != n:
    raise ValueError(
        f"batch_size={batch_size}: expected the cache's leading dim {n}.")
  return n


# ----------------------------------------------------------- greedy / sample


def _forced(prompt: jax.Array | None, step: jax.Array, n: int) -> jax.Array:
  """The prompt token to force at `step` for each of n rows; 0 = none."""
  if prompt is None:
    return jnp.zeros((n,), jnp.int32)
  padded = jnp.pad(prompt.astype(jnp.int32), ((0, 0), (0, 1)))  # [N, P+1]
  col = jnp.minimum(step, prompt.shape[1])
  return jax.lax.dynamic_index_in_dim(padded, col, axis=1, keepdims=False)


def _check_prompt(prompt: jax.Array | None, n: int, max_len: int) -> None:
  if prompt is None:
    return
  if prompt.ndim != 2 or prompt.shape[0] != n or prompt.shape[1] >= max_len:
    raise ValueError(
        f"prompt of shape {prompt.shape}: expected [{n}, P] with P < "
        f"max_len={max_len}, so at least one token is generated.")


def _decode_loop(logits_fn: LogitsFn, cache: PyTree, choose, max_len: int,
                 eos_id: int, batch_size: int,
                 prompt: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """One token per step for every row; `choose(logits, step)` picks it.

  Rows that already emitted EOS keep computing (the batch is fixed-shape) but
  their new tokens are forced to pad and add nothing to their log-probability.
  """
  b = batch_size
  tokens0 = jnp.zeros((b, max_len + 1), jnp.int32)  # [B, L+1], col 0 = start

  def cond(state):
    step, _, _, done, _ = state
    return (step < max_len) & ~jnp.all(done)

  def body(state):
    step, tokens, cache, done, logp = state
    prev = jax.lax.dynamic_index_in_dim(tokens, step, axis=1, keepdims=False)
    logits, cache = logits_fn(prev, cache)  # [B, V]
    logits = logits.astype(jnp.float32)
    forced = _forced(prompt, step, b)  # [B]
    nxt = choose(_no_pad(logits), step).astype(jnp.int32)  # [B]
    step_logp = jnp.take_along_axis(
        jax.nn.log_softmax(logits), nxt[:, None], axis=1)[:, 0]  # [B]
    free = ~done & (forced == PAD_ID)
    nxt = jnp.where(done, PAD_ID, jnp.where(free, nxt, forced))
    logp = logp + jnp.where(free, step_logp, 0.0)
    tokens = jax.lax.dynamic_update_slice(tokens, nxt[:, None], (0, step + 1))
    return step + 1, tokens, cache, done | (nxt == eos_id), logp

  state = (jnp.array(0, jnp.int32), tokens0, cache, jnp.zeros((b,), bool),
           jnp.zeros((b,), jnp.float32))
  _, tokens, _, _, logp = jax.lax.while_loop(cond, body, state)
  return tokens[:, 1:], logp


def greedy(logits_fn: LogitsFn, cache: PyTree, *, max_len: int, eos_id: int,
           prompt: jax.Array | None = None,
           batch_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Argmax decoding.

  Args:
    logits_fn: `(tokens [B] int32, cache) -> (logits [B, V], cache)`.
    cache: decoding state; every leaf has leading dim B.
    max_len: number of tokens to generate at most (L).
    eos_id: a row stops after emitting this id.
    prompt: optional [B, P] int32 tokens to force first (0 = free).
    batch_size: only needed when `cache` has no leaves.

  Returns:
    tokens [B, L] int32 (pad 0 after EOS) and their log-probability [B] f32.
  """
  _check(max_len, eos_id)
  b = _batch_size(cache, batch_size)
  _check_prompt(prompt, b, max_len)
  return _decode_loop(logits_fn, cache, _argmax, max_len, eos_id, b, prompt)


def _argmax(logits: jax.Array, step: jax.Array) -> jax.Array:
  """[N, V] -> [N]: the first largest entry, as jnp.argmax gives it.

  Through `top_k`, whose ties also go to the lower index: on CPU jnp.argmax
  is a variadic reduce about 4x slower than top_k's kernel, and it runs on
  every decode step.
  """
  del step
  return jax.lax.top_k(logits, 1)[1][:, 0]


def check_filters(top_k: int, top_p: float) -> None:
  """Raises ValueError for a top-k / top-p setting that `filter_logits` cannot apply."""
  if top_k < 0:
    raise ValueError(f"top_k={top_k!r}: expected an integer >= 0 (0 = off).")
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f"top_p={top_p!r}: expected a float in (0, 1].")


def filter_logits(logits: jax.Array, *, top_k: int = 0,
                  top_p: float = 1.0) -> jax.Array:
  """Masks logits outside the top-k / nucleus (top-p) set to NEG_INF.

  Top-p keeps the smallest set of most likely tokens whose probability mass
  reaches `top_p` (Holtzman et al., 2019); the most likely token always stays,
  so a row can never end up with nothing to sample.

  Args:
    logits: [B, V] float.
    top_k: keep the k largest logits; 0 disables.
    top_p: nucleus mass in (0, 1]; 1.0 disables.

  Returns:
    [B, V] logits with the filtered-out entries set to NEG_INF.
  """
  check_filters(top_k, top_p)
  if top_k and top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # [B, V]
    kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)  # [B, 1]
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


def sample(logits_fn: LogitsFn, cache: PyTree, rng: jax.Array, *, max_len: int,
           eos_id: int, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, prompt: jax.Array | None = None,
           batch_size: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Ancestral sampling with temperature, top-k and top-p filtering.

  The step's key is `fold_in(rng, step)`, so a fixed `rng` reproduces the same
  tokens however the loop is compiled.

  Returns:
    tokens [B, L] int32 (pad 0 after EOS) and their log-probability [B] under
    the unfiltered model distribution.
  """
  _check(max_len, eos_id)
  if not temperature > 0.0:
    raise ValueError(
        f"temperature={temperature!r}: expected > 0 (use greedy for argmax).")
  b = _batch_size(cache, batch_size)
  _check_prompt(prompt, b, max_len)

  def choose(logits, step):
    filtered = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(jax.random.fold_in(rng, step), filtered)

  return _decode_loop(logits_fn, cache, choose, max_len, eos_id, b, prompt)


def uncached_logits_fn(full_logits_fn: Callable[[jax.Array], jax.Array], *,
                       batch_size: int, max_len: int,
                       eos_id: int) -> tuple[LogitsFn, PyTree]:
  """A `logits_fn` that reruns the whole model on the prefix at every step.

  The reference the cached decoder must match token for token, and the
  baseline of bench/decode.py. Its "cache" is just the token history [N, L];
  positions not generated yet hold `eos_id`, a non-pad placeholder, because
  models derive padding masks from `targets > 0`; causal masking keeps those
  positions invisible to earlier ones.

  Args:
    full_logits_fn: tokens [N, L] -> logits [N, L, V], where position t
      predicts token t (teacher forcing with `shift_right` inside the model).
    batch_size: N.
    max_len: L.
    eos_id: the placeholder id.

  Returns:
    (logits_fn, initial cache) to pass to any search here.
  """
  cache = {"tokens": jnp.full((batch_size, max_len), eos_id, jnp.int32),
           "index": jnp.zeros((batch_size,), jnp.int32)}

  def logits_fn(prev, cache):
    i = cache["index"][0]  # Every row is at the same step.
    # prev is token i-1 (the start token 0 at i=0, which is not stored).
    tokens = jnp.where(i > 0, jax.lax.dynamic_update_slice(
        cache["tokens"], prev[:, None], (0, jnp.maximum(i - 1, 0))),
                       cache["tokens"])
    logits = jax.lax.dynamic_index_in_dim(full_logits_fn(tokens), i, axis=1,
                                          keepdims=False)  # [N, V]
    return logits, {"tokens": tokens, "index": cache["index"] + 1}

  return logits_fn, cache


# --------------------------------------------------------------- beam search


def brevity_penalty(alpha: float, length: jax.Array) -> jax.Array:
  """GNMT length penalty ((5 + |Y|) / 6) ** alpha (Wu et al., 2016, eq. 14)."""
  return jnp.power((5.0 + length) / 6.0, alpha)


def tile_beams(tree: PyTree, beam_size: int) -> PyTree:
  """[B, ...] -> [B * K, ...], each row repeated K times (batch-major).

  Use it for per-example context the callback closes over (encoder memory,
  source tokens): beams of one example share it, so it needs no reordering.
  """
  return jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=0), tree)


def _gather(tree: PyTree, beam_idx: jax.Array, k: int) -> PyTree:
  """Picks beams: leaves [B, K_old, ...] indexed by beam_idx [B, K].

  One gather of whole rows over the flattened [B * K_old] axis: a
  `take_along_axis` over axis 1 becomes, on CPU, a select over all K_old
  candidates for every element, which read the decoding cache K times a step.
  """
  b, k_new = beam_idx.shape
  def one(x):
    flat = (jnp.arange(b)[:, None] * x.shape[1] + beam_idx).reshape(-1)  # [B * K]
    rows = jnp.take(x.reshape((-1,) + x.shape[2:]), flat, axis=0, mode="clip")
    return rows.reshape((b, k_new) + x.shape[2:])
  return jax.tree.map(one, tree)


def _split(tree: PyTree, b: int, k: int) -> PyTree:
  return jax.tree.map(lambda x: x.reshape((b, k) + x.shape[1:]), tree)


def _merge(tree: PyTree, b: int, k: int) -> PyTree:
  return jax.tree.map(lambda x: x.reshape((b * k,) + x.shape[2:]), tree)


def beam_search(logits_fn: LogitsFn, cache: PyTree, *, beam_size: int,
                max_len: int, eos_id: int, alpha: float = 0.6,
                prompt: jax.Array | None = None,
                batch_size: int | None = None, max_steps: int | None = None
                ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Beam search with the GNMT length penalty, as in flax `examples/wmt`.

  Each step expands the K live beams over the vocabulary and keeps the 2K best
  candidates, so K of them survive even if K end here. As in Hugging Face's
  beam scorer, an EOS candidate enters the finished set only if it ranks among
  the top K: this makes `beam_size=1, alpha=0` exactly greedy decoding. A row
  stops once K hypotheses are finished and no live beam can beat the worst of
  them even with the largest length bonus. At `max_len` the live beams compete
  with the finished ones, so rows that never emit EOS still return beams.

  `max_steps` < `max_len` runs at most that many steps of the same search (the
  stopping rule still uses `max_len`'s bonus): a row whose rule held by then
  has its final answer, which `done` reports; the others need a full search.
  A first short pass then finishes most rows cheaply (see `batching.decode`).

  Args:
    logits_fn: `(tokens [B*K] int32, cache) -> (logits [B*K, V], cache)`; it
      must close over per-example context already tiled with `tile_beams`.
    cache: decoding state for B rows (leading dim B); it is tiled to B*K here
      and reordered by beam index every step.
    beam_size: K >= 1.
    max_len: number of tokens to generate at most (L).
    eos_id: end token.
    alpha: length-penalty exponent; 0 ranks by raw log-probability.
    prompt: optional [B, P] int32 tokens to force first (0 = free); the length
      penalty counts them.
    batch_size: only needed when `cache` has no leaves.
    max_steps: steps to run at most (default `max_len`); the cache must hold
      that many positions.

  Returns:
    tokens [B, K, S] int32 with S = `max_steps`, best first (pad 0 after EOS);
    length-penalised scores [B, K]; raw log-probabilities [B, K]; done [B]
    bool: the row's search is complete (always, when S = `max_len`).
  """
  _check(max_len, eos_id)
  if beam_size < 1:
    raise ValueError(f"beam_size={beam_size!r}: expected an integer >= 1.")
  if alpha < 0:
    raise ValueError(f"alpha={alpha!r}: expected a length penalty >= 0.")
  steps = max_len if max_steps is None else max_steps
  if not 1 <= steps <= max_len:
    raise ValueError(f"max_steps={max_steps!r}: expected 1 <= max_steps <= max_len={max_len}.")
  b, k = _batch_size(cache, batch_size), beam_size
  _check_prompt(prompt, b, max_len)
  prompt = None if prompt is None else tile_beams(prompt, k)  # [B*K, P]
  cache = _split(tile_beams(cache, k), b, k)  # leaves [B, K, ...]
  # Only beam 0 is live at the start, so the first top-k does not pick K
  # copies of the same token.
  live_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (b, 1))  # [B, K]
  state = dict(
      step=jnp.array(0, jnp.int32),
      live_seqs=jnp.zeros((b, k, steps + 1), jnp.int32),  # col 0 = start
      live_logp=live_logp,
      cache=cache,
      fin_seqs=jnp.zeros((b, k, steps + 1), jnp.int32),
      fin_scores=jnp.full((b, k), NEG_INF),
      fin_logp=jnp.full((b, k), NEG_INF),
      fin_flags=jnp.zeros((b, k), bool))
  max_bonus = brevity_penalty(alpha, float(max_len))

  def complete(s):
    # live_logp <= 0, so dividing by the largest penalty is the best a live
    # beam could still score; once no live beam can beat the worst finished
    # one, later steps change nothing in the answer.
    best_live = s["live_logp"][:, 0] / max_bonus  # [B]
    worst_fin = jnp.where(s["fin_flags"].all(axis=1),
                          s["fin_scores"].min(axis=1), NEG_INF)  # [B]
    return (worst_fin >= best_live) | (s["step"] >= max_len)

  def cond(s):
    return (s["step"] < steps) & ~jnp.all(complete(s))

  def body(s):
    step = s["step"]
    prev = jax.lax.dynamic_index_in_dim(s["live_seqs"], step, axis=2,
                                        keepdims=False)  # [B, K]
    logits, cache = logits_fn(prev.reshape(b * k), _merge(s["cache"], b, k))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))  # [B*K, V]
    v = logp.shape[-1]
    # A forced token costs nothing and every other token is ruled out, so
    # beams stay in lockstep through the prompt.
    forced = _forced(prompt, step, b * k)[:, None]  # [B*K, 1]
    one_hot = jnp.where(jnp.arange(v)[None, :] == forced, 0.0, NEG_INF)
    logp = jnp.where(forced != PAD_ID, one_hot, logp).reshape(b, k, v)
    cand_logp = (s["live_logp"][:, :, None] + _no_pad(logp.reshape(b * k, v))
                 .reshape(b, k, v)).reshape(b, k * v)
    top_logp, top_idx = jax.lax.top_k(cand_logp, 2 * k)  # [B, 2K]
    top_beam, top_tok = top_idx // v, (top_idx % v).astype(jnp.int32)
    top_seqs = _gather(s["live_seqs"], top_beam, k)  # [B, 2K, L+1]
    top_seqs = jax.lax.dynamic_update_slice(
        top_seqs, top_tok[:, :, None], (0, 0, step + 1))
    is_eos = top_tok == eos_id  # [B, 2K]

    # Live set: the K best candidates that did not just end.
    alive_logp = jnp.where(is_eos, NEG_INF, top_logp)
    keep_logp, keep = jax.lax.top_k(alive_logp, k)  # [B, K] into 2K
    new_live_seqs = _gather(top_seqs, keep, k)
    new_cache = _gather(_split(cache, b, k), _gather(top_beam, keep, k), k)

    # Finished set: old finished plus EOS candidates ranked in the top K.
    ends = is_eos & (jnp.arange(2 * k) < k)[None, :]
    scores = top_logp / brevity_penalty(alpha, (step + 1).astype(jnp.float32))
    scores = jnp.where(ends, scores, NEG_INF)
    all_scores = jnp.concatenate([s["fin_scores"], scores], axis=1)  # [B, 3K]
    fin_scores, pick = jax.lax.top_k(all_scores, k)
    fin = _gather(
        (jnp.concatenate([s["fin_seqs"], top_seqs], axis=1),
         jnp.concatenate([s["fin_logp"], top_logp], axis=1),
         jnp.concatenate([s["fin_flags"], ends], axis=1)), pick, k)
    return dict(step=step + 1, live_seqs=new_live_seqs, live_logp=keep_logp,
                cache=new_cache, fin_seqs=fin[0], fin_scores=fin_scores,
                fin_logp=fin[1], fin_flags=fin[2])

  s = jax.lax.while_loop(cond, body, state)
  # Live beams compete at the end, scored at their full length: a row with no
  # finished hypothesis (or better unfinished ones) still gets K answers.
  live_scores = jnp.where(s["live_logp"] <= NEG_INF / 2, NEG_INF,
                          s["live_logp"] / brevity_penalty(
                              alpha, s["step"].astype(jnp.float32)))
  all_scores = jnp.concatenate([s["fin_scores"], live_scores], axis=1)
  scores, pick = jax.lax.top_k(all_scores, k)  # [B, K]
  seqs, logp = _gather(
      (jnp.concatenate([s["fin_seqs"], s["live_seqs"]], axis=1),
       jnp.concatenate([s["fin_logp"], s["live_logp"]], axis=1)), pick, k)
  return seqs[:, :, 1:], scores, logp, complete(s)
