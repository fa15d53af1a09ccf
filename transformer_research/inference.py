"""A trained model as a function of text: cached decoding in fixed-shape batches.

`make_generate_fn` is where a `models.Model` meets `decoding`: it turns the
model's `decode_context` / `init_cache` / `decode_step` into the `logits_fn`
callback the searches drive, so the encoder and the cross-attention keys and
values run once per source and the decoder one cached step per token. `cached=False` drives the same searches with a full forward pass
per step instead: the reference for tests and the baseline for
bench/decode.py. `translate` / `continue_prompts` / `generate_text` work on
text in length-sorted batches padded to a few bucket widths (`batching`;
multi-host: each process feeds its rows of a batch, the tokens are
all-gathered). They take an `experiment.Experiment`
(tokenizers, mesh, compiled decoders) and its parameters; `experiment.load_run`
restores both from a run directory. `classify` / `label_texts` batch a
classifier's texts the same way, one forward pass a batch.
"""

from typing import Any, Callable, Sequence

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from transformer_research import batching
from transformer_research import decoding
from transformer_research import sharding
from transformer_research.data import tasks

GENERATIVE_KINDS = ("seq2seq", "lm")


def check_can_generate(kind: str, what: str = "generate text") -> None:
  """A classifier has no decoder: say so before anything is compiled."""
  if kind not in GENERATIVE_KINDS:
    raise ValueError(
        f"model kind={kind!r} cannot {what}; expected a kind in "
        f"{list(GENERATIVE_KINDS)} (a classifier labels texts: `label_texts`, as "
        "translate.py does for a classifier run).")


def make_generate_fn(model: Any, *, eos_id: int, max_len: int, beam_size: int = 1,
                     alpha: float = 0.6, temperature: float = 0.0, top_k: int = 0,
                     top_p: float = 1.0, cached: bool = True,
                     max_steps: int | None = None) -> Callable:
  """A jitted `generate(params, inputs, rng=None) -> (tokens, log_probs, done)`.

  `Experiment.generate_fn` keeps one per settings, so an eval every N steps
  reuses one compiled decoder instead of tracing a new one each time.

  Args:
    model: a `models.Model` of kind "seq2seq" or "lm".
    eos_id: the target tokenizer's EOS.
    max_len: L, tokens generated at most (prompt included for an LM).
    beam_size: 1 = greedy (or sampling); > 1 = beam search, best beam kept.
    alpha: GNMT length penalty of beam search.
    temperature: 0 = argmax / beam; > 0 = sampling with top_k / top_p.
    top_k, top_p: sampling filters (0 / 1.0 = off).
    cached: False reruns the full model on the prefix every step.
    max_steps: run at most this many steps (a first, cheap pass; the cache
      holds only that many positions); default `max_len`. A row reported done
      has the answer a full decode gives; the others need one.

  Returns:
    generate: `inputs` is the source [B, S] (seq2seq) or the prompt [B, P]
    right-padded with 0 (lm); returns tokens [B, max_steps] int32 (the prompt
    then its continuation for an LM; pad 0 after EOS), log-probs [B] and done
    [B] bool (greedy and sampling: EOS emitted; beam: the search is complete).
  """
  check_can_generate(model.kind)
  if beam_size > 1 and temperature > 0:
    raise ValueError(f"beam_size={beam_size} with temperature={temperature}: "
                     "expected beam search (temperature=0) or sampling "
                     "(beam_size=1), not both.")
  k, steps = beam_size, max_steps or max_len

  def generate(params, inputs, rng=None):
    b = inputs.shape[0]
    prompt = None
    if model.kind == "seq2seq":
      # The encoder and every layer's cross-attention keys and values, once per
      # source; the K beams of a source (rows of the callback, [B*K]) share it.
      # The barrier makes XLA lay the keys and values out here, once: without
      # it XLA moved their head-major transposes into the decode loop, and every
      # step copied every layer's cross-attention keys and values (on CPU).
      context = jax.lax.optimization_barrier(model.decode_context(params, inputs))
      step = lambda tok, cache: model.decode_step(params, tok, cache, context)
      source = decoding.tile_beams(inputs, k)  # [B*K, S]
      full = lambda toks: model.apply(params, None, {"inputs": source, "targets": toks})
    else:
      prompt = inputs
      step = lambda tok, cache: model.decode_step(params, tok, cache)
      full = lambda toks: model.apply(params, None, {"targets": toks})
    if cached:
      logits_fn, cache = step, model.init_cache(b, steps)
    else:
      logits_fn, cache = decoding.uncached_logits_fn(
          full, batch_size=b, max_len=steps, eos_id=eos_id)
    common = dict(eos_id=eos_id, prompt=prompt)
    if k > 1:
      tokens, _, log_probs, done = decoding.beam_search(
          logits_fn, cache, beam_size=k, alpha=alpha, max_len=max_len, max_steps=steps,
          **common)
      return tokens[:, 0], log_probs[:, 0], done
    if temperature > 0:
      tokens, log_probs = decoding.sample(logits_fn, cache, rng, temperature=temperature,
                                          top_k=top_k, top_p=top_p, max_len=steps, **common)
    else:  # Greedy tokens up to EOS do not depend on how far the loop may go.
      tokens, log_probs = decoding.greedy(logits_fn, cache, max_len=steps, **common)
    return tokens, log_probs, (steps == max_len) | jnp.any(tokens == eos_id, axis=1)

  return jax.jit(generate)


def translate(exp: Any, params: Any, sources: Sequence[str], *,
              beam_size: int | None = None, max_len: int | None = None,
              batch_size: int | None = None) -> list[str]:
  """Translates `sources` (seq2seq); returns text.

  A source longer than `data.max_input_len` is cut, with one warning saying
  how many were; decoding is `translate_ids`.

  Args:
    exp: the run's `experiment.Experiment` (config, tokenizers, mesh).
    params: its parameters.
    sources: source sentences.
    beam_size, max_len, batch_size: default from `config.eval`.

  Every process must call this with the same `sources` (each feeds only its
  rows of every batch).
  """
  task = exp.task
  check_can_generate(task.kind, "translate")
  width = exp.config.data.max_input_len
  rows = batching.cut_to([task.encode_inputs(s) for s in sources], width,
                         f"data.max_input_len={width}")
  tokens = translate_ids(exp, params, rows, beam_size=beam_size, max_len=max_len,
                         batch_size=batch_size)
  return [task.target_tokenizer.decode(t) for t in tokens]


def translate_ids(exp: Any, params: Any, rows: Sequence[Sequence[int]], *,
                  beam_size: int | None = None, max_len: int | None = None,
                  batch_size: int | None = None) -> list[list[int]]:
  """Decoded token ids (pad 0 after EOS) of source rows of at most
  `data.max_input_len` ids, as translate.py decodes them: length-sorted
  batches padded to bucket widths, a short first pass, the unfinished rows
  again in full (`batching.decode`). Defaults from `config.eval`.
  """
  c, e = exp.config, exp.config.eval
  eos_id = exp.task.target_tokenizer.eos_id
  beam_size = beam_size or e.beam_size
  max_len = max_len or (e.max_decode_len if e.max_decode_len > 0 else c.data.max_target_len)

  def generate(x, number: int, first: bool):
    del number
    steps = batching.first_pass_steps(x.shape[1], max_len) if first else max_len
    fn = exp.generate_fn(eos_id=eos_id, max_len=max_len, beam_size=beam_size,
                         alpha=e.length_penalty, max_steps=None if steps == max_len else steps)
    tokens, _, done = fn(params, x)
    return tokens, done

  return _decode(generate, rows, batching.bucket_widths(c.data.max_input_len),
                 batch_size or e.batch_size, exp.mesh)


def continue_prompts(exp: Any, params: Any, prompts: Sequence[str], *, max_len: int,
                     batch_size: int = 16, temperature: float = 0.0, top_k: int = 0,
                     top_p: float = 1.0, beam_size: int = 1,
                     rng: jax.Array | None = None) -> list[str]:
  """LM: continues each prompt; returns the continuations' text only."""
  check_can_generate(exp.kind, "continue a prompt")
  tok = exp.task.target_tokenizer
  rows = [tok.encode(p) for p in prompts]
  width = max(len(r) for r in rows)
  if width >= max_len:
    raise ValueError(f"max_length={max_len}: expected more than the longest prompt "
                     f"({width} tokens).")
  fn = exp.generate_fn(eos_id=tok.eos_id, max_len=max_len, beam_size=beam_size,
                       temperature=temperature, top_k=top_k, top_p=top_p)
  rng = jax.random.key(0) if rng is None else rng

  def generate(x, number: int, first: bool):
    del first  # One full pass (no max_steps: every row is done), as a continuation
    # may run to max_len. Each batch its own key: with one key for all, every
    # batch would draw the same numbers, and equal prompts the same text.
    tokens, _, done = fn(params, x, jax.random.fold_in(rng, number))
    return tokens, done

  tokens = _decode(generate, rows, batching.bucket_widths(width), batch_size, exp.mesh)
  return [tok.decode(t[len(r):]) for t, r in zip(tokens, rows)]


def _decode(generate, rows: list[list[int]], widths: Sequence[int], batch_size: int,
            mesh: jax.sharding.Mesh) -> list[list[int]]:
  """`batching.decode` with `generate(global batch, number, first) -> (tokens, done)`
  run on the mesh (`_on_mesh`), so every process gets every row's tokens."""
  _check_batch_size(batch_size, mesh)
  run = lambda batch, number, first: _on_mesh(lambda x: generate(x, number, first), batch, mesh)
  return [t.tolist() for t in batching.decode(rows, widths, batch_size, run)]


def _check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
  if batch_size % jax.process_count() or batch_size % sharding.batch_shards(mesh):
    raise ValueError(f"batch_size={batch_size}: expected a multiple of the "
                     f"{jax.process_count()} processes and of the mesh's batch shards.")


def _on_mesh(fn: Callable[[jax.Array], tuple[jax.Array, ...]], batch: np.ndarray,
             mesh: jax.sharding.Mesh) -> tuple[np.ndarray, ...]:
  """fn(global batch) with each process feeding its rows of `batch` (every
  process holds the whole batch), its outputs all-gathered to every process."""
  local = batch.shape[0] // jax.process_count()
  mine = batch[jax.process_index() * local:][:local]  # This process's rows.
  out = fn(sharding.global_batch({"x": mine}, mesh)["x"])
  return tuple(np.asarray(multihost_utils.process_allgather(x, tiled=True)) for x in out)


def classify(exp: Any, params: Any, texts: Sequence[str], *, batch_size: int) -> np.ndarray:
  """Class probabilities [len(texts), classes] of a classifier run.

  Each text is read as its training batches read it (`Task.classifier_inputs`:
  cut to `data.max_input_len` by `data.truncation`); batches are length-sorted
  and padded to bucket widths, which changes no probability (padding is masked
  out of attention and pooling). Every process must call this with the same
  `texts`.
  """
  if exp.kind != "classify":
    raise ValueError(f"model kind={exp.kind!r} predicts no class; expected a classifier run")
  _check_batch_size(batch_size, exp.mesh)
  rows = [exp.task.classifier_inputs(t) for t in texts]
  widths = batching.bucket_widths(exp.config.data.max_input_len)
  probabilities = np.zeros((len(rows), exp.task.num_classes), np.float32)
  for indices, width in batching.plan([len(r) for r in rows], batch_size, widths):
    batch = batching.pad(rows, indices, batch_size, width)
    out, = _on_mesh(lambda x: (exp.class_probabilities(params, x),), batch, exp.mesh)
    probabilities[indices] = out[:len(indices)]
  return probabilities


def check_beam_size(beam_size: int | None) -> None:
  """A beam size a user asked for (None: the run's default): 0 must not read as
  "not given", as `beam_size or config.eval.beam_size` would take it."""
  if beam_size is not None and beam_size < 1:
    raise ValueError(f"beam_size={beam_size}: expected 1 (greedy) or more")


def _batch_size_for(exp: Any, count: int) -> int:
  """Rows per batch for `count` texts: `eval.batch_size`, or fewer for a small
  input, a multiple of the processes and the mesh's batch shards."""
  shards = sharding.batch_shards(exp.mesh) * jax.process_count()
  return batching.batch_size_for(count, exp.config.eval.batch_size, shards)


def label_texts(exp: Any, params: Any, texts: Sequence[str]) -> list[str]:
  """`label<TAB>probability` of each text for a classifier run ("" for a blank
  text): the most likely class, by its name (`tasks.class_labels`), and the
  probability the model gives it."""
  names = tasks.class_labels(exp.config.data)

  def run(chosen: list[str]) -> list[str]:
    probabilities = classify(exp, params, chosen, batch_size=_batch_size_for(exp, len(chosen)))
    return [f"{names[k]}\t{p[k]:.4f}" for p, k in zip(probabilities, probabilities.argmax(1))]

  return batching.on_non_blank(texts, run)


def generate_text(exp: Any, params: Any, texts: Sequence[str], *, beam_size: int | None = None,
                  max_len: int | None = None, temperature: float = 0.0, top_k: int = 0,
                  top_p: float = 1.0, seed: int = 0) -> list[str]:
  """Translations (seq2seq) or continuations (lm) of `texts`, one per text.

  `exp` is the run's `experiment.Experiment`, `params` its parameters. Blank
  texts give "" without decoding. Batches are as small as the input allows
  (a multiple of the mesh's batch shards), so one sentence does not pay for
  `config.eval.batch_size` rows.

  Raises:
    ValueError: a classifier run, or no non-blank text.
  """
  check_can_generate(exp.kind, "translate or continue text")
  check_beam_size(beam_size)
  if max_len is not None and max_len < 1:
    raise ValueError(f"max_length={max_len}: expected 1 or more tokens")
  if exp.kind == "seq2seq" and (temperature or top_k or top_p != 1):
    raise ValueError(f"temperature={temperature}, top_k={top_k}, top_p={top_p}: expected "
                     "the defaults for translation (beam search); sampling is for language "
                     "models.")
  if temperature < 0:
    raise ValueError(f"temperature={temperature}: expected 0 (greedy) or more")
  decoding.check_filters(top_k, top_p)
  if temperature == 0 and (top_k or top_p < 1):  # Greedy would ignore them without a word.
    raise ValueError(f"top_k={top_k}, top_p={top_p} filter sampled tokens: expected a "
                     "temperature > 0 with them (0 = greedy)")

  def run(chosen: list[str]) -> list[str]:
    batch_size = _batch_size_for(exp, len(chosen))
    if exp.kind == "seq2seq":
      return translate(exp, params, chosen, beam_size=beam_size, max_len=max_len,
                       batch_size=batch_size)
    return continue_prompts(exp, params, chosen, max_len=max_len or exp.config.data.max_target_len,
                            batch_size=batch_size, temperature=temperature, top_k=top_k,
                            top_p=top_p, beam_size=beam_size or 1, rng=jax.random.key(seed))

  return batching.on_non_blank(texts, run)
