"""Subprocess entry point for the kill test (not a test module).

  python tests/train_worker.py WORKDIR kill_after=N      # SIGKILL itself once
                                                         # step N's checkpoint is on disk

It uses `tiny_setup.task_config()`; extra `key=value` args (dotted config
names, Python literals) override it. Run with `tests/` on PYTHONPATH (the
tests do), so `tiny_setup` imports. (Multi-process runs are tested through
launch/train.py itself, in multihost_test.py.)
"""

import ast
import os
import signal
import sys


def main(workdir: str, mode: str, *overrides: str) -> None:
  name, value = mode.split("=")
  import jax
  import tiny_setup
  from transformer_research import checkpointing
  from transformer_research import train_loop

  config_overrides = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in overrides)}
  if name == "kill_after":
    kill_step, save = int(value), checkpointing.Checkpointer.save

    def save_then_die(self, state, data_state, metrics=None):
      save(self, state, data_state, metrics)
      if int(jax.device_get(state.step)) == kill_step:
        self.wait()
        os.kill(os.getpid(), signal.SIGKILL)

    checkpointing.Checkpointer.save = save_then_die
    train_loop.train_and_evaluate(tiny_setup.task_config(**config_overrides), workdir)
    raise SystemExit(f"step {kill_step} was never checkpointed")
  raise SystemExit(f"unknown mode {mode!r}: expected kill_after=N")


if __name__ == "__main__":
  main(*sys.argv[1:])
