"""Trains a config: `python launch/train.py --config=configs/wmt_spa.py --workdir=DIR`.

Rerunning the same command resumes from DIR's latest checkpoint. Config
fields are overridden with `--config.train.batch_size=32`; the config is
locked, so a misspelt field is an error naming it. DIR may be a bucket
(`--workdir=gs://bucket/run`).

Multi-process (one process per host; every process runs the same command):
pass `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` (or
set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID), or
`--distributed` alone on a Cloud TPU VM, a SLURM job or an Open MPI launch,
where JAX detects all three. Processes started with different configs are
refused. Exit status: 0 when done or when stopped by SIGTERM after
checkpointing (on every process at the same step); 1 with a one-line error
for a bad config, a run directory this config may not continue (or that
another run holds), a diverged run or a full disk; non-zero when another
process of the run died.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from transformer_research import cli
from transformer_research import distributed
from transformer_research import runtime
from transformer_research import storage
from transformer_research import train_loop


def _env_int(name: str) -> int | None:
  return int(os.environ[name]) if os.environ.get(name) else None


_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<task>.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, logs "
                               "(a local path or gs://bucket/dir).")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Start jax.distributed with JAX's cluster "
                                 "auto-detection (Cloud TPU, SLURM, Open MPI).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                                   "HOST:PORT of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", _env_int("JAX_NUM_PROCESSES"),
                                      "Number of processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", _env_int("JAX_PROCESS_ID"),
                                   "This process's index in a multi-process run.")
_CPU_COLLECTIVES = flags.DEFINE_enum("cpu_collectives", "gloo", ["gloo", "mpi"],
                                     "Collectives between processes whose devices are CPUs.")
_INIT_TIMEOUT = flags.DEFINE_integer("init_timeout_s", 300, "Seconds to wait for the coordinator "
                                     "and every process to connect.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer("heartbeat_timeout_s", 100, "Seconds without a "
                                          "heartbeat before a process is taken for dead and the "
                                          "others stop.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Process settings, then jax.distributed: neither may follow a JAX backend
  # call (runtime.py; JAX refuses to start distributed afterwards). Setting the
  # cache directory touches no backend; the first compilation creates it.
  runtime.keep_freed_memory()
  runtime.cache_compilations(_WORKDIR.value)
  multi = distributed.initialize(
      coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value, auto_detect=_DISTRIBUTED.value,
      cpu_collectives=_CPU_COLLECTIVES.value, init_timeout_s=_INIT_TIMEOUT.value,
      heartbeat_timeout_s=_HEARTBEAT_TIMEOUT.value)
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  # The workdir first: the same-config check's collective is the first
  # compilation, which creates WORKDIR/compilation_cache.
  storage.check_workdir(_WORKDIR.value)
  distributed.check_same_config(_CONFIG.value)
  distributed.check_shared_workdir(_WORKDIR.value)
  with distributed.fail_fast(cli.user_error_line):
    train_loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if multi:  # Leave together: process 0 hosts the coordinator the others need until then.
    jax.distributed.shutdown()


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
