"""Runs a launch script with one fault injected (not a test module).

    python tests/fault_injection.py FAULT launch/train.py --config=... --workdir=...

The script runs as `python launch/train.py ...` would (same argv, as
`__main__`); the fault SIGKILLs the process at one chosen moment, as a
preemption without notice or the OOM killer would:

    kill_before_commit=N  step N's checkpoint is written (in the background,
                          while training goes on) but not yet committed
    kill_after_commit=N   right after step N's checkpoint is committed
    kill_after_record=N   right after the train record of step N reached metrics.jsonl
    torn_record=N         halfway through writing the train record of step N

or, instead of a kill, makes time pass at a known rate:

    clock_tick=S          the training loop's clock advances S seconds at each
                          reading, so a time budget (train.max_minutes) runs out
                          after a known amount of work, not of real seconds

or, for a script that reads a run (evaluate.py, translate.py, export.py):

    saved_over=N          when the script starts reading step N's checkpoint, it
                          is renamed to a step after the newest, as a run still
                          training in the directory saves a newer checkpoint and
                          deletes an old one (config.checkpoint.max_to_keep)

or, in place of a device's failure:

    out_of_memory=0       the first step's results report XLA's out-of-memory
                          error (RESOURCE_EXHAUSTED), as a step too large for the
                          device does; no test can make that happen safely, as
                          the allocation it takes may succeed under overcommit

or, at a terminal (SIGINT raising KeyboardInterrupt):

    swallowed_ctrl_c=0    a Ctrl-C while the task is built (train.py's start-up,
                          before the loop takes Ctrl-C over), whose
                          KeyboardInterrupt a C extension swallows and turns into
                          another error, as dm-tree did under SentencePiece training

Faults hook Orbax's commit (the rename of a step's temporary directory), the
one metrics writer and the loop module's `time`, so nothing in the project is
changed for the test.
"""

import json
import os
import runpy
import signal
import sys
import time


def _die() -> None:
  sys.stdout.flush()
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


def _hook_commit(step: int, before: bool) -> None:
  from orbax.checkpoint._src.path import atomicity  # pylint: disable=g-import-not-at-top
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize_then_maybe_die(self):
    if before and self._final_path.name == str(step):  # pylint: disable=protected-access
      _die()
    await finalize(self)
    if not before and self._final_path.name == str(step):  # pylint: disable=protected-access
      _die()

  atomicity.AtomicRenameTemporaryPath.finalize = finalize_then_maybe_die


def _hook_record(step: int, torn: bool) -> None:
  from transformer_research import metrics  # pylint: disable=g-import-not-at-top
  write = metrics.MetricsWriter.write

  def write_then_maybe_die(self, at_step, split, scalars):
    if at_step != step or split != "train":
      return write(self, at_step, split, scalars)
    if torn:
      line = json.dumps({"step": at_step, "split": split, **scalars})
      with open(self.path, "a") as f:
        f.write(line[:len(line) // 2])
    else:
      write(self, at_step, split, scalars)
    _die()

  metrics.MetricsWriter.write = write_then_maybe_die


def _tick_clock(seconds: float) -> None:
  import types  # pylint: disable=g-import-not-at-top
  from transformer_research import train_loop  # pylint: disable=g-import-not-at-top
  readings = iter(range(10**9))
  train_loop.time = types.SimpleNamespace(time=lambda: seconds * next(readings))


def _save_over_when_read(step: int) -> None:
  from transformer_research import checkpointing  # pylint: disable=g-import-not-at-top
  restore_params = checkpointing.restore_params

  def rename_then_restore(path, abstract):
    path = str(path)
    if os.path.basename(path) == str(step):
      checkpoints = os.path.dirname(path)
      newest = max(int(name) for name in os.listdir(checkpoints) if name.isdigit())
      os.rename(path, os.path.join(checkpoints, str(newest + 1)))
    return restore_params(path, abstract)

  checkpointing.restore_params = rename_then_restore


def _swallow_ctrl_c(_) -> None:
  from transformer_research.data import tasks  # pylint: disable=g-import-not-at-top
  build = tasks.build

  def interrupted_build(*args, **kwargs):
    try:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)  # The handler runs here, and raises KeyboardInterrupt.
    except KeyboardInterrupt:
      raise AttributeError("'str' object has no attribute 'keys'") from None
    return build(*args, **kwargs)

  tasks.build = interrupted_build


def _out_of_memory(_) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from transformer_research import train_loop  # pylint: disable=g-import-not-at-top

  def exhausted(*args, **kwargs):
    raise jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Out of memory allocating 3850099231360 bytes.")

  train_loop._Progress.first_step = exhausted  # pylint: disable=protected-access


def main(fault: str, script: str, *args: str) -> None:
  name, value = fault.split("=")
  if name == "clock_tick":
    _tick_clock(float(value))
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")
    return
  hooks = {"kill_before_commit": lambda n: _hook_commit(n, before=True),
           "kill_after_commit": lambda n: _hook_commit(n, before=False),
           "kill_after_record": lambda n: _hook_record(n, torn=False),
           "torn_record": lambda n: _hook_record(n, torn=True),
           "saved_over": _save_over_when_read, "swallowed_ctrl_c": _swallow_ctrl_c,
           "out_of_memory": _out_of_memory}
  if name not in hooks:
    raise SystemExit(f"fault={fault!r}: expected one of {sorted(hooks)}=STEP or clock_tick=S")
  hooks[name](int(value))
  sys.argv = [script, *args]
  runpy.run_path(script, run_name="__main__")
  raise SystemExit(f"the fault {fault} never happened")


if __name__ == "__main__":
  main(*sys.argv[1:])
