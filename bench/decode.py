"""Decoding speed: cached greedy and beam-4 on fixed shapes, real lengths and a whole split.

    python bench/decode.py [--config=configs/wmt_spa.py] [--spa_eng_zip=PATH] [--workdir=RUN]
        [--tables=fixed,step,ops,lengths,split] [--max_len=32] [--batch_size=32] [--source_len=32]
        [--batch_sizes=32,256] [--num_sentences=512] [--repeats=3] [--naive_beam]

Prints the config, the device and five tables:

* fixed: one batch of `--batch_size` random sources padded to `--source_len`
  (about half of it real tokens), decoded to `--max_len` tokens by
  - cached greedy / beam-4: `decode_context` once (encoder and every layer's
    cross-attention keys and values), then one cached decoder step a token;
  - naive greedy (/ beam-4 with --naive_beam): `model.apply` on the whole
    source and target prefix at every step, as a decoder without a cache must.
  The shapes of the README's first decode figure, so old and new code compare.
* step: the time of one step of cached greedy and beam-4 on the fixed
  batch (from decodes of `--max_len` steps and of one), its FLOP/s (XLA's
  count for the decoder step), and the time of the matmuls a step must do,
  each jitted alone at the same shapes (less the cost of a jitted call): the
  rest is everything else.
* ops: where a step's time goes, from a `jax.profiler` trace of one
  decode of the fixed batch: the time per step of each kind of operation
  (named by the HLO's op_name) and of the slowest operations.
* lengths: sentences/s and tokens/s of cached greedy and beam-4 at each of
  `--batch_sizes`, on `--num_sentences` sources with real lengths, batched as
  translate.py batches them (`batching`: sorted by length, padded to bucket
  widths; a trained run decodes as translate.py does, first pass included). The lengths are those of English test sentences of spa-eng
  (`--spa_eng_zip`) under the run's tokenizer (`--workdir`) or one trained
  here on 50k training sentences; without the archive, lengths drawn from a
  log-normal fit to those (median 8, 95th percentile 15 tokens).
* split (needs `--spa_eng_zip` and `--workdir`): wall time, compilation
  included, of `inference.translate` on every English sentence of the test
  split (15,336), greedy and beam 4, at batch max(--batch_sizes): what
  launch/evaluate.py --num_examples=-1 spends decoding.

Without `--workdir` the parameters are random (speed does not depend on
their values; vocabulary sizes come from the config). A random model almost
never emits EOS, so every row runs all `--max_len` steps: those figures are
per full-length sentence. A trained run stops at its EOS, as in use. Timed
figures exclude compilation (one warm-up pass); the best of `--repeats`.
"""

import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
import zipfile

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from transformer_research import batching
from transformer_research import experiment
from transformer_research import inference
from transformer_research import runtime
from transformer_research.data import tokenizers

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "wmt_spa.py"),
    "Config whose model is benchmarked (ignored with --workdir).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run: its config, parameters and "
                               "tokenizer instead of random ones.")
_ZIP = flags.DEFINE_string("spa_eng_zip", None, "spa-eng.zip: real sentences for the "
                           "lengths and split tables.")
_TABLES = flags.DEFINE_list("tables", ["fixed", "step", "ops", "lengths", "split"],
                            "Tables to print.")
_MAX_LEN = flags.DEFINE_integer("max_len", 32, "Tokens generated per sentence (fixed, lengths).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sentences decoded together (fixed).")
_SOURCE_LEN = flags.DEFINE_integer("source_len", 32, "Padded source length (fixed; about "
                                   "half of it real tokens).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["32", "256"], "Batch sizes (lengths, split).")
_NUM = flags.DEFINE_integer("num_sentences", 512, "Sentences per setting (lengths).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per method.")
_NAIVE_BEAM = flags.DEFINE_bool("naive_beam", False, "Also time naive beam-4 (slow).")


def best_time(fn, repeats: int):
  """(fastest seconds of `repeats` calls after a warm-up call, its result)."""
  jax.block_until_ready(fn())
  best, result = float("inf"), None
  for _ in range(repeats):
    start = time.perf_counter()
    result = jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best, result


def fixed_table(exp, params, eos: int) -> None:
  rng = np.random.default_rng(0)
  b, s = _BATCH.value, _SOURCE_LEN.value
  inputs = rng.integers(2, exp.vocab.input, (b, s)).astype(np.int32)
  for i, n in enumerate(rng.integers(s // 4, 3 * s // 4 + 1, b)):
    inputs[i, n:] = 0  # Sentences of different lengths, padded.
  print(f"\nfixed: batch={b} source_len={s} max_len={_MAX_LEN.value}")
  methods = [("cached greedy", dict(beam_size=1, cached=True)),
             ("cached beam-4", dict(beam_size=4, cached=True)),
             ("naive greedy", dict(beam_size=1, cached=False))]
  if _NAIVE_BEAM.value:
    methods.append(("naive beam-4", dict(beam_size=4, cached=False)))
  results = {}
  print(f"{'method':<15} {'sec/batch':>10} {'sentences/s':>12} {'tokens/s':>10}")
  for name, kw in methods:
    generate = exp.generate_fn(eos_id=eos, max_len=_MAX_LEN.value, alpha=0.6, **kw)
    seconds, (tokens, _, _) = best_time(lambda: generate(params, inputs), _REPEATS.value)
    results[name] = seconds
    made = int((np.asarray(tokens) > 0).sum())
    print(f"{name:<15} {seconds:>10.3f} {b / seconds:>12.1f} {made / seconds:>10.0f}")
  print(f"cached greedy is {results['naive greedy'] / results['cached greedy']:.1f}x naive greedy")
  if "naive beam-4" in results:
    print(f"cached beam-4 is {results['naive beam-4'] / results['cached beam-4']:.1f}x "
          "naive beam-4")


def step_table(exp, params, eos: int) -> None:
  sizes, c = exp.model.sizes, exp.config
  d, ff, vocab = sizes.d_model, sizes.d_ff, exp.vocab.target
  projections = [(d, 3 * d)] if c.model.fused_qkv else [(d, d)] * 3  # Self-attention q, k, v.
  layer = projections + [(d, d)] * 3 + [(d, ff), (ff, d)]  # Outputs, cross query, feed-forward.
  rng = np.random.default_rng(0)
  b, s, steps = _BATCH.value, _SOURCE_LEN.value, _MAX_LEN.value
  inputs = rng.integers(2, exp.vocab.input, (b, s)).astype(np.int32)
  print(f"\nstep: one step of the decode loop = (time of {steps} steps - time of 1) / "
        f"{steps - 1}, batch={b} source_len={s}; matmuls: {sizes.num_decoder_layers} x "
        f"{layer} + [{d}, {vocab}] at the step's rows, each jitted alone")
  print(f"{'method':<15} {'rows':>5} {'step ms':>8} {'GFLOP/s':>8} {'matmuls ms':>11} "
        f"{'rest ms':>8}")
  for name, beam in (("cached greedy", 1), ("cached beam-4", 4)):
    rows = b * beam
    timed = [best_time(lambda n=n: exp.generate_fn(eos_id=eos, max_len=n, beam_size=beam)(
        params, inputs), _REPEATS.value)[0] for n in (1, steps)]
    seconds = (timed[1] - timed[0]) / (steps - 1)
    context = jax.jit(exp.model.decode_context)(params, inputs)
    step = jax.jit(exp.model.decode_step).lower(
        params, np.ones((rows,), np.int32), exp.model.init_cache(rows, steps), context).compile()
    flop = step.cost_analysis()["flops"]  # XLA's count for one step of `rows` rows.
    def matmul_seconds(k, n):
      """One jitted matmul, less the cost of calling a jitted function at all."""
      x, w = (jax.numpy.asarray(rng.normal(size=shape), np.float32) for shape in ((rows, k), (k, n)))
      matmul, call = jax.jit(lambda x, w: x @ w), jax.jit(lambda x, w: x[0, 0] + w[0, 0])
      return max(best_time(lambda: matmul(x, w), 20 * _REPEATS.value)[0]
                 - best_time(lambda: call(x, w), 20 * _REPEATS.value)[0], 0.0)
    matmuls = (sizes.num_decoder_layers * sum(matmul_seconds(k, n) for k, n in layer)
               + matmul_seconds(d, vocab))
    print(f"{name:<15} {rows:>5} {seconds * 1e3:>8.2f} {flop / seconds / 1e9:>8.1f} "
          f"{matmuls * 1e3:>11.2f} {(seconds - matmuls) * 1e3:>8.2f}")


# Kinds of operations in a decode step, by a pattern of the op_name XLA keeps
# (first match wins): attention is dot_product_attention (vmap) or the grouped
# einsums of `attention.attend`.
_OP_KINDS = (("output projection", "target_embed"), ("feed-forward", "/mlp/"),
             ("attention", r"attn/(vmap|bhg)"), ("projections", "dot_general"),
             ("beam reordering", "_take"), ("top-k", "top_k"), ("log-softmax", "log_softmax"))


def ops_table(exp, params, eos: int) -> None:
  b, s, steps = _BATCH.value, _SOURCE_LEN.value, _MAX_LEN.value
  inputs = np.random.default_rng(0).integers(2, exp.vocab.input, (b, s)).astype(np.int32)
  print(f"\nops: ms per step of each kind of operation, batch={b} source_len={s} "
        f"max_len={steps} (one traced decode; the trace slows it a little)")
  for name, beam in (("cached greedy", 1), ("cached beam-4", 4)):
    # The trace names the executable's HLO ops: trace the one whose text is read.
    generate = exp.generate_fn(eos_id=eos, max_len=steps, beam_size=beam).lower(
        params, inputs).compile()
    op_names = {}
    for line in generate.as_text().splitlines():
      if (match := re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*op_name=\"([^\"]+)\"", line)):
        op_names[match.group(1)] = match.group(2)
    jax.block_until_ready(generate(params, inputs))
    with tempfile.TemporaryDirectory() as trace_dir:
      jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
      jax.block_until_ready(generate(params, inputs))
      jax.profiler.stop_trace()
      trace, = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)
      with gzip.open(trace) as f:
        events = json.load(f)["traceEvents"]
    per_op = collections.Counter()
    for e in events:
      if e.get("ph") == "X" and "/while/body/" in op_names.get(e["name"], ""):
        per_op[e["name"]] += e["dur"] / 1e3 / steps  # ms per step
    kinds = collections.Counter()
    for op, ms in per_op.items():
      kinds[next((k for k, pattern in _OP_KINDS if re.search(pattern, op_names[op])),
                 "other")] += ms
    print(f"{name}: {sum(kinds.values()):.2f} ms a step: " +
          ", ".join(f"{k} {ms:.2f}" for k, ms in kinds.most_common()))
    for op, ms in per_op.most_common(5):
      print(f"  {ms:6.3f} ms  {op_names[op].split('/while/body/')[1][-70:]}")


def test_sentences(path: str) -> tuple[list[str], list[tuple[int, str, str]]]:
  """The English sentences of the spa_eng test split, once each, in file order,
  and every (line, English, Spanish) pair of the archive."""
  from transformer_research.data.builders import spa_eng  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(path) as z:
    pairs, _ = spa_eng.parse_pairs(z.read("spa-eng/spa.txt").splitlines())
  return list(dict.fromkeys(en for _, en, _ in pairs if spa_eng.split_of(en) == "test")), pairs


def source_rows(exp, sentences: list[str] | None, pairs, count: int) -> tuple[list, str]:
  """`count` source rows of real lengths (see the module docstring), and what they are."""
  rng = np.random.default_rng(0)
  width = exp.config.data.max_input_len
  if sentences is None:
    lengths = np.clip(np.rint(np.exp(rng.normal(np.log(8.0), 0.38, count))), 1, width)
    rows = [rng.integers(2, exp.vocab.input, int(n)).tolist() for n in lengths]
    return rows, "synthetic spa-eng-like lengths (log-normal, median 8, p95 15)"
  chosen = [sentences[i] for i in rng.choice(len(sentences), count, replace=False)]
  if _WORKDIR.value:
    return [exp.task.encode_inputs(s)[:width] for s in chosen], "spa-eng test sentences"
  from transformer_research.data.builders import spa_eng  # pylint: disable=g-import-not-at-top
  train = [t for _, en, es in pairs if spa_eng.split_of(en) == "train" for t in (en, es)]
  with tempfile.TemporaryDirectory() as tmp:
    tokenizers.train_sentencepiece(train, os.path.join(tmp, "spm.model"),
                                   exp.config.data.vocab_size, max_sentences=50_000)
    tok = tokenizers.SentencePieceTokenizer.from_file(os.path.join(tmp, "spm.model"))
  return ([tok.encode(s)[:width] for s in chosen],
          "spa-eng test sentences, SentencePiece trained here")


def lengths_table(exp, params, eos: int, rows: list, what: str, trained: bool) -> None:
  widths = batching.bucket_widths(exp.config.data.max_input_len)
  lengths = [len(r) for r in rows]
  print(f"\nlengths: {len(rows)} sources, {what}: mean {np.mean(lengths):.1f}, "
        f"max {max(lengths)} tokens; max_len={_MAX_LEN.value}; buckets {list(widths)}; "
        + ("translate.py's two passes" if trained else "one full pass (no EOS)"))
  print(f"{'method':<15} {'batch':>6} {'seconds':>8} {'sentences/s':>12} {'tokens/s':>10}")
  for beam in (1, 4):
    generate = exp.generate_fn(eos_id=eos, max_len=_MAX_LEN.value, beam_size=beam, alpha=0.6)
    for b in map(int, _BATCHES.value):
      if trained:  # As translate.py decodes: a short first pass, the rest again.
        decode = lambda: inference.translate_ids(exp, params, rows, beam_size=beam,
                                                 max_len=_MAX_LEN.value, batch_size=b)
      else:  # A random model never ends a row early: one full pass is its cost.
        batches = [batching.pad(rows, idx, b, w) for idx, w in batching.plan(lengths, b, widths)]
        decode = lambda: [t for x in batches for t in np.asarray(generate(params, x)[0])]
      seconds, outputs = best_time(decode, _REPEATS.value)
      made = sum(int((np.asarray(t) > 0).sum()) for t in outputs)
      name = "cached greedy" if beam == 1 else "cached beam-4"
      print(f"{name:<15} {b:>6} {seconds:>8.2f} {len(rows) / seconds:>12.1f} "
            f"{made / seconds:>10.0f}")


def split_table(run, sentences: list[str]) -> None:
  b = max(map(int, _BATCHES.value))
  print(f"\nsplit: all {len(sentences)} English test sentences, batch {b}, "
        "compilation included")
  print(f"{'method':<15} {'wall s':>8} {'sentences/s':>12}")
  for beam, name in ((1, "greedy"), (4, "beam-4")):
    start = time.perf_counter()
    inference.translate(run.experiment, run.params, sentences, beam_size=beam, batch_size=b)
    seconds = time.perf_counter() - start
    print(f"{name:<15} {seconds:>8.1f} {len(sentences) / seconds:>12.1f}")


def main(argv: list[str]) -> None:
  del argv
  runtime.keep_freed_memory()  # As launch/translate.py: before the backend starts.
  run = None
  if _WORKDIR.value:
    run = experiment.load_run(_WORKDIR.value, devices=jax.devices()[:1])
    exp, params = run.experiment, run.params
  else:
    exp = experiment.Experiment(_CONFIG.value)  # The model from the config: no data is read.
  c, model = exp.config, exp.model
  if exp.kind != "seq2seq":
    raise app.UsageError(f"data.task={c.data.task!r} is {exp.kind!r}; expected a "
                         "translation (seq2seq) config")
  if run is None:
    dummy = np.ones((1, 4), np.int32)
    params = model.init(jax.random.key(0), {"inputs": dummy, "targets": dummy})
  vocab = exp.vocab.target
  eos = 1 if vocab > 2 else vocab - 1
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"config: {c.data.task} variant={c.model.variant} d_model={model.sizes.d_model} "
        f"layers={model.sizes.num_encoder_layers}+{model.sizes.num_decoder_layers} "
        f"vocab={vocab} params={n_params / 1e6:.1f}M compute_dtype={c.model.compute_dtype} "
        f"({'trained: ' + _WORKDIR.value if run else 'random parameters'})")
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} "
        f"({jax.default_backend()}), {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}")
  sentences, pairs = test_sentences(_ZIP.value) if _ZIP.value else (None, None)
  if "fixed" in _TABLES.value:
    fixed_table(exp, params, eos)
  if "step" in _TABLES.value:
    step_table(exp, params, eos)
  if "ops" in _TABLES.value:
    ops_table(exp, params, eos)
  if "lengths" in _TABLES.value:
    lengths_table(exp, params, eos, *source_rows(exp, sentences, pairs, _NUM.value),
                  trained=run is not None)
  if "split" in _TABLES.value:
    if run is None or sentences is None:
      print("\nsplit: skipped (needs --workdir, a trained run, and --spa_eng_zip)")
    else:
      split_table(run, sentences)


if __name__ == "__main__":
  app.run(main)
