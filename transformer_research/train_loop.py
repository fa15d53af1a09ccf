"""`train_and_evaluate(config, workdir)`: the one training loop.

It trains to `config.train.num_steps`, logging every `train.log_every_steps`,
evaluating every `eval.every_steps` and checkpointing every
`checkpoint.every_steps`, at the end, and on SIGTERM (preemption). Rerunning
it on the same workdir resumes (order in `checkpointing`).

The function reads top to bottom in stages: set-up (the run's parts, from
`experiment.Experiment`), resume (`checkpointing`), then the loop: train
step, log, eval, save, stop.

Metric values are fetched only at interval boundaries: per-step metrics stay
on device until the next log/eval/checkpoint, where they are fetched together
and checked for NaN/Inf before anything is saved, so a diverged state is never
checkpointed and the error still names the first bad step.

Feeding: batches are packed and put on the devices in a background thread
(`pipeline.Prefetch`, `config.data.prefetch` batches ahead), and dispatch runs
`config.train.dispatch_ahead` steps ahead of the device, no more, so the
device never waits for the host and a SIGTERM is still acted on within a few
steps. Train records carry `data_wait_ms`, the time per step the loop waited
for a batch (bench/input_pipeline.py compares it with the step time).
"""

import collections
import contextlib
import dataclasses
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
from transformer_research import experiment
from transformer_research import flops as flops_lib
from transformer_research import metrics as metrics_lib
from transformer_research import sharding
from transformer_research import training
from transformer_research.data import pipeline


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
  # --------------------------------------------------------------- set-up
  workdir = os.path.abspath(workdir)
  exp = experiment.Experiment(config, workdir)
  sharding.check_batch_size(config.train.batch_size, exp.mesh)  # Before any compile.
  sharding.check_batch_size(config.eval.batch_size, exp.mesh, "config.eval.batch_size")
  metrics_lib.write_config(config, workdir)
  # The task yields this process's rows of the global batch; the thread also
  # puts them on the devices.
  train_iter = pipeline.Prefetch(exp.task.train_iterator(config.train.batch_size),
                                 config.data.prefetch,
                                 lambda batch: (batch, sharding.global_batch(batch, exp.mesh)))
  in_flight = _InFlight(config.train.dispatch_ahead)
  ckpt = checkpointing.Checkpointer(workdir, config.checkpoint)

  # --------------------------------------------------------------- resume
  state, data_state, origin = ckpt.resume(exp.init_state(), exp.state_shardings)
  if data_state is not None:
    train_iter.set_state(data_state)
  step, num_steps = int(jax.device_get(state.step)), config.train.num_steps
  logging.info("%s; training from step %d to %d on mesh %s", origin, step, num_steps,
               dict(exp.mesh.shape))
  writer = metrics_lib.MetricsWriter(workdir)
  writer.truncate_after(step)
  # MFU's denominator, the whole mesh's FLOP/s; 0 = no "mfu" in the records.
  peak = flops_lib.loop_peak_flops(config.train.peak_flops_per_device, exp.mesh,
                                  config.model.compute_dtype)
  progress, preemption = _Progress(num_steps), _Preemption()
  window, last_eval = _Window(step), None

  # ----------------------------------------------------------------- loop
  try:
    while step < num_steps:
      with window.waiting_for_data():
        batch, device_batch = next(train_iter)
      window.count_batch(batch, exp)
      state, step_metrics = exp.train_step(state, device_batch)
      in_flight.push(step_metrics)
      step += 1
      window.steps.append((step, step_metrics))
      final = step == num_steps
      preempted = preemption.reached(step)
      log_now = final or preempted or step % config.train.log_every_steps == 0
      eval_now = final or step % config.eval.every_steps == 0
      save_now = final or preempted or step % config.checkpoint.every_steps == 0
      if log_now or eval_now or save_now:
        window.check_finite(ckpt)
      if log_now:
        record = writer.write(step, "train", window.record(step, peak))
        progress.log(step, record)
        window = _Window(step)
      progress.tick(step)

      # ------------------------------------------------------ eval, save
      # Eval and checkpoint time is not training time: the window is paused.
      with window.paused():
        if eval_now:
          split = config.eval.split
          metrics, _, _ = evaluation.evaluate(exp, state.params, split)
          last_eval = writer.write(step, split, metrics)
        if save_now:
          ckpt.save(state, train_iter.get_state(), last_eval)

      # ----------------------------------------------------------- stop
      if preempted:
        logging.warning("SIGTERM: checkpointed step %d, stopping", step)
        break
    ckpt.wait()
  finally:
    train_iter.close()
    preemption.close()
    progress.close()
    writer.close()
    ckpt.close()
  return state


@dataclasses.dataclass
class _Window:
  """What the loop accumulates between two train records.

  Per-step metrics stay on device (`steps`) until the window is checked or
  recorded, so dispatch is never blocked by a fetch in between.
  """
  start_step: int
  start_time: float = dataclasses.field(default_factory=time.time)
  steps: list = dataclasses.field(default_factory=list)  # (step, on-device metrics)
  checked: int = 0  # steps[:checked] are known finite.
  tokens: int = 0  # Non-pad tokens of this process's rows.
  flops: float = 0.0  # Model FLOPs of this process's rows.
  data_wait: float = 0.0  # Seconds the loop waited for batches.

  def count_batch(self, batch: dict[str, np.ndarray], exp: experiment.Experiment) -> None:
    """Tokens and FLOPs of a host batch, from its shapes (no device sync)."""
    self.tokens += sum(int(np.count_nonzero(batch[k])) for k in ("inputs", "targets")
                       if k in batch)
    self.flops += flops_lib.batch_train_flops(exp.kind, exp.model.sizes, batch,
                                              exp.vocab.target or 0)

  @contextlib.contextmanager
  def waiting_for_data(self):
    start = time.time()
    try:
      yield
    finally:
      self.data_wait += time.time() - start

  def check_finite(self, ckpt: checkpointing.Checkpointer) -> None:
    """Raises on the first NaN/Inf loss or gradient norm not yet checked.

    The gradient norm is checked too: a step whose loss is finite but whose
    gradient is not has already written NaN into the parameters.
    """
    unchecked = self.steps[self.checked:]
    values = jax.device_get([(m["loss_sum"], m["grad_norm"]) for _, m in unchecked])
    for (step, _), (loss, grad_norm) in zip(unchecked, values):
      if not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm))):
        ckpt.wait()
        raise FloatingPointError(
            f"loss is {float(loss)} (gradient norm {float(grad_norm)}) at step {step}; stopping "
            f"without checkpointing it (last good checkpoint: step {ckpt.latest_step()}). Lower "
            "train.learning_rate or raise train.warmup_steps.")
    self.checked = len(self.steps)

  def record(self, step: int, peak_flops: float) -> dict[str, float]:
    """Interval averages: sums over the window divided once (see losses.py).

    Tokens and FLOPs are this process's; every process feeds an equal share.
    """
    elapsed = max(time.time() - self.start_time, 1e-9)
    host = jax.device_get([m for _, m in self.steps])
    total = {k: sum(float(m[k]) for m in host) for k in ("loss_sum", "correct_sum", "token_count")}
    count = max(total["token_count"], 1.0)
    record = {
        "loss": total["loss_sum"] / count,
        "accuracy": total["correct_sum"] / count,
        "learning_rate": float(host[-1]["learning_rate"]),
        "grad_norm": float(host[-1]["grad_norm"]),
        "steps_per_sec": (step - self.start_step) / elapsed,
        "tokens_per_sec": self.tokens * jax.process_count() / elapsed,
        "data_wait_ms": 1e3 * self.data_wait / max(step - self.start_step, 1),
    }
    if peak_flops:
      record["mfu"] = self.flops * jax.process_count() / elapsed / peak_flops
    return record

  @contextlib.contextmanager
  def paused(self):
    """Time spent inside does not count towards steps/s, tokens/s and mfu."""
    start = time.time()
    try:
      yield
    finally:
      self.start_time += time.time() - start


class _InFlight:
  """Lets dispatch run `depth` steps ahead of the device, no more.

  The host dispatches step n while the device still computes up to `depth`
  earlier ones, so a slow batch or a Python hiccup never idles the device;
  the bound keeps a SIGTERM from waiting behind a whole log interval of
  queued steps.
  """

  def __init__(self, depth: int):
    if not isinstance(depth, int) or depth < 1:
      raise ValueError(f"config.train.dispatch_ahead={depth!r}; expected an int >= 1")
    self.depth, self.steps = depth, collections.deque()

  def push(self, metrics: Any) -> None:
    """Records a dispatched step; blocks while more than `depth` are unfinished."""
    self.steps.append(metrics)
    while len(self.steps) > self.depth:
      jax.block_until_ready(self.steps.popleft())


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
