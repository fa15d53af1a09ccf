"""The run directory: one run at a time, a history of its starts, and which
config may continue it.

    WORKDIR/lock         JSON {host, pid, start_time, heartbeat}: the run that owns it
    WORKDIR/runs.jsonl   one line per accepted start: time, host, origin, git
                         commit, library versions, the config
    WORKDIR/config.json  the config of the latest accepted start (the one
                         evaluate.py / translate.py build the model from)

A run directory continues one model. `check_continues` refuses a config that
would train another one (`model.*`, the data and tokenizer fields, the seed)
before anything is written; other fields (steps, learning rate, eval and
checkpoint intervals) may change, and the changes are logged. A directory
that lost a file its resume relies on (`checkpoints/`, or beside the
checkpoints `config.json` or a tokenizer model) is refused, never started
over or silently remade.

The lock is taken by process 0 and kept fresh by a heartbeat thread. A lock
is stale, and is taken over with a warning, when its holder ran on this host
and that process is gone, or when its heartbeat is older than
`stale_after_s` (a holder on another host that was preempted or killed).
`launch/evaluate.py`, `translate.py` and `plot.py` only read, and never take
the lock, so they work while a run trains.
"""

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import platform
import socket
import subprocess
import threading
import time
from typing import Any, Iterator

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from transformer_research import configs
from transformer_research import storage
from transformer_research.data import tasks
from transformer_research.data import tokenizers as tok_lib
from transformer_research.models import variants

# Fields a resumed run may not change: they define the model and the data it
# learns from. Paths to the same data may move, and eval-only data may change;
# `tokenizer_from` was read once, into the run directory, at the first start;
# how the same model is computed (remat) or fed (prefetch) may change too.
_FIXED_SECTIONS = ("model",)
_FIXED_FIELDS = ("seed",)
_FREE_MODEL_FIELDS = ("remat",)
_FREE_DATA_FIELDS = ("manual_dir", "tfds_data_dir", "bpemb_cache_dir", "train_path",
                     "eval_path", "num_eval_per_length", "eval_min_len", "eval_max_len",
                     "tokenizer_from", "prefetch")
# Fixed fields whose change not even a warm start (init_from) can bridge.
_NO_WARM_START = {
    "model.scan_layers": "scanned layers store their parameters stacked under one [layers] "
                         "axis, so checkpoints of one layout fit neither a resume nor a warm "
                         "start of the other",
}


class RunDirectoryInUse(RuntimeError):
  """Another live run holds the run directory's lock."""


@dataclasses.dataclass(frozen=True)
class _Holder:
  host: str
  pid: int
  start_time: float
  process_start: str  # /proc/<pid>/stat start time: tells a reused pid apart.
  heartbeat: float

  def describe(self) -> str:
    started = datetime.datetime.fromtimestamp(self.start_time).isoformat(timespec="seconds")
    return f"pid {self.pid} on host {self.host}, started {started}"


class RunLock:
  """`WORKDIR/lock`, held for the life of a training run (a context manager)."""

  def __init__(self, workdir: str, *, stale_after_s: float = 120.0, heartbeat_s: float = 15.0):
    self.path = epath.Path(workdir) / "lock"
    self._stale_after_s, self._heartbeat_s = stale_after_s, heartbeat_s
    self._me: _Holder | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock, or raises RunDirectoryInUse naming the live holder."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    self._me = _Holder(socket.gethostname(), os.getpid(), now, _process_start(os.getpid()), now)
    for _ in range(3):  # Another starter may race us for a stale lock.
      if self._create():
        break
      holder = self._read()
      if holder is not None and not self._is_stale(holder):
        raise RunDirectoryInUse(
            f"{self.path.parent} is in use by {holder.describe()} (lock file "
            f"{self.path}); one run per run directory. If that run is gone, its lock turns "
            f"stale within {self._stale_after_s:.0f} s of its last heartbeat.")
      logging.warning("taking over the stale lock %s of %s", self.path,
                      holder.describe() if holder else "an unreadable holder")
      try:  # Atomic: of two starters, one renames it and the other finds it gone.
        stale = self.path.parent / f"lock.stale-{os.getpid()}"
        self.path.rename(stale)
        stale.unlink()
      except FileNotFoundError:
        pass
    else:
      raise RunDirectoryInUse(f"could not take the lock {self.path}: other runs keep taking it")
    self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
    self._thread.start()

  def release(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    holder = self._read()
    if holder is not None and self._me is not None and (holder.host, holder.pid) == (
        self._me.host, self._me.pid):
      self.path.unlink()

  def _create(self) -> bool:
    return storage.create_exclusive(self.path, json.dumps(dataclasses.asdict(self._me)))

  def _read(self) -> _Holder | None:
    try:
      return _Holder(**json.loads(self.path.read_text()))
    except (OSError, ValueError, TypeError):  # Gone, or torn by a kill mid-write.
      return None

  def _is_stale(self, holder: _Holder) -> bool:
    if holder.host == socket.gethostname():
      return _process_start(holder.pid) != holder.process_start
    return time.time() - holder.heartbeat > self._stale_after_s

  def _beat(self) -> None:
    while not self._stop.wait(self._heartbeat_s):
      holder = self._read()
      if holder is None or (holder.host, holder.pid) != (self._me.host, self._me.pid):
        logging.error("the lock %s is no longer this run's (now: %s)", self.path,
                      holder.describe() if holder else "gone")
        return
      self._me = dataclasses.replace(self._me, heartbeat=time.time())
      storage.replace_text(self.path, json.dumps(dataclasses.asdict(self._me)))


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/lock for a run: process 0 takes it, and every process
  raises RunDirectoryInUse if it could not, so no process is left waiting in
  a collective for a run that will not start."""
  lock, error = RunLock(workdir), None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except RunDirectoryInUse as e:
      error = e
  if jax.process_count() > 1:
    refused = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
    if int(refused) and error is None:
      error = RunDirectoryInUse(f"{workdir} is in use (process 0's log names the holder)")
  if error is not None:
    raise error
  try:
    yield
  finally:
    if jax.process_index() == 0:
      lock.release()


def _process_start(pid: int) -> str:
  """The kernel's start time of `pid` ("" if no such process)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]  # Field 22, after the command name.
  except (OSError, IndexError):
    try:  # No /proc (macOS): whether the pid exists at all.
      os.kill(pid, 0)
      return "alive"
    except ProcessLookupError:
      return ""
    except PermissionError:
      return "alive"


def previous_config(workdir: str) -> Any | None:
  """WORKDIR/config.json as a config, or None for a new run directory.

  Fields the configs gained after the run started hold their defaults
  (`configs.saved_config`): the run ran with the behaviour they default to.
  """
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    return None
  return configs.saved_config(path)


def check_continues(previous: Any | None, config: Any, workdir: str,
                    checkpointed: bool = True) -> list[str]:
  """Refuses a config that would train another model in `workdir`.

  Args:
    previous: `previous_config(workdir)`.
    config: this start's config.
    workdir: the run directory, for the message.
    checkpointed: whether `workdir` holds a checkpoint (else the message
      cannot offer a warm start from it: a first start that failed before
      its first save, an out-of-memory step 0, left only its config).

  Returns:
    "field: old -> new" for every other field that changed (for the log).

  Raises:
    ValueError naming the first fixed field that differs and both values.
  """
  if previous is None:
    return []
  old, new = _with_model_sizes(previous), _with_model_sizes(config)
  changed = []
  for name in sorted(set(old) | set(new)):
    if old.get(name) == new.get(name):
      continue
    section, _, field = name.partition(".")
    fixed = ((section in _FIXED_SECTIONS and
              not (section == "model" and field in _FREE_MODEL_FIELDS)) or
             name in _FIXED_FIELDS or (section == "data" and field not in _FREE_DATA_FIELDS))
    if fixed:
      if not checkpointed:
        advice = ("(this run saved no checkpoint to warm-start from; to use the directory "
                  "for this config, remove it first)")
      elif name in _NO_WARM_START:
        advice = f"({_NO_WARM_START[name]})"
      else:
        advice = f"(or warm-start one from this run with --config.checkpoint.init_from={workdir})"
      raise ValueError(
          f"{workdir} holds a run with {name}={old.get(name)!r}; this config has "
          f"{new.get(name)!r}. A run directory continues one model and its data: nothing "
          f"was changed; use a new --workdir {advice}.")
    changed.append(f"{name}: {old.get(name)!r} -> {new.get(name)!r}")
  return changed


def _with_model_sizes(config: Any) -> dict[str, Any]:
  """`configs.flatten(config)` with the model's sizes as the model has them.

  A size field of -1 keeps the variant's value, so `model.d_model=-1` on a
  tiny run and `model.d_model=32` are one model: compared raw, a resume that
  spelt the size out (or dropped it) was refused as another model, naming -1.
  """
  flat = configs.flatten(config)
  try:
    sizes = variants.resolve(config["model"])  # A ConfigDict, or the dict of a test.
  except (KeyError, ValueError):  # An unknown variant or bad size: compared raw, refused later.
    return flat
  flat.update({f"model.{name}": value for name, value in dataclasses.asdict(sizes).items()})
  return flat


def check_not_orphaned(workdir: str) -> None:
  """Refuses a run directory whose checkpoints were removed.

  The loop creates `checkpoints/` before it writes any record, so records or
  a run history without that directory mean someone deleted it: starting over
  would silently replace the run's results.
  """
  workdir = epath.Path(workdir)
  if (workdir / "checkpoints").is_dir():
    return
  found = [name for name in ("metrics.jsonl", "runs.jsonl") if (workdir / name).exists()]
  if found:
    raise ValueError(
        f"{workdir} holds {' and '.join(found)} of an earlier run but no checkpoints/ "
        "directory (it was removed); starting over would replace those results. Nothing was "
        "changed: use a new --workdir, or move those files away to start this one over.")


def check_resumable(workdir: str, config: Any, previous: Any | None) -> None:
  """Refuses a run directory whose checkpoints outlived a file they need.

  Called when `workdir` holds checkpoints, before anything is written;
  `previous` is `previous_config(workdir)`. Without config.json nothing
  checks that `config` continues their model (`check_continues`); without
  the SentencePiece models they were trained with, the task would train new
  ones, which map text to other ids than the embeddings learnt.

  Raises:
    FileNotFoundError naming the missing file.
  """
  workdir = epath.Path(workdir)
  if previous is None:
    raise configs.missing_saved_config(workdir / "config.json")
  for name in sorted(set(tasks.sentencepiece_files(config.data) or ())):
    if not (workdir / name).exists():
      raise tok_lib.missing_model(workdir / name)


def record_start(workdir: str, config: Any, origin: str, changed: list[str]) -> None:
  """Appends this start to runs.jsonl and writes config.json (process 0 only)."""
  entry = {
      "time": datetime.datetime.now().isoformat(timespec="seconds"),
      "host": socket.gethostname(), "pid": os.getpid(), "origin": origin,
      "changed": changed, "git_commit": _git_commit(), "versions": _versions(),
      "config": json.loads(config.to_json_best_effort()),
  }
  workdir = epath.Path(workdir)
  storage.append_line(workdir / "runs.jsonl", json.dumps(entry, sort_keys=True))
  storage.replace_text(workdir / "config.json",
                       config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def _git_commit() -> str | None:
  """The commit of the code that runs (None outside a git checkout)."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return commit + ("+uncommitted changes" if dirty else "")


def _versions() -> dict[str, str]:
  from importlib import metadata  # Deferred: only a start needs it.
  versions = {"python": platform.python_version()}
  for package in ("jax", "jaxlib", "dm-haiku", "optax", "orbax-checkpoint",
                  "tensorflow-datasets", "numpy"):
    try:
      versions[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      versions[package] = "not installed"
  return versions
