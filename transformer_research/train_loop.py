"""`train_and_evaluate(config, workdir)`: the one training loop.

It trains to `config.train.num_steps`, logging every `train.log_every_steps`,
evaluating every `eval.every_steps` and checkpointing every
`checkpoint.every_steps`, at the end, and on SIGTERM (preemption). Rerunning
it on the same workdir resumes (order in `checkpointing`).

Metric values are fetched only at interval boundaries: per-step metrics stay
on device until the next log/eval/checkpoint, where they are fetched together
and checked for NaN/Inf before anything is saved, so a diverged state is never
checkpointed and the error still names the first bad step. Dispatch may run
one step ahead of the device, no more, so a SIGTERM is acted on promptly.
"""

import logging
import math
import os
import signal
import sys
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from transformer_research import checkpointing
from transformer_research import evaluation
from transformer_research import flops as flops_lib
from transformer_research import metrics as metrics_lib
from transformer_research import models
from transformer_research import optim
from transformer_research import sharding
from transformer_research import training
from transformer_research.data import tasks


def train_and_evaluate(config: Any, workdir: str) -> training.TrainState:
  """Trains and evaluates `config` in `workdir`, resuming if possible.

  Returns:
    The final train state (earlier if preempted: then a checkpoint of it is on
    disk and the caller should simply exit 0).

  Raises:
    FloatingPointError: the loss became NaN/Inf (names the step; the last
      good checkpoint is kept).
    ValueError: bad config (e.g. batch not divisible by the batch shards) or
      a workdir written by an incompatible model.
  """
  workdir = os.path.abspath(workdir)
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch_size(config.train.batch_size, mesh)  # Before any compile.
  sharding.check_batch_size(config.eval.batch_size, mesh, "config.eval.batch_size")
  metrics_lib.write_config(config, workdir)

  task = tasks.build(config, workdir)
  model = models.build(config.model, task.kind, input_vocab_size=task.input_vocab_size,
                       target_vocab_size=task.target_vocab_size, num_classes=task.num_classes)
  optimizer, schedule = optim.make_optimizer(config.train)
  rules = tuple(config.mesh.param_rules) or sharding.PARAM_RULES

  # The task yields this process's rows of the global batch.
  train_iter = task.train_iterator(config.train.batch_size, jax.process_index(),
                                   jax.process_count())
  fresh_data = train_iter.get_state()
  init_batch = {k: v[:1] for k, v in next(train_iter).items()}  # Shapes only.
  state, shardings = training.init_train_state(model, optimizer, init_batch, mesh, rules,
                                               config.seed)
  ckpt = checkpointing.Checkpointer(workdir, config.checkpoint)
  state, data_state, origin = ckpt.resume(state, shardings)
  train_iter.set_state(data_state if data_state is not None else fresh_data)
  step = int(jax.device_get(state.step))
  logging.info("%s; training from step %d to %d on mesh %s", origin, step,
               config.train.num_steps, dict(mesh.shape))

  writer = metrics_lib.MetricsWriter(workdir)
  writer.truncate_after(step)
  train_step = training.jit_train_step(
      training.make_train_step(config, model, optimizer, schedule, task.kind, mesh),
      shardings, mesh)
  eval_step = training.jit_eval_step(training.make_eval_step(model, task.kind), shardings, mesh)
  # MFU's denominator, the whole mesh's FLOP/s; 0 = no "mfu" in the records.
  peak = flops_lib.loop_peak_flops(config.train.peak_flops_per_device, mesh)
  target_vocab = task.target_vocab_size or 0  # None for classify (no logits over a vocab).
  progress = _Progress(config.train.num_steps)
  preemption = _Preemption()
  window, tokens, window_flops, last_eval = [], 0, 0.0, None
  window_start, window_step, checked = time.time(), step, 0
  try:
    while step < config.train.num_steps:
      batch = next(train_iter)
      tokens += sum(int(np.count_nonzero(batch[k])) for k in ("inputs", "targets") if k in batch)
      # From shapes on the host (no device sync); this process's rows, so x processes below.
      window_flops += flops_lib.batch_train_flops(task.kind, model.sizes, batch, target_vocab)
      state, step_metrics = train_step(state, sharding.global_batch(batch, mesh))
      if window:
        # At most two steps in flight: the host still prepares the next batch
        # while the device computes, but a SIGTERM is acted on within a step
        # or two, not after a whole log interval of queued steps.
        jax.block_until_ready(window[-1][1])
      step += 1
      window.append((step, step_metrics))
      final = step == config.train.num_steps
      preempted = preemption.reached(step)
      log_now = final or preempted or step % config.train.log_every_steps == 0
      eval_now = final or step % config.eval.every_steps == 0
      save_now = final or preempted or step % config.checkpoint.every_steps == 0
      if log_now or eval_now or save_now:
        checked = _check_finite(window, checked, ckpt)
      if log_now:
        elapsed = time.time() - window_start
        record = _train_record(window, tokens * jax.process_count(), elapsed, step - window_step)
        if peak:
          record["mfu"] = window_flops * jax.process_count() / max(elapsed, 1e-9) / peak
        writer.write(step, "train", record)
        progress.log(step, record)
        window, tokens, window_flops, checked = [], 0, 0.0, 0
        window_start, window_step = time.time(), step
      progress.tick(step)
      paused = time.time()
      if eval_now:
        last_eval = _evaluate(config, task, model, eval_step, state, mesh, step, writer)
      if save_now:
        ckpt.save(state, train_iter.get_state(), last_eval)
      # Eval and checkpoint time is not training time: keep it out of the
      # next window's steps/s, tokens/s and mfu.
      window_start += time.time() - paused
      if preempted:
        logging.warning("SIGTERM: checkpointed step %d, stopping", step)
        break
    ckpt.wait()
  finally:
    preemption.close()
    progress.close()
    writer.close()
    ckpt.close()
  return state


def _check_finite(window: list, checked: int, ckpt: checkpointing.Checkpointer) -> int:
  """Raises on the first NaN/Inf loss or gradient norm in `window[checked:]`.

  The gradient norm is checked too: a step whose loss is finite but whose
  gradient is not has already written NaN into the parameters.

  Returns:
    len(window), the new `checked`.
  """
  values = jax.device_get([(m["loss_sum"], m["grad_norm"]) for _, m in window[checked:]])
  for (step, _), (loss, grad_norm) in zip(window[checked:], values):
    if not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm))):
      ckpt.wait()
      raise FloatingPointError(
          f"loss is {float(loss)} (gradient norm {float(grad_norm)}) at step {step}; stopping "
          f"without checkpointing it (last good checkpoint: step {ckpt.latest_step()}). Lower "
          "train.learning_rate or raise train.warmup_steps.")
  return len(window)


def _train_record(window: list, tokens: int, elapsed: float, steps: int) -> dict[str, float]:
  """Interval averages: sums over the window divided once (see losses.py)."""
  host = jax.device_get([m for _, m in window])
  total = {k: sum(float(m[k]) for m in host) for k in ("loss_sum", "correct_sum", "token_count")}
  count = max(total["token_count"], 1.0)
  return {
      "loss": total["loss_sum"] / count,
      "accuracy": total["correct_sum"] / count,
      "learning_rate": float(host[-1]["learning_rate"]),
      "grad_norm": float(host[-1]["grad_norm"]),
      "steps_per_sec": steps / max(elapsed, 1e-9),
      "tokens_per_sec": tokens / max(elapsed, 1e-9),
  }


def _evaluate(config, task, model, eval_step, state, mesh, step, writer) -> dict[str, float]:
  """Loss/accuracy on the validation split, plus the task's own metrics.

  Eval batches have a fixed shape (the task pads the last one and marks the
  padding rows in `example_mask`), so the eval step compiles once.
  """
  split = config.eval.split
  totals = {}
  for batch in task.eval_batches(split, config.eval.batch_size, jax.process_index(),
                                 jax.process_count()):
    sums = jax.device_get(eval_step(state.params, sharding.global_batch(batch, mesh)))
    totals = {k: totals.get(k, 0.0) + float(v) for k, v in sums.items()}
  count = max(totals.get("token_count", 0.0), 1.0)
  record = {"loss": totals.get("loss_sum", 0.0) / count,
            "accuracy": totals.get("correct_sum", 0.0) / count}
  if task.kind == "lm":
    record["perplexity"] = math.exp(min(record["loss"], 50.0))
  # The task's metrics (BLEU, sequence accuracy, per-length tables, ...).
  record.update(evaluation.evaluate(config, task, model, state.params, split, mesh=mesh))
  return writer.write(step, split, record)


class _Preemption:
  """SIGTERM -> finish the step, checkpoint, stop.

  With several processes, JAX's preemption service (which owns SIGTERM there)
  makes all of them agree on the step to stop at; alone, a flag set by our
  handler is enough.
  """

  def __init__(self):
    self.flag = False
    self.previous = None
    self.multi = jax.process_count() > 1
    if not self.multi:
      try:
        self.previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        logging.warning("not in the main thread: SIGTERM will not checkpoint")

  def _handle(self, signum, frame):
    del signum, frame
    self.flag = True

  def reached(self, step: int) -> bool:
    if self.multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.flag

  def close(self) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


class _Progress:
  """Log line per interval; a one-line bar when stderr is a terminal."""

  def __init__(self, total: int):
    self.total = total
    self.tty = sys.stderr.isatty() and jax.process_index() == 0

  def log(self, step: int, record: dict[str, float]) -> None:
    eta = (self.total - step) / max(record["steps_per_sec"], 1e-9)
    logging.info("step %d/%d | loss %.4f | acc %.3f | %.2f steps/s | %.0f tokens/s | ETA %s",
                 step, self.total, record["loss"], record["accuracy"], record["steps_per_sec"],
                 record["tokens_per_sec"], _duration(eta))

  def tick(self, step: int) -> None:
    if self.tty:
      done = int(30 * step / max(self.total, 1))
      sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{self.total}")
      sys.stderr.flush()

  def close(self) -> None:
    if self.tty:
      sys.stderr.write("\n")


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
