"""Decoding speed: cached greedy and beam search against full recomputation.

    python bench/decode.py [--config=configs/wmt_spa.py] [--max_len=32]
        [--batch_size=32] [--naive_beam]

Builds the config's model with random parameters (speed does not depend on
their values; no data or checkpoint is needed: the vocabulary sizes come
from the config, `tasks.vocab_sizes`) and decodes a batch of random source sentences
to `--max_len` tokens with
  * cached greedy / beam-4: the encoder once, one cached decoder step a token;
  * naive greedy (/ beam-4 with --naive_beam): `model.apply` on the whole
    source and target prefix at every step, as a decoder without a cache must.
A random model almost never emits EOS, so every row runs all `max_len` steps:
the numbers are per full-length sentence. Compilation is excluded (one
warm-up call); the median of `--repeats` timed calls is reported.
"""

import os
import time

from absl import app
from absl import flags
import jax
import numpy as np
from ml_collections import config_flags

from transformer_research import experiment

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "configs", "wmt_spa.py"),
    "Config whose model is benchmarked.")
_MAX_LEN = flags.DEFINE_integer("max_len", 32, "Tokens generated per sentence.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Sentences decoded together.")
_SOURCE_LEN = flags.DEFINE_integer("source_len", 32, "Padded source length (about "
                                   "half of it real tokens).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per method.")
_NAIVE_BEAM = flags.DEFINE_bool("naive_beam", False, "Also time naive beam-4 (slow).")


def time_method(generate, params, inputs, repeats: int) -> tuple[float, int]:
  """Median seconds of one call (after a warm-up compile) and tokens made."""
  tokens, _ = generate(params, inputs)
  jax.block_until_ready(tokens)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    tokens, _ = generate(params, inputs)
    jax.block_until_ready(tokens)
    times.append(time.perf_counter() - start)
  return float(np.median(times)), int((np.asarray(tokens) > 0).sum())


def main(argv: list[str]) -> None:
  del argv
  c = _CONFIG.value
  exp = experiment.Experiment(c)  # The model from the config: no data is read.
  if exp.kind != "seq2seq":
    raise app.UsageError(f"--config: data.task={c.data.task!r} is {exp.kind!r}; expected a "
                         "translation (seq2seq) config")
  model, vocab = exp.model, exp.vocab.target
  rng = np.random.default_rng(0)
  b, s = _BATCH.value, _SOURCE_LEN.value
  inputs = rng.integers(2, exp.vocab.input, (b, s)).astype(np.int32)
  for i, n in enumerate(rng.integers(s // 4, 3 * s // 4 + 1, b)):
    inputs[i, n:] = 0  # Sentences of different lengths, padded.
  params = model.init(jax.random.key(0), {"inputs": inputs, "targets": inputs})
  n_params = sum(x.size for x in jax.tree.leaves(params))
  eos = 1 if vocab > 2 else vocab - 1
  print(f"config: {c.data.task} variant={c.model.variant} d_model={model.sizes.d_model} "
        f"layers={model.sizes.num_encoder_layers}+{model.sizes.num_decoder_layers} "
        f"vocab={vocab} params={n_params / 1e6:.1f}M compute_dtype={c.model.compute_dtype}")
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} "
        f"({jax.default_backend()}); batch={b} source_len={s} max_len={_MAX_LEN.value}")
  methods = [("cached greedy", dict(beam_size=1, cached=True)),
             ("cached beam-4", dict(beam_size=4, cached=True)),
             ("naive greedy", dict(beam_size=1, cached=False))]
  if _NAIVE_BEAM.value:
    methods.append(("naive beam-4", dict(beam_size=4, cached=False)))
  results = {}
  print(f"{'method':<15} {'sec/batch':>10} {'sentences/s':>12} {'tokens/s':>10}")
  for name, kw in methods:
    generate = exp.generate_fn(eos_id=eos, max_len=_MAX_LEN.value, alpha=0.6, **kw)
    seconds, tokens = time_method(generate, params, inputs, _REPEATS.value)
    results[name] = seconds
    print(f"{name:<15} {seconds:>10.3f} {b / seconds:>12.1f} {tokens / seconds:>10.0f}")
  speedup = results["naive greedy"] / results["cached greedy"]
  print(f"cached greedy is {speedup:.1f}x naive greedy (target >= 5x)")
  if "naive beam-4" in results:
    print(f"cached beam-4 is {results['naive beam-4'] / results['cached beam-4']:.1f}x "
          "naive beam-4")


if __name__ == "__main__":
  app.run(main)
