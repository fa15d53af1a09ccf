"""`train_and_evaluate(config, workdir)`: the one training loop.

It trains to `config.train.num_steps`, logging every `train.log_every_steps`,
evaluating every `eval.every_steps` and checkpointing every
`checkpoint.every_steps`, at the end, and on SIGTERM (preemption) or Ctrl-C.
Rerunning it on the same workdir resumes (order in `checkpointing`). With a time budget
(`train.max_minutes`) the end comes when the budget is used, if that is first.

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
from typing import Any, Callable

from absl import logging as absl_logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import tqdm

from transformer_research import checkpointing
from transformer_research import distributed
from transformer_research import evaluation
from transformer_research import experiment
from transformer_research import flops as flops_lib
from transformer_research import metrics as metrics_lib
from transformer_research import models
from transformer_research import optim
from transformer_research import rundir
from transformer_research import runtime
from transformer_research import sharding
from transformer_research import training
from transformer_research import warm_start
from transformer_research.data import pipeline
from transformer_research.data import synthetic
from transformer_research.data import tasks


def train_and_evaluate(config: Any, workdir: str) -> training.TrainState:
  """Trains and evaluates `config` in `workdir`, resuming if possible.

  Returns:
    The final train state (earlier if preempted: then a checkpoint of it is on
    disk and the caller should simply exit 0).

  Raises:
    FloatingPointError: the loss, the state or an eval became NaN/Inf (names
      the step; nothing non-finite is saved, the last good checkpoint is kept).
    ValueError: a bad config (e.g. batch not divisible by the batch shards), or
      a run directory this config may not continue (another model, checkpoints
      that do not match or cannot be read); nothing in it is changed.
    rundir.RunDirectoryInUse: another run holds the run directory.
    Interrupted: Ctrl-C stopped the run (a KeyboardInterrupt, raised after the
      step it came at was checkpointed).
  """
  # ------------------------------------------- set-up (nothing written yet)
  began = time.time()  # The time budget counts preparation too.
  exp = experiment.Experiment(config, workdir)
  _check_config(config, exp)
  with contextlib.ExitStack() as stack:
    stack.enter_context(rundir.locked(workdir))

    # ------------------------------------------------------------- resume
    previous = rundir.previous_config(workdir)
    changed = rundir.check_continues(previous, config, workdir,
                                     checkpointing.has_checkpoint(workdir))
    rundir.check_not_orphaned(workdir)
    ckpt = stack.enter_context(contextlib.closing(
        checkpointing.Checkpointer(workdir, config.checkpoint)))
    # A fresh run directory reads text with its warm-start source's tokenizer:
    # checked before any restore, copied after it, before the task would train one.
    tokenizers = []
    if ckpt.latest_step() is None:
      tokenizers = warm_start.tokenizers_to_adopt(config, workdir)
    else:
      rundir.check_resumable(workdir, config, previous)
    try:
      resumed = ckpt.resume(exp.abstract_state, exp.init_state)
    except checkpointing.IncompatibleCheckpoint as e:
      if not changed:
        raise
      # A leaf path (opt_state/0/count) says little; the config change that
      # reshaped the optimizer state (train.optimizer, grad_clip_norm, frozen) does.
      raise checkpointing.IncompatibleCheckpoint(
          f"{e} This start changed: {'; '.join(changed)}.") from None
    origin = "; ".join(filter(None, (resumed.origin, warm_start.copy_tokenizers(tokenizers))))
    # The task yields this process's rows of the global batch; the thread also
    # puts them on the devices.
    train_iter = stack.enter_context(contextlib.closing(pipeline.Prefetch(
        exp.task.train_iterator(config.train.batch_size), config.data.prefetch,
        lambda batch: (batch, sharding.global_batch(batch, exp.mesh)))))
    distributed.check_same_data(train_iter.get_state(), "training data",
                                experiment.describe_data_paths(config))
    # A validation split carved from local training files moves when they are
    # edited: each checkpoint records its examples, for evaluate.py to check.
    held_out = exp.task.data_identity("validation") if config.data.get("train_path") else None
    if resumed.data_state is not None:
      try:
        train_iter.set_state(resumed.data_state)
      except ValueError as e:  # The seed cannot change (check_continues): the data did.
        raise ValueError(
            f"checkpoint step {int(jax.device_get(resumed.state.step))} in {workdir}: its data "
            f"position does not fit the training data now at the run's data paths ({e}); the "
            "files were changed, added or removed since. Nothing was changed: restore them, "
            f"or warm-start a new --workdir from this run (--config.checkpoint.init_from="
            f"{workdir})") from None
    state = resumed.state
    step, num_steps = int(jax.device_get(state.step)), config.train.num_steps

    # ------------------------------------- accepted: the run's files change
    if jax.process_index() == 0:
      rundir.record_start(workdir, config, origin, changed)
    if changed:
      logging.warning("this run continues %s with changed fields: %s", workdir,
                      "; ".join(changed))
      moved = optim.schedule_change(previous.train, config.train, step)
      if moved and step < num_steps:
        logging.warning("%s", moved)
    logging.info("%s; training from step %d to %d on mesh %s", origin, step,
                 num_steps, dict(exp.mesh.shape))
    writer = stack.enter_context(contextlib.closing(
        metrics_lib.MetricsWriter(workdir, resumed_step=step)))
    writer.truncate_after(step)
    # MFU's denominator, the whole mesh's FLOP/s; 0 = no "mfu" in the records.
    peak = flops_lib.loop_peak_flops(config.train.peak_flops_per_device, exp.mesh,
                                    config.model.compute_dtype)
    progress = stack.enter_context(contextlib.closing(_Progress(step, num_steps)))
    preemption = stack.enter_context(contextlib.closing(_Preemption()))
    profiler = stack.enter_context(contextlib.closing(
        _Profiler(workdir, step, config.train.profile_steps)))
    window = _Window(step, carried=resumed.window)
    in_flight = _InFlight(config.train.dispatch_ahead)
    budget = _Budget(config.train.max_minutes, began, resumed.elapsed_s,
                     config.train.log_every_steps)
    if budget.used() and step < num_steps:
      logging.warning("the time budget train.max_minutes=%s is used (%s at step %d): not "
                      "training; raise train.max_minutes to train on", config.train.max_minutes,
                      _duration(budget.elapsed()), step)
      num_steps = step
    elif step >= num_steps:
      logging.info("the run is at step %d of train.num_steps=%d: nothing to train; raise "
                   "train.num_steps to train on", step, num_steps)
    start_step, preempted = step, False
    summary = _run_summary(exp, config)
    logging.info("%s", summary)
    writer.write_run_info(config, exp.param_count, summary)

    # --------------------------------------------------------------- loop
    while step < num_steps:
      with window.waiting_for_data():
        batch, device_batch = next(train_iter)
      window.count_batch(batch, exp)
      with profiler.step(step + 1):
        state, step_metrics = exp.train_step(state, device_batch)
      in_flight.push(step_metrics)
      step += 1
      window.steps.append((step, step_metrics))
      profiler.after(step, step_metrics)
      if step == start_step + 1:  # Compilation is not training: time from here on.
        progress.first_step(exp, batch, train_iter.get_state()["num_examples"], step_metrics)
        window.restart_clock(step)
      out_of_time = budget.reached(step)
      final = step == num_steps or out_of_time
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

      # ---------------------------------------------------- eval, save
      # Eval and checkpoint time is not training time: the window is paused.
      with window.paused():
        if eval_now or save_now:
          _check_state_finite(exp, state, step, ckpt)
        eval_metrics = None
        if eval_now:
          split, started = config.eval.split, time.time()
          eval_metrics, examples, outputs = evaluation.evaluate(exp, state.params, split)
          _check_eval_finite(eval_metrics, split, step, ckpt)
          writer.write(step, split, eval_metrics)
          writer.write_samples(step, split, examples, outputs, config.eval.num_samples)
          progress.eval_done(split, step, eval_metrics, time.time() - started)
        if save_now:
          started = time.time()
          ckpt.save(state, train_iter.get_state(), window.to_state(), eval_metrics,
                    elapsed_s=budget.elapsed(), held_out=held_out)
          progress.saved(step, time.time() - started, config.checkpoint.async_save)

      # ------------------------------------------------------------- stop
      if preempted:
        if not preemption.interrupts_the_caller:  # Else the Interrupted raised below says it.
          logging.warning("%s: checkpointed step %d, stopping", preemption.cause, step)
        break
      if out_of_time and step < num_steps:
        logging.warning("time budget train.max_minutes=%s used at step %d of %d (%s): "
                        "checkpointed and evaluated, stopping", config.train.max_minutes, step,
                        num_steps, _duration(budget.elapsed()))
        break
    ckpt.wait()
    if preempted and preemption.interrupts_the_caller and step < num_steps:
      # As any Ctrl-C: the caller is interrupted (a shell stops its script),
      # here after the checkpoint instead of at a random point.
      raise Interrupted(f"interrupted at step {step}, after its checkpoint: rerun the command "
                        "to resume")
  return state


def _count(low: int) -> Callable[[float], bool]:
  """A whole number >= low."""
  return lambda v: v >= low and v == int(v)


# Numbers that nothing before the run directory is written would refuse (the
# train step, the data or the first eval would use them, or accept a nonsense
# value): (key, valid, what is expected).
_NUMBER_RANGES = (
    ("train.num_steps", _count(1), "a positive number of steps"),
    ("train.log_every_steps", _count(1), "a positive number of steps"),
    ("eval.every_steps", _count(1), "a positive number of steps"),
    ("checkpoint.every_steps", _count(1), "a positive number of steps"),
    ("train.dispatch_ahead", _count(1), "an int >= 1 (steps dispatched ahead of the device)"),
    ("train.max_minutes", lambda v: v >= 0, "minutes > 0, or 0 for no time budget"),
    ("train.profile_steps", _count(0), "0 (no trace) or a number of steps"),
    ("data.max_input_len", _count(1), "a positive number of tokens"),
    ("data.max_target_len", _count(1), "a positive number of tokens"),
    ("data.num_buckets", _count(1), "a positive number of padded lengths"),
    ("data.max_train_examples", lambda v: v == -1 or _count(1)(v),
     "-1 (all) or a positive number of records"),
    ("train.label_smoothing", lambda v: 0 <= v < 1, "a value in [0, 1)"),
    ("train.grad_clip_norm", lambda v: v >= 0, "a global norm > 0, or 0 for no clipping"),
    ("train.weight_decay", lambda v: v >= 0, ">= 0 (0 = none)"),
    ("train.b1", lambda v: 0 <= v < 1, "a decay rate in [0, 1)"),
    ("train.b2", lambda v: 0 <= v < 1, "a decay rate in [0, 1)"),
    ("train.eps", lambda v: v > 0, "> 0"),
    ("train.momentum", lambda v: 0 <= v < 1, "a decay rate in [0, 1)"),
    ("train.min_lr_ratio", lambda v: 0 <= v <= 1, "a fraction of the peak in [0, 1]"),
    ("eval.decode_examples", _count(-1),
     "-1 (the whole split), 0 (no decoding) or a number of examples"),
    ("eval.beam_size", _count(1), "1 (greedy) or more"),
    ("eval.max_decode_len", lambda v: v == -1 or _count(1)(v),
     "-1 (data.max_target_len) or a positive number of tokens"),
    ("eval.length_penalty", lambda v: v >= 0, ">= 0 (0 ranks beams by raw log-probability)"),
    ("eval.num_samples", _count(0), "0 (none) or a number of examples in the eval report"),
)


def check_settings(config: Any) -> None:
  """What `_check_config` checks of `config` alone, with no devices and no
  data: the task, the options and sizes of the model and optimizer, feeding
  depths, step counts, micro-batches, the eval split, the metric that ranks
  checkpoints. `launch/sweep.py` checks every run's config with it before the
  first run trains, without starting a JAX backend (its runs need the devices).

  Raises:
    ValueError naming the field and its value.
  """
  pipeline.check_depth(config.data.prefetch)
  tasks.check_data_paths(config.data)
  if config.data.task in synthetic.TASKS:
    synthetic.check_config(config.data)
  if config.data.packing and tasks.spec(config.data.task).kind == "classify":
    raise ValueError(f"config.data.packing=True: data.task={config.data.task!r} is a classifier, "
                     "which reads one example a row (the row's label is its); expected False")
  if config.eval.split not in tasks.EVAL_SPLITS:
    raise ValueError(f"config.eval.split={config.eval.split!r}: expected one of "
                     f"{list(tasks.EVAL_SPLITS)}")
  for name, valid, expected in _NUMBER_RANGES:
    section, field = name.split(".")
    value = config[section][field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not valid(value):
      raise ValueError(f"config.{name}={value!r}: expected {expected}")
  vocab = tasks.vocab_sizes(config)
  models.build(config.model, tasks.spec(config.data.task).kind, input_vocab_size=vocab.input,
               target_vocab_size=vocab.target, num_classes=vocab.num_classes,
               platform="cpu")  # Any platform: only the options are checked.
  optim.make_optimizer(config.train)
  training.check_step_config(config, mesh=None)
  _check_best_metric(config)


def _check_config(config: Any, exp: experiment.Experiment) -> None:
  """Everything about the config that can fail, before anything is written:
  `check_settings`, then what depends on the devices: the mesh (the abstract
  state builds it with the model and optimizer) and the batch splits over it."""
  check_settings(config)
  exp.abstract_state  # pylint: disable=pointless-statement  (validates model, optimizer, mesh)
  sharding.check_batch_size(config.train.batch_size, exp.mesh)  # Before any compile.
  sharding.check_batch_size(config.eval.batch_size, exp.mesh, "config.eval.batch_size")
  training.check_step_config(config, exp.mesh)


def _check_best_metric(config: Any) -> None:
  """`checkpoint.best_metric` must be a metric the task's evals report; found
  wrong only at the first eval, the steps since the last checkpoint were lost."""
  best = config.checkpoint.best_metric
  if not best:
    return
  names = tasks.spec(config.data.task).metric_names
  plain = [n for n in names if not n.endswith("_by_length")]
  # A per-length family reports NAME_len_05, NAME_trained_lengths, ...
  families = [n[:-len("by_length")] for n in names if n.endswith("_by_length")]
  if best not in plain and not any(best.startswith(f) for f in families):
    raise ValueError(f"config.checkpoint.best_metric={best!r}: data.task="
                     f"{config.data.task!r} evaluates {plain}" +
                     (f" and per length {[f + '*' for f in families]}" if families else ""))
  better = "min" if best in ("loss", "perplexity") else "max"
  if config.checkpoint.best_mode != better:
    raise ValueError(f"config.checkpoint.best_metric={best!r} is better "
                     f"{'lower' if better == 'min' else 'higher'}: expected "
                     f"config.checkpoint.best_mode={better!r} (with "
                     f"{config.checkpoint.best_mode!r} the worst checkpoints would be kept)")


def _check_state_finite(exp: experiment.Experiment, state: training.TrainState, step: int,
                        ckpt: checkpointing.Checkpointer) -> None:
  """A finite loss and gradient norm can still leave Inf/NaN in the state."""
  if not bool(exp.state_is_finite(state)):
    ckpt.wait()
    raise FloatingPointError(
        f"the parameters or optimizer state are not finite at step {step}; stopping without "
        f"saving or evaluating them (last good checkpoint: step {ckpt.latest_step()}). Lower "
        "train.learning_rate or raise train.warmup_steps.")


def _check_eval_finite(metrics: dict[str, Any], split: str, step: int,
                       ckpt: checkpointing.Checkpointer) -> None:
  bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
  if bad:
    ckpt.wait()
    raise FloatingPointError(
        f"{split} metrics are not finite at step {step} ({bad}); stopping without recording "
        f"or saving that step (last good checkpoint: step {ckpt.latest_step()}).")


# Train-record sums: added up over a window, divided once (see losses.py).
_SUMS = ("loss_sum", "correct_sum", "token_count")


@dataclasses.dataclass
class _Window:
  """What the loop accumulates between two train records.

  Per-step metrics stay on device (`steps`) until the window is checked or
  recorded, so dispatch is never blocked by a fetch in between. A window can
  span a restart: each checkpoint saves the sums of its open window
  (`to_state`) and the resumed run's window starts from them (`carried`), so
  the record averages the same steps as an uninterrupted run's. Timings
  (steps/s, tokens/s, mfu) cover this process's steps only.
  """
  timed_from: int  # The step this process's part of the window starts after.
  carried: dict | None = None  # A checkpoint's `to_state()`: {"start_step", *_SUMS}.
  start_time: float = dataclasses.field(default_factory=time.time)
  steps: list = dataclasses.field(default_factory=list)  # (step, on-device metrics)
  checked: int = 0  # steps[:checked] are known finite.
  tokens: int = 0  # Non-pad tokens of this process's rows.
  flops: float = 0.0  # Model FLOPs of this process's rows.
  data_wait: float = 0.0  # Seconds the loop waited for batches since `timed_from`.

  def count_batch(self, batch: dict[str, np.ndarray], exp: experiment.Experiment) -> None:
    """Tokens and FLOPs of a host batch, from its shapes (no device sync)."""
    # A masked LM's targets are a subset of its inputs: count the inputs once.
    keys = ("inputs",) if exp.kind == "mlm" else ("inputs", "targets")
    self.tokens += sum(int(np.count_nonzero(batch[k])) for k in keys if k in batch)
    self.flops += flops_lib.batch_train_flops(exp.kind, exp.model.sizes, batch,
                                              exp.vocab.target or 0)

  def restart_clock(self, step: int) -> None:
    """Times this window from `step` on: the steps before (the first, which
    compiles) count in the record's averages but not in its rates."""
    self.timed_from, self.start_time, self.tokens, self.flops = step, time.time(), 0, 0.0
    self.data_wait = 0.0

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

  def _sums(self) -> dict[str, float]:
    """The window's sums, carried part first: the same additions, in the same
    order, as an uninterrupted run makes."""
    sums = {k: float((self.carried or {}).get(k, 0.0)) for k in _SUMS}
    for metrics in jax.device_get([m for _, m in self.steps]):
      for k in _SUMS:
        sums[k] += float(metrics[k])
    return sums

  def to_state(self) -> dict[str, float]:
    """The open window, for the checkpoint of the current step."""
    start = self.carried["start_step"] if self.carried else self.timed_from
    return {"start_step": start, **self._sums()}

  def record(self, step: int, peak_flops: float) -> dict[str, float]:
    """Interval averages: sums over the window divided once (see losses.py).

    Tokens and FLOPs are this process's; every process feeds an equal share.
    """
    elapsed = max(time.time() - self.start_time, 1e-9)
    total = self._sums()
    last = jax.device_get(self.steps[-1][1])
    count = max(total["token_count"], 1.0)
    record = {
        "loss": total["loss_sum"] / count,
        "accuracy": total["correct_sum"] / count,
        "learning_rate": float(last["learning_rate"]),
        "grad_norm": float(last["grad_norm"]),
        "steps_per_sec": (step - self.timed_from) / elapsed,
        "tokens_per_sec": self.tokens * jax.process_count() / elapsed,
        "data_wait_ms": 1e3 * self.data_wait / max(step - self.timed_from, 1),
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
  queued steps. (`config.train.dispatch_ahead`, checked in `_check_config`.)
  """

  def __init__(self, depth: int):
    self.depth, self.steps = depth, collections.deque()

  def push(self, metrics: Any) -> None:
    """Records a dispatched step; blocks while more than `depth` are unfinished."""
    self.steps.append(metrics)
    while len(self.steps) > self.depth:
      jax.block_until_ready(self.steps.popleft())


class _Budget:
  """`train.max_minutes` of wall time, preparation included, over all starts.

  Each checkpoint stores the time used up to it (`elapsed`), so a restarted
  run spends only what is left; the time between a start's last checkpoint
  and its end (a kill) is not counted. Several processes must stop at the same
  step: they decide at log steps, on process 0's clock.
  """

  def __init__(self, max_minutes: float, began: float, used_before: float,
               log_every_steps: int):
    self.max_minutes = max_minutes
    self.began, self.used_before = began, used_before
    self.every = 1 if jax.process_count() == 1 else log_every_steps

  def elapsed(self) -> float:
    return self.used_before + time.time() - self.began

  def used(self) -> bool:
    return checkpointing.budget_used(self.elapsed(), self.max_minutes)

  def reached(self, step: int) -> bool:
    if not self.max_minutes or step % self.every:
      return False
    if self.every == 1:
      return self.used()
    return bool(multihost_utils.broadcast_one_to_all(np.bool_(self.used())))


class Interrupted(KeyboardInterrupt):
  """Ctrl-C stopped the run, after checkpointing the step it was at."""


class _Preemption:
  """SIGTERM, or Ctrl-C at a terminal -> finish the step, checkpoint, stop.

  With several processes, JAX's preemption service (which owns SIGTERM there)
  makes all of them agree on the step to stop at, and Ctrl-C becomes a SIGTERM
  to this process; alone, a flag set by our handler is enough. Ctrl-C is taken
  over only when Python's own handler has it (an interactive run: not when
  SIGINT is ignored or a host program handles it). A second Ctrl-C gets that
  handler back: it interrupts at once and loses the work since the last
  checkpoint.
  """

  def __init__(self):
    self.flag = False
    self.cause = "SIGTERM"  # What stopped the run: SIGTERM or Ctrl-C.
    self.previous = {}
    self.multi = jax.process_count() > 1
    try:
      if not self.multi:
        self.previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle)
      if runtime.ctrl_c_raises():
        self.previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      logging.warning("not in the main thread: SIGTERM will not checkpoint")

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGTERM:
      self.flag = True
      return
    signal.signal(signal.SIGINT, self.previous[signal.SIGINT])
    self.cause = "Ctrl-C"
    logging.warning("Ctrl-C: stopping after a checkpoint of this step (an eval in progress "
                    "finishes first); Ctrl-C again stops at once, losing the steps since the "
                    "last checkpoint")
    if self.multi:  # The processes agree on the step through the preemption service.
      os.kill(os.getpid(), signal.SIGTERM)
    else:
      self.flag = True

  @property
  def interrupts_the_caller(self) -> bool:
    """Ctrl-C of a single process: after the checkpoint, the caller gets a
    KeyboardInterrupt (several processes leave together, as on SIGTERM)."""
    return self.cause == "Ctrl-C" and not self.multi

  def reached(self, step: int) -> bool:
    if self.multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.flag

  def close(self) -> None:
    for signum, previous in self.previous.items():
      if previous is not None:
        signal.signal(signum, previous)
    self.previous = {}


class _Progress:
  """What a run prints (process 0): one line per train record, eval and
  checkpoint, and on a terminal a tqdm bar (rate, ETA, latest loss).

  Log lines are written above the bar (tqdm's external_write_mode), so
  neither breaks the other.
  """

  def __init__(self, start: int, total: int):
    self.total = total
    self.bar = None
    self._handler = absl_logging.get_absl_handler().python_handler
    self._emit = self._handler.emit
    if sys.stderr.isatty() and jax.process_index() == 0:
      self.bar = tqdm.tqdm(total=total, initial=start, unit="step", desc="train", file=sys.stderr,
                           dynamic_ncols=True, smoothing=0.3)

      def emit_above_the_bar(record):
        with tqdm.tqdm.external_write_mode(file=sys.stderr):
          self._emit(record)

      self._handler.emit = emit_above_the_bar

  def first_step(self, exp: experiment.Experiment, batch: dict[str, np.ndarray],
                 num_examples: int, step_metrics: Any) -> None:
    """After the first step (compilation): how long an epoch is, in steps."""
    jax.block_until_ready(step_metrics)
    segments = [k for k in batch if k.endswith("_segmentation")]
    rows = len(next(iter(batch.values())))
    examples = int(batch[segments[0]].max(axis=1).sum()) if segments else rows
    examples *= jax.process_count()  # Every process feeds an equal share.
    logging.info("first step done (it compiled the step); %d examples a step, so an epoch of "
                 "%s examples is ~%s steps", examples, f"{num_examples:,}",
                 f"{max(num_examples // max(examples, 1), 1):,}")

  def log(self, step: int, record: dict[str, float]) -> None:
    eta = (self.total - step) / max(record["steps_per_sec"], 1e-9)
    logging.info("step %d/%d | loss %.4f | acc %.3f | %.2f steps/s | %.0f tokens/s | ETA %s",
                 step, self.total, record["loss"], record["accuracy"], record["steps_per_sec"],
                 record["tokens_per_sec"], _duration(eta))
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)

  def eval_done(self, split: str, step: int, metrics: dict[str, Any], seconds: float) -> None:
    shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                       if isinstance(v, float) and "_len_" not in k)
    logging.info("eval %s step %d | %s | %.1f s", split, step, shown, seconds)

  def saved(self, step: int, seconds: float, in_background: bool) -> None:
    logging.info("checkpoint step %d %s in %.1f s", step,
                 "handed to the background writer" if in_background else "written", seconds)

  def tick(self, step: int) -> None:
    if self.bar is not None:
      self.bar.update(step - self.bar.n)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
      self._handler.emit = self._emit


class _Profiler:
  """`train.profile_steps` steps traced with jax.profiler into WORKDIR/profile/.

  Tracing starts at the third step of a start, so compilation and first-run
  allocations stay out of it, and each step is annotated (StepTraceAnnotation)
  so TensorBoard's profile tab and Perfetto show step boundaries.
  """

  def __init__(self, workdir: str, start_step: int, num_steps: int):
    self.directory = str(epath.Path(workdir) / "profile")
    self.first, self.last = start_step + 3, start_step + 2 + num_steps
    self.enabled, self.tracing = num_steps > 0 and jax.process_index() == 0, False

  @contextlib.contextmanager
  def step(self, step: int):
    """Around the dispatch of `step`."""
    if not self.enabled or not self.first <= step <= self.last:
      yield
      return
    if step == self.first:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.tracing = True
      logging.info("profiling steps %d-%d into %s", self.first, self.last, self.directory)
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      yield

  def after(self, step: int, step_metrics: Any) -> None:
    """Stops once the last traced step has run on the device."""
    if self.tracing and step == self.last:
      jax.block_until_ready(step_metrics)
      self.close()

  def close(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
      logging.info("profile written to %s (tensorboard --logdir %s, or the .trace.json.gz in "
                   "https://ui.perfetto.dev)", self.directory, self.directory)


def _run_summary(exp: experiment.Experiment, config: Any) -> str:
  """One line on what trains: the model, its size, what a step holds."""
  lengths = {"seq2seq": (config.data.max_input_len, config.data.max_target_len),
             "lm": (0, config.data.max_target_len),
             "classify": (config.data.max_input_len, 0),
             "mlm": (config.data.max_input_len, 0)}[exp.kind]
  slots = config.train.batch_size * sum(lengths)
  return (f"{config.data.task} {exp.kind}, model {config.model.variant} {exp.model.sizes}: "
          f"{exp.param_count:,} parameters; a step is {config.train.batch_size} rows of "
          f"{'+'.join(str(n) for n in lengths if n)} tokens ({slots:,} token slots); "
          f"{config.train.num_steps:,} steps on mesh {dict(exp.mesh.shape)}")


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"
