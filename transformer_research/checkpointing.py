"""Orbax checkpoints of the whole train state, the data position and the open log window.

Resume order (`Checkpointer.resume`), so rerunning the same command continues
a run with no extra flag:

1. the workdir's own checkpoints in `WORKDIR/checkpoints/`, newest first. A
   checkpoint that cannot be read (corrupt, half-written) is moved aside to
   `checkpoints/corrupt-<step>/` with a warning, so training can pass that
   step again, and the one before it is tried. A readable checkpoint that
   does not match the config's state (another model size, another optimizer)
   stops the run with an error naming the step and the first mismatching
   leaf: a run directory with checkpoints is never silently started over;
2. only when the run directory holds no checkpoint at all:
   `config.checkpoint.init_from` (a workdir, its `checkpoints/` directory or
   one step directory): parameters only, so optimizer, step, rng and data
   position start fresh; all of them, or with `checkpoint.init_rules` those
   the rules map, from a model of another kind (`warm_start.py`);
3. otherwise from scratch.

A restore targets the abstract state (`Experiment.abstract_state`: shapes,
dtypes and shardings, no memory), and the state is initialised only when
nothing is restored, so a resume never holds two copies of it. Arrays are
restored onto the shardings of the current mesh, so a run saved on one mesh
resumes on any other.

Each step directory holds `params` (so warm starts read only them), `train`
(optimizer state, step, rng), `extra` (JSON: the data iterator position, the
same on every process, and the train-record window still open at that step)
and, when `checkpoint.best_metric` is set and the step was an eval step,
Orbax's `metrics` item (every number of that eval), which is what keeps best-N
checkpoints across restarts, also when a restart ranks by another metric.
Paths go through `etils.epath`, so the workdir may be a bucket (`gs://...`).
"""

import contextlib
import dataclasses
import logging
import math
from typing import Any, Callable

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from transformer_research import distributed
from transformer_research import storage
from transformer_research import warm_start
from transformer_research.training import TrainState


class IncompatibleCheckpoint(ValueError):
  """A readable checkpoint whose state does not match the config's."""


@dataclasses.dataclass(frozen=True)
class Resumed:
  """Where a run starts: its state and what the checkpoint carried besides."""
  state: TrainState
  data_state: dict | None  # The iterator position; None = from the start.
  window: dict | None  # The open train-record window at the saved step.
  origin: str  # One line for the log and runs.jsonl.
  elapsed_s: float = 0.0  # Wall time the run had used at the saved step (train.max_minutes).


class Checkpointer:
  """`CheckpointManager` over `WORKDIR/checkpoints` with this project's items."""

  def __init__(self, workdir: str, checkpoint_config: Any):
    """Args:
      workdir: the run directory.
      checkpoint_config: `config.checkpoint` (`max_to_keep`, `async_save`,
        `best_metric`, `best_mode`, `init_from`).
    """
    self.config = checkpoint_config
    keep = int(checkpoint_config.max_to_keep)
    if keep < 1:
      raise ValueError(f"config.checkpoint.max_to_keep={keep}: expected at least 1")
    policy = policies.LatestN(n=keep)
    best_fn = None
    metric, mode = checkpoint_config.best_metric, checkpoint_config.best_mode
    if mode not in ("max", "min"):  # Orbax checks it even without a metric.
      raise ValueError(f"config.checkpoint.best_mode={mode!r}: expected 'max' or 'min'")
    if metric:
      # A checkpoint saved while another best_metric ranked them (a resume may
      # change it) may lack this one: it ranks last, as one never evaluated.
      worst = math.inf if mode == "min" else -math.inf
      best_fn = lambda metrics: metrics.get(metric, worst)
      # The latest `keep` stay for resuming; the best `keep` stay as results.
      policy = policies.AnyPreservationPolicy([policy, policies.BestN(
          get_metric_fn=best_fn, reverse=mode == "min", n=keep,
          keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=bool(checkpoint_config.async_save),
        preservation_policy=policy, cleanup_tmp_directories=True, create=True,
        # best_fn is what makes Orbax write each checkpoint's metrics to
        # disk; without it BestN only sees the metrics of this process's saves.
        best_fn=best_fn, best_mode=checkpoint_config.best_mode)
    self.directory = storage.absolute(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_handlers())

  def save(self, state: TrainState, data_state: dict, window: dict,
           eval_metrics: dict | None = None, elapsed_s: float = 0.0,
           held_out: dict | None = None) -> None:
    """Starts a (collective, possibly async) save of `state` at its step.

    Every process calls this: arrays are written shard by shard by their
    owners. `eval_metrics` are the metrics of an eval made at this very step
    (None otherwise), so only eval checkpoints compete for "best". `held_out`
    identifies a validation split carved from the training files
    (`Task.data_identity`; read back by `held_out`).
    """
    step = int(jax.device_get(state.step))
    best = self.config.best_metric
    keep_metrics = None
    if best and eval_metrics is not None:
      if best not in eval_metrics:
        raise ValueError(f"config.checkpoint.best_metric={best!r}: the eval at step {step} "
                         f"reports {sorted(eval_metrics)}")
      # Every number of the eval, so a resume that ranks by another metric
      # still knows this checkpoint's value of it.
      keep_metrics = {name: float(value) for name, value in eval_metrics.items()
                      if isinstance(value, (int, float, np.number)) and not isinstance(value, bool)}
    with self._writing(step):
      self.manager.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(state.params),
          train=ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step,
                                       "rng": state.rng}),
          extra=ocp.args.JsonSave({"data": _same_on_every_process(data_state),
                                   "window": window, "elapsed_s": elapsed_s,
                                   **({"held_out": held_out} if held_out else {})})),
          metrics=keep_metrics, force=True)

  @contextlib.contextmanager
  def _writing(self, step: int | None):
    """A failed write (full disk, read-only directory) as one clear error."""
    try:
      yield
    except Exception as e:
      what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
      raise OSError(f"{what} could not be written to {self.directory} ({_short(e)}); the "
                    f"checkpoints already there are kept (latest: step "
                    f"{self.manager.latest_step()})") from e

  def resume(self, abstract: TrainState, init_state: Callable[[], TrainState]) -> Resumed:
    """Applies the resume order in the module docstring.

    Args:
      abstract: the config's state as `jax.ShapeDtypeStruct`s with shardings.
      init_state: makes a fresh state; called only when nothing is restored.

    Raises:
      IncompatibleCheckpoint: the newest readable checkpoint does not match
        `abstract` (names the step and the first mismatching leaf).
      ValueError: the run directory had checkpoints and none could be read.
    """
    moved = []
    for step in reversed(self.manager.all_steps()):
      try:
        saved = self.manager.item_metadata(step)
        if saved["params"] is None or saved["train"] is None:
          raise ValueError("no params or train metadata")
      except Exception as e:  # Unreadable metadata: a corrupt checkpoint.
        moved.append(self._move_aside(step, e))
        continue
      where = f"checkpoint step {step} in {self.directory}"
      check_compatible(saved["params"], abstract.params, where, "params")
      check_compatible(saved["train"], _train_item(abstract), where, "train")
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract.params),
            train=ocp.args.StandardRestore(_train_item(abstract)),
            extra=ocp.args.JsonRestore()))
      except Exception as e:  # Missing or truncated files.
        moved.append(self._move_aside(step, e))
        continue
      train, extra = restored["train"], restored["extra"]
      state = TrainState(train["step"], restored["params"], train["opt_state"], train["rng"])
      return Resumed(state, _this_process(extra["data"]), extra.get("window"),
                     f"resumed from {self.directory} step {step}", _elapsed_s(extra))
    moved = moved or sorted(str(p) for p in _corrupt_dirs(self.directory))
    if moved:
      raise ValueError(
          f"no checkpoint in {self.directory} could be read (moved aside: {', '.join(moved)}); "
          "nothing else was changed. To start this run over, use a new --workdir.")
    state = init_state()
    if self.config.init_from and self.config.get("init_rules", ()):
      params, origin = warm_start.load(self.config.init_from, self.config.init_rules,
                                       abstract.params, state.params)
      return Resumed(state._replace(params=params), None, None, origin)
    if self.config.init_from:
      directory, step = warm_start.locate_source(self.config.init_from)
      params = restore_params(epath.Path(directory) / str(step), abstract.params)
      return Resumed(state._replace(params=params), None, None,
                     f"params from {directory} step {step}")
    return Resumed(state, None, None, "from scratch")

  def _move_aside(self, step: int, error: Exception) -> str:
    """Renames an unreadable step directory so the step can be saved again."""
    source = self.directory / str(step)
    target = self.directory / f"corrupt-{step}"
    suffix = 1
    while target.exists():  # The same step may go bad again after a retrain.
      target, suffix = self.directory / f"corrupt-{step}.{suffix}", suffix + 1
    if jax.process_index() == 0:
      source.rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"checkpoint_moved_aside_{step}")
    logging.warning("checkpoint step %d in %s cannot be read (%s); moved it to %s and trying "
                    "the previous one", step, self.directory, _short(error), target)
    self.manager.reload()
    return str(target)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def wait(self) -> None:
    """Blocks until async saves are on disk (before exiting, or in tests)."""
    with self._writing(None):
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def restore_params(path: str, abstract: Any) -> Any:
  """Parameters of the latest (or the given) step under `path`, resharded.

  Args:
    path: a workdir, its `checkpoints/` directory or one step directory.
    abstract: the parameters as `jax.ShapeDtypeStruct`s with the shardings
      to restore onto (`Experiment.abstract_state.params`).
  """
  path, step = warm_start.locate(path)
  manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_handlers=_handlers())
  check_compatible(manager.item_metadata(step)["params"], abstract,
                   f"checkpoint step {step} in {path}", "params")
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract)))["params"]
  manager.close()
  return restored


def checkpoint_steps(workdir: str) -> list[int]:
  """Saved (finalized) steps under WORKDIR/checkpoints, oldest first ([] if
  none), listed as `warm_start.locate` lists them: not through an Orbax
  manager, whose construction is a collective in a multi-process run."""
  directory = storage.absolute(workdir) / "checkpoints"
  return sorted(ocp.utils.checkpoint_steps(directory)) if directory.is_dir() else []


def has_checkpoint(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints holds a saved step, by a plain listing: an Orbax
  manager's construction is a collective in a multi-process run, and the
  processes may see the directory at different moments of its creation."""
  directory = storage.absolute(workdir) / "checkpoints"
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def time_used_s(workdir: str, step: int) -> float:
  """The wall time a run had used at its checkpoint of `step` (0 if it predates the record)."""
  return _elapsed_s(_read_extra(workdir, step))


def held_out(workdir: str, step: int) -> dict | None:
  """The validation split's identity saved with the checkpoint of `step` (None
  where the split is not carved from training files, or saved before this was)."""
  return _read_extra(workdir, step).get("held_out")


def _read_extra(workdir: str, step: int) -> dict:
  """The JSON item of a checkpoint (data position, log window, time used), read only."""
  manager = ocp.CheckpointManager(storage.absolute(workdir) / "checkpoints",
                                  options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_handlers=_handlers())
  extra = manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"]
  manager.close()
  return extra


def _elapsed_s(extra: dict) -> float:
  """The wall time recorded in a checkpoint's `extra` item (0 before it was recorded)."""
  return float(extra.get("elapsed_s", 0.0))


def budget_used(elapsed_s: float, max_minutes: float) -> bool:
  """Whether `elapsed_s` of wall time uses up `train.max_minutes` (0: no budget).

  The one rule for both the loop (stop now) and `launch/sweep.py` (a run
  stopped by its budget is finished), so they never disagree.
  """
  return bool(max_minutes) and elapsed_s >= 60.0 * max_minutes


def check_compatible(saved: Any, expected: Any, where: str, item: str) -> None:
  """Refuses a checkpoint item whose leaves differ from the config's.

  Leaves are compared by path (dict keys, attribute names and indices, so an
  optimizer state saved as dicts matches its NamedTuples), shape and dtype.

  Raises:
    IncompatibleCheckpoint naming the first leaf (in sorted path order) that
    is missing, extra, or of another shape or dtype, so a wrong `--workdir`, a
    changed model size or a changed optimizer is caught before anything is
    written.
  """
  saved_leaves, expected_leaves = _leaves(saved), _leaves(expected)
  for name in sorted(set(saved_leaves) | set(expected_leaves)):
    if saved_leaves.get(name) != expected_leaves.get(name):
      def describe(leaf):
        return "missing" if leaf is None else f"shape {leaf[0]} dtype {leaf[1]}"
      raise IncompatibleCheckpoint(
          f"{where} does not match this config: {item} leaf {name} is "
          f"{describe(saved_leaves.get(name))} in the checkpoint and "
          f"{describe(expected_leaves.get(name))} in the config. Nothing was changed; use a "
          "new --workdir (or warm-start one from this run with "
          "--config.checkpoint.init_from=...).")


def _leaves(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  return {_path_name(path): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _path_name(path: tuple) -> str:
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _corrupt_dirs(directory: epath.Path) -> list[epath.Path]:
  if not directory.is_dir():
    return []
  return [d for d in directory.iterdir() if d.name.startswith("corrupt-")]


def _train_item(state: TrainState) -> dict[str, Any]:
  return {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}


def _handlers() -> dict[str, ocp.CheckpointHandler]:
  """Handlers per item, so a manager that did not save can read metadata."""
  return {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
          "extra": ocp.JsonCheckpointHandler()}


def _same_on_every_process(data_state: dict) -> dict:
  """The data iterator's state, checked equal on every process.

  The pipeline plans the global batch identically everywhere (see
  data/pipeline.py), so one state serves any number of processes on resume.
  """
  states = distributed.gather_json(data_state)
  if any(state != states[0] for state in states):
    raise AssertionError(f"data iterator states differ across processes: {states}")
  return data_state


def _this_process(saved: Any) -> dict:
  """The saved data state (older checkpoints kept one per process)."""
  return saved[0] if isinstance(saved, list) else saved


def _short(error: Exception) -> str:
  """One line of an exception: its start (what failed) and its end (why)."""
  text = " ".join(f"{type(error).__name__}: {error}".split())
  return text if len(text) <= 400 else f"{text[:200]} ... {text[-200:]}"
