"""Trains a config: `python launch/train.py --config=configs/wmt_spa.py --workdir=DIR`.

Rerunning the same command resumes from DIR's latest checkpoint. Config
fields are overridden with `--config.train.batch_size=32`; the config is
locked, so a misspelt field is an error naming it.

Multi-host: pass `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I` (or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID); on Cloud TPU `--distributed` alone lets JAX discover them.
Exit status: 0 when done or when stopped by SIGTERM after checkpointing.
"""

import logging as std_logging
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from transformer_research import runtime
from transformer_research import train_loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<task>.py[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, logs.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Initialise jax.distributed (TPU/SLURM "
                                 "auto-detection) even without the flags below.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                                   "HOST:PORT of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes",
                                      int(os.environ.get("JAX_NUM_PROCESSES", "0")) or None,
                                      "Number of processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", int(os.environ.get("JAX_PROCESS_ID", "-1")),
                                   "This process's index in a multi-process run.")
_CPU_COLLECTIVES = flags.DEFINE_string("cpu_collectives", "gloo", "CPU collectives for "
                                       "multi-process CPU runs (tests, debugging).")
_INIT_TIMEOUT = flags.DEFINE_integer("init_timeout_s", 300, "Seconds to wait for all processes.")


def _quiet_orbax(record) -> bool:
  """Drops Orbax's per-save INFO lines so the progress lines stay readable."""
  return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_quiet_orbax)
  runtime.keep_freed_memory()  # Before anything starts the jax backend (see runtime.py).
  runtime.cache_compilations(os.path.join(os.path.abspath(_WORKDIR.value), "compilation_cache"))
  if _COORDINATOR.value or _DISTRIBUTED.value:
    kwargs = {}
    if _COORDINATOR.value:
      if _NUM_PROCESSES.value is None or _PROCESS_ID.value < 0:
        raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
      kwargs = dict(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                    process_id=_PROCESS_ID.value)
    if jax.default_backend() == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", _CPU_COLLECTIVES.value)
    jax.distributed.initialize(initialization_timeout=_INIT_TIMEOUT.value, **kwargs)
  logging.info("process %d/%d, %d local / %d global devices (%s)", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  train_loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
