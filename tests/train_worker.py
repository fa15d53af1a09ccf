"""Subprocess entry point for the multi-host tests (not a test module).

  python tests/train_worker.py WORKDIR multihost=I,P,PORT,STEPS[,STEPS...]
      # process I of P (4 CPU devices each, gloo): trains to each STEPS in turn
      # on the same workdir, so later calls resume collectively.

It uses `tiny_setup.task_config()`; extra `key=value` args (dotted config
names, Python literals) override it. Run with `tests/` on PYTHONPATH (the
tests do), so `tiny_setup` imports.
"""

import ast
import logging
import os
import sys


def main(workdir: str, mode: str, *overrides: str) -> None:
  name, value = mode.split("=")
  if name != "multihost":
    raise SystemExit(f"mode={mode!r}: expected multihost=I,P,PORT,STEPS...")
  process_id, num_processes, port, *steps = (int(v) for v in value.split(","))
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  import jax  # After XLA_FLAGS: the device count is read at first use.
  import tiny_setup
  from transformer_research import train_loop

  config_overrides = {k: ast.literal_eval(v) for k, v in (o.split("=", 1) for o in overrides)}
  logging.getLogger().setLevel(logging.INFO)  # The test reads the "resumed from" line.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=60)
  for num_steps in steps:
    train_loop.train_and_evaluate(
        tiny_setup.task_config(**{**config_overrides, "train.num_steps": num_steps}), workdir)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(*sys.argv[1:])
