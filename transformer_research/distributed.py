"""Multi-process runs: starting `jax.distributed`, and what the processes share.

A pod run is one process per host, all running the same command. This module
is the one place that knows about more than one process:

* `initialize` checks the launch flags and starts `jax.distributed` before
  anything touches a JAX backend (JAX refuses to start it afterwards), with
  bounded waits: a coordinator that never answers is an error after
  `init_timeout_s`, a process that dies is noticed by the others within
  `heartbeat_timeout_s`.
* `check_same_config` refuses processes started with different configs,
  naming the first field that differs.
* `check_shared_workdir` refuses a run directory that is not one directory
  for every process (a host-local path on a pod): each host would save only
  its own checkpoint shards, and no host could restore them.
* `check_same_data` refuses processes that read different training or eval
  data (a stale copy of the files on one host): each would take its rows of
  the global batch from its own copy, silently mixing two datasets.
* `broadcast_bytes` and `process_0_first` let process 0 do a job once
  (train a tokenizer, prepare a TFDS dataset) and the others follow without
  assuming a disk shared by every host: bytes travel through JAX collectives,
  and a dataset prepared into a shared directory (a bucket) is found there.
* `gather_json` collects one small JSON value per process on every process
  (the data iterator states a checkpoint holds).
* `raise_together` runs a check of host-local state (a file on each host's
  disk) so that when it fails on one process, every process stops with that
  process's reason instead of a lost peer in its next collective.
* `fail_fast` makes a process that raises exit at once, so the others stop
  within the heartbeat timeout instead of waiting for it in a collective.

With one process every function here is a cheap no-op, so callers never
branch on the process count.
"""

import contextlib
import hashlib
import json
import os
import sys
import threading
import traceback
from typing import Any, Callable, Mapping, TypeVar
import uuid

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from transformer_research import configs
from transformer_research.data import pipeline


# JAX's own connection deadline is set this much later than --init_timeout_s.
_JAX_DEADLINE_MARGIN_S = 30


_T = TypeVar("_T")


class LaunchError(ValueError):
  """Bad multi-process launch flags, or processes that could not form a run."""


def initialize(*, coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, auto_detect: bool, cpu_collectives: str = "gloo",
               init_timeout_s: int = 300, heartbeat_timeout_s: int = 100) -> bool:
  """Starts `jax.distributed` if the flags ask for a multi-process run.

  Must run before any JAX backend call (`jax.devices()`, `jax.default_backend()`,
  any computation). Nothing here makes one: the CPU collectives are set from
  the flag (they only matter to the CPU backend, so they are harmless on TPU
  and GPU hosts, where JAX also builds a CPU client).

  Args:
    coordinator_address: HOST:PORT of process 0; None with `auto_detect` lets
      JAX find the cluster (Cloud TPU, SLURM, Open MPI, ...).
    num_processes, process_id: this process's place; needed with a
      coordinator address, detected otherwise.
    auto_detect: `--distributed`: start even without the three flags above.
    cpu_collectives: "gloo" or "mpi", for processes whose devices are CPUs.
    init_timeout_s: how long to wait for the coordinator and every process.
    heartbeat_timeout_s: after this long without a heartbeat a process is
      taken for dead and the others stop with an error.

  Returns:
    True if `jax.distributed` was started.

  Raises:
    LaunchError: inconsistent flags (naming them), or the processes did not
      all connect within `init_timeout_s`.
  """
  given = {name: value for name, value in (("--num_processes", num_processes),
                                           ("--process_id", process_id)) if value is not None}
  if coordinator_address is None and not auto_detect:
    if given:
      raise LaunchError(f"{' and '.join(given)} given without --coordinator_address=HOST:PORT; "
                        "pass it too, or --distributed to detect the cluster")
    return False
  if coordinator_address is not None:
    host, _, port = coordinator_address.rpartition(":")
    if not host or not port.isdigit():
      raise LaunchError(f"--coordinator_address={coordinator_address!r}: expected HOST:PORT")
    if num_processes is None or process_id is None:
      raise LaunchError("--coordinator_address needs --num_processes and --process_id")
  if num_processes is not None and num_processes < 1:
    raise LaunchError(f"--num_processes={num_processes}: expected at least 1")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise LaunchError(f"--process_id={process_id} is out of range for --num_processes="
                      f"{num_processes}: expected 0 to {num_processes - 1}")
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  where = coordinator_address or "the auto-detected coordinator"
  who = f"process {process_id} of {num_processes}" if process_id is not None else "this process"
  message = (f"error: {who}: the coordinator at {where} did not answer, or not every process "
             f"connected, within --init_timeout_s={init_timeout_s}; check that process 0 is "
             "running, that every process got the same --coordinator_address and "
             "--num_processes, and that process 0's port is reachable")
  # JAX aborts the whole process (a C++ fatal error, no exception) when its own
  # deadline passes, so a watchdog with a shorter deadline gives the one-line error.
  watchdog = threading.Timer(init_timeout_s, _give_up, args=(message,))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=init_timeout_s + _JAX_DEADLINE_MARGIN_S,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
  except (RuntimeError, ValueError) as e:  # XlaRuntimeError is a RuntimeError.
    raise LaunchError(f"{who}: could not start jax.distributed with {where}: "
                      f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from None
  finally:
    watchdog.cancel()
  return True


def _give_up(message: str) -> None:
  print(message, file=sys.stderr, flush=True)
  os._exit(1)  # pylint: disable=protected-access  (the main thread is blocked inside JAX)


@contextlib.contextmanager
def fail_fast(user_error_line: Callable[[Exception], str | None] = lambda error: None):
  """On an exception in a multi-process run, report it and exit at once (status 1).

  The other processes are then waiting in a collective for this one; a normal
  interpreter exit would wait for them in JAX's shutdown barrier (minutes),
  while exiting now lets them notice within the heartbeat timeout and stop too.
  With one process the exception propagates as usual.

  Args:
    user_error_line: the one line of an error a user can fix, None for others
      (`cli.user_error_line`), which keep their traceback.
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    message = user_error_line(e)
    if message is None:
      traceback.print_exc()
      message = f"{type(e).__name__}: {e}"
    print(f"error: process {jax.process_index()}: {message}", file=sys.stderr, flush=True)
    os._exit(1)  # pylint: disable=protected-access


def gather_json(obj: Any) -> list:
  """[value of process 0, value of process 1, ...] on every process."""
  if jax.process_count() == 1:
    return [obj]
  raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.array([raw.size], np.int32)))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:raw.size] = raw
  gathered = np.asarray(multihost_utils.process_allgather(padded))  # [P, L]
  return [json.loads(bytes(gathered[i, :int(lengths[i, 0])]).decode())
          for i in range(jax.process_count())]


def raise_together(check: Callable[[], _T]) -> _T:
  """`check()` on every process; when it raises on any, it raises on every one.

  For what each host finds on its own disk (the data files, a warm-start
  source): a process that raised alone left the others in their next
  collective, where they stopped on a lost peer ("Gloo AllGather failed:
  Connection closed by peer"), or on a TPU at the heartbeat timeout, naming
  neither the process nor the reason. `check` must run no collective.

  Returns:
    what `check` returned.

  Raises:
    its own exception on a process where `check` raised; on the others,
    LaunchError naming the first process where it did and its message.
  """
  if jax.process_count() == 1:
    return check()
  try:
    result, failure = check(), None
  except Exception as e:  # pylint: disable=broad-except  (reported on every process below)
    result, failure = None, e
  # The message as raised: the CLI prints the LaunchError below on one line.
  reasons = gather_json(None if failure is None else str(failure) or type(failure).__name__)
  if failure is not None:
    raise failure
  for index, reason in enumerate(reasons):
    if reason is not None:
      raise LaunchError(f"process {index} stopped: {reason}")
  return result


def broadcast_bytes(data: bytes | None) -> bytes:
  """Process 0's `data` on every process (the others pass None).

  Two collectives, the length and then the bytes, so no process needs to
  know the size in advance and no file has to be visible to every host.
  """
  if jax.process_count() == 1:
    return data
  is_source = jax.process_index() == 0
  if is_source and data is None:
    raise ValueError("broadcast_bytes: process 0 must pass the bytes")
  size = int(multihost_utils.broadcast_one_to_all(
      np.array([len(data) if is_source else 0], np.int64))[0])
  buffer = np.zeros(size, np.uint8)
  if is_source:
    buffer[:] = np.frombuffer(data, np.uint8)
  return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer)))


def process_0_first(fn: Callable[[], Any], name: str) -> Any:
  """Runs `fn` on process 0, then (after a barrier) on the other processes.

  For a job that writes shared state, such as TFDS `download_and_prepare`:
  process 0 does it alone; when the others follow, a directory every host
  sees (a bucket) already holds the result and their call finds it, while a
  host-local directory gets its own copy. No two processes ever write the
  same directory at once.
  """
  if jax.process_count() == 1:
    return fn()
  result = fn() if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(f"process_0_first:{name}")
  return result if jax.process_index() == 0 else fn()


def check_same_config(config: Any) -> None:
  """Refuses to start when the processes were given different configs.

  A hash of the config is compared first (one small collective); only on a
  mismatch are the configs gathered, so every process can name the first
  differing field and all of them stop with the same error.

  Raises:
    LaunchError: naming the first field (in config order) whose value
      differs from process 0's, and both values.
  """
  if jax.process_count() == 1:
    return
  text = config.to_json_best_effort()  # Config order: what the first differing field is.
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8)
  digests = np.asarray(multihost_utils.process_allgather(digest))  # [P, 32]
  if (digests == digests[0]).all():
    return
  flat = [configs.flatten(json.loads(t)) for t in gather_json(text)]
  for index, other in enumerate(flat[1:], start=1):
    for key in list(flat[0]) + [k for k in other if k not in flat[0]]:
      mine, theirs = flat[0].get(key, "<missing>"), other.get(key, "<missing>")
      if mine != theirs:
        raise LaunchError(
            f"process {index} was started with a different config than process 0: {key} is "
            f"{theirs!r} there and {mine!r} on process 0; start every process with the same "
            "--config and overrides")


def check_same_data(identity: Mapping[str, Any], what: str, where: str) -> None:
  """Refuses to go on when the processes read different data.

  Every process reads a whole split and takes its rows of each global batch
  by position, so a batch is one batch only if every host holds the same
  examples; with a stale copy on one host the processes would mix two
  datasets, and an eval split of another length hangs them in a collective.
  Compared: the number of examples and their digest (`pipeline.TokenizedData`).

  Args:
    identity: this process's `{"num_examples", "data_sha256", ...}` (a
      training iterator's state, or `Task.data_identity`).
    what: the data, for the message ("training data", "data for the test split",
      "warm-start parameters").
    where: where it was read, for the message ("the run's data paths (...)").

  Raises:
    LaunchError: naming the first process whose data differs from process
      0's, the values that differ, and `where`.
  """
  if jax.process_count() == 1:
    return
  identities = gather_json(dict(identity))
  for index, other in enumerate(identities[1:], start=1):
    differs = pipeline.identity_changes(other, identities[0], "there", "on process 0")
    if differs:
      raise LaunchError(
          f"process {index} reads other {what} than process 0 ({differs}) at {where}: every "
          "process reads all of it; give every host the same files (or read them from one "
          "bucket)")


def check_shared_workdir(workdir: str) -> None:
  """Refuses a `workdir` that the processes do not all see as one directory.

  Process 0 writes a file with a fresh token there; after a barrier every
  process reads it back through its own `--workdir`, and all of them raise
  if any could not. Processes on one machine (the tests) or on hosts sharing
  a bucket or a network disk pass; a path on each host's own disk does not,
  before anything else is written.

  Raises:
    LaunchError: naming the processes that did not find process 0's file.
  """
  if jax.process_count() == 1:
    return
  token = broadcast_bytes(uuid.uuid4().hex.encode() if jax.process_index() == 0 else None)
  probe = epath.Path(workdir) / f".shared_check_{token.decode()}"
  if jax.process_index() == 0:
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.write_bytes(token)
  multihost_utils.sync_global_devices("check_shared_workdir:written")
  try:
    sees = probe.exists() and probe.read_bytes() == token
  except OSError:
    sees = False
  seen = np.asarray(multihost_utils.process_allgather(np.array([sees], np.int32)))[:, 0]
  if jax.process_index() == 0:
    probe.unlink()
  if not seen.all():
    blind = [int(i) for i in np.flatnonzero(seen == 0)]
    raise LaunchError(
        f"--workdir={workdir} is not one directory for every process: process(es) {blind} "
        "could not read the file process 0 wrote there. Checkpoints of a multi-host run are "
        "saved shard by shard by every host into one directory; use a directory every host "
        "sees (gs://BUCKET/DIR, or a shared disk)")
