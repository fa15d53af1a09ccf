"""Input pipeline throughput of `wmt_spa` against what a training step consumes.

    python bench/input_pipeline.py --manual_dir=/path/with/spa-eng.zip   # real data
    python bench/input_pipeline.py                                       # synthetic text

Prints the config, the machine, the one-off tokenization time, and the
steady-state examples/s, tokens/s (non-pad, inputs + targets) and batches/s of
`Task.train_iterator`, then times a jitted forward+backward pass of the
config's model on one batch on the default jax device. The pipeline must
deliver at least 10x the batches/s of that step. The step leaves out the
optimizer update, so it is faster than a real train step and the ratio
printed is a lower bound.

With real data (`--manual_dir`), it then runs the training loop itself
(`train_loop.train_and_evaluate`, prefetch thread and dispatch-ahead as in a
run) for `--loop_steps` steps in the same temporary run directory and prints
the time per step the loop waited for a batch (`data_wait_ms` of the last
train record, which leaves out the compile) against the step time; the
target is under 2%.
"""

import json
import os
import platform
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from transformer_research import configs
from transformer_research import experiment
from transformer_research import runtime
from transformer_research import train_loop
from transformer_research.data import tasks
from transformer_research.data import tokenizers

_CONFIG = flags.DEFINE_string("config", "wmt_spa:small", "Config name and argument "
                              "(configs.load_config); the variant is the timed step's model.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "Dir with spa-eng.zip; '' = synthetic text.")
_TFDS_DIR = flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir ('' = a temporary dir).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch; 0 = the config's.")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 200, "Batches timed.")
_NUM_PAIRS = flags.DEFINE_integer("num_pairs", 80_000, "Synthetic sentence pairs.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed forward+backward steps.")
_LOOP_STEPS = flags.DEFINE_integer("loop_steps", 8, "Training-loop steps (real data only; 0 = "
                                   "skip); the second half is measured.")


def _synthetic_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
  """Sentence pairs with Tatoeba-like lengths (3-15 words) from a Zipf vocabulary."""
  rng = np.random.default_rng(seed)
  words = ["w" + "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 11)))
           for _ in range(30_000)]
  cdf = np.cumsum(1.0 / np.arange(1, len(words) + 1))
  cdf /= cdf[-1]
  sentence = lambda: " ".join(words[i] for i in np.searchsorted(cdf, rng.random(
      rng.integers(3, 16)))) + "."
  return [{"inputs": sentence(), "targets": sentence()} for _ in range(n)]


def _task(config, workdir: str) -> tasks.Task:
  if _MANUAL_DIR.value:
    return tasks.build(config, workdir, process_index=0, process_count=1)
  pairs = _synthetic_pairs(_NUM_PAIRS.value)
  tok, _ = tokenizers.translation_sentencepiece(pairs, workdir, config.data.vocab_size)
  return tasks.Task(config.data.task, config.data, config.seed, lambda split: pairs, tok, tok)


def _step_time(config, batch: dict[str, np.ndarray]) -> float:
  """Seconds per jitted forward+backward of the model on `batch` (no optimizer)."""
  model = experiment.Experiment(config).model
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  params = model.init(jax.random.key(0), batch)

  def loss(params, batch, rng):
    logits = model.apply(params, rng, batch, True)  # [B, T, V]
    logp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
    return jnp.sum(nll * (batch["targets"] > 0))

  grad = jax.jit(jax.grad(loss))
  jax.block_until_ready(grad(params, batch, jax.random.key(1)))  # Compile.
  start = time.perf_counter()
  for i in range(_STEPS.value):
    jax.block_until_ready(grad(params, batch, jax.random.key(i)))
  return (time.perf_counter() - start) / _STEPS.value


def _loop_wait(config, workdir: str) -> dict[str, float]:
  """The last train record of a short run of the real loop in `workdir`."""
  n = _LOOP_STEPS.value
  overrides = {"train.num_steps": n, "train.log_every_steps": max(n // 2, 1),
               "eval.every_steps": 10 * n, "checkpoint.every_steps": 10 * n}
  if _BATCH.value:
    overrides["train.batch_size"] = _BATCH.value
  run = configs.load_config(_CONFIG.value, {**overrides, "data.manual_dir": config.data.manual_dir,
                                            "data.tfds_data_dir": config.data.tfds_data_dir})
  train_loop.train_and_evaluate(run, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "train"][-1]


def main(argv: list[str]) -> None:
  del argv
  runtime.keep_freed_memory()  # As launch/train.py: before the backend starts.
  with tempfile.TemporaryDirectory() as tmp:
    config = configs.load_config(_CONFIG.value, {
        "data.manual_dir": _MANUAL_DIR.value,
        "data.tfds_data_dir": _TFDS_DIR.value or os.path.join(tmp, "tfds")})
    batch_size = _BATCH.value or config.train.batch_size
    start = time.perf_counter()
    task = _task(config, tmp)
    iterator = task.train_iterator(batch_size, process_index=0, process_count=1)
    setup_s = time.perf_counter() - start
    first = next(iterator)
    examples = tokens = 0
    start = time.perf_counter()
    for _ in range(_NUM_BATCHES.value):
      batch = next(iterator)
      examples += int(batch["inputs_segmentation"].max(axis=1).sum()) if config.data.packing \
          else batch["inputs"].shape[0]
      tokens += int((batch["inputs"] > 0).sum() + (batch["targets"] > 0).sum())
    elapsed = time.perf_counter() - start
    loop = _loop_wait(config, tmp) if _MANUAL_DIR.value and _LOOP_STEPS.value else None
  batches_per_s = _NUM_BATCHES.value / elapsed
  print(f"config: {_CONFIG.value} task={config.data.task} packing={config.data.packing} "
        f"batch_size={batch_size} max_len={config.data.max_input_len}/"
        f"{config.data.max_target_len} vocab={task.input_vocab_size}")
  print(f"data: {'spa-eng.zip from ' + _MANUAL_DIR.value if _MANUAL_DIR.value else 'synthetic text'}"
        f", {iterator.get_state()['num_examples']:,} training pairs")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
        f"jax device: {jax.devices()[0].device_kind}")
  print(f"setup (read + tokenizer + tokenize): {setup_s:.1f} s")
  print(f"pipeline: {examples / elapsed:,.0f} examples/s, {tokens / elapsed:,.0f} tokens/s, "
        f"{batches_per_s:,.1f} batches/s ({examples / _NUM_BATCHES.value:.0f} examples/batch)")
  step_s = _step_time(config, first)
  print(f"step ({config.model.variant}, forward+backward): {step_s * 1e3:.1f} ms -> "
        f"{1 / step_s:,.2f} batches/s consumed")
  print(f"ratio pipeline / step: {batches_per_s * step_s:,.1f}x (target >= 10x)")
  if loop is None:
    print("training loop: not run (needs --manual_dir, real data, and --loop_steps > 0)")
    return
  step_ms = 1e3 / loop["steps_per_sec"]
  print(f"training loop (steps {loop['step'] - _LOOP_STEPS.value // 2 + 1}-{loop['step']}, "
        f"prefetch thread + dispatch-ahead): waited {loop['data_wait_ms']:.2f} ms per step for "
        f"data of a {step_ms:,.0f} ms step = {loop['data_wait_ms'] / step_ms:.2%} (target < 2%)")


if __name__ == "__main__":
  app.run(main)
