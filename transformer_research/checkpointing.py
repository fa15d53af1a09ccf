"""Orbax checkpoints of the whole train state plus the data iterator position.

Resume order (`Checkpointer.resume`), so rerunning the same command continues
a run with no extra flag:

1. the workdir's own latest checkpoint in `WORKDIR/checkpoints/`; a latest
   checkpoint that cannot be read (corrupt, half-written) is skipped with a
   warning and the one before it is used;
2. otherwise `config.checkpoint.init_from` (a workdir, its `checkpoints/`
   directory or one step directory): parameters only, so optimizer, step,
   rng and data position start fresh;
3. otherwise from scratch (the state passed in is kept).

Each step directory holds three items: `params` (so warm starts read only
them), `train` (optimizer state, step, rng) and `extra` (JSON: the data
iterator state of every process). Arrays are restored against the shardings
of the current mesh, so a run saved on one mesh resumes on any other.
Paths go through `etils.epath`, so the workdir may be a bucket (`gs://...`).
"""

import logging
from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from transformer_research import distributed
from transformer_research.training import TrainState


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
    policy = policies.LatestN(n=keep)
    if checkpoint_config.best_metric:
      metric, mode = checkpoint_config.best_metric, checkpoint_config.best_mode
      if mode not in ("max", "min"):
        raise ValueError(f"config.checkpoint.best_mode={mode!r}: expected 'max' or 'min'")
      # The latest `keep` stay for resuming; the best `keep` stay as results.
      policy = policies.AnyPreservationPolicy([policy, policies.BestN(
          get_metric_fn=lambda m: m[metric], reverse=mode == "min", n=keep,
          keep_checkpoints_without_metrics=False)])
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=bool(checkpoint_config.async_save),
        preservation_policy=policy, cleanup_tmp_directories=True, create=True)
    self.directory = _absolute(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=_handlers())

  def save(self, state: TrainState, data_state: dict, metrics: dict | None = None) -> None:
    """Starts a (collective, possibly async) save of `state` at its step.

    Every process calls this: arrays are written shard by shard by their
    owners, and the data iterator states of all processes are gathered so
    each can find its own on resume.
    """
    step = int(jax.device_get(state.step))
    best = self.config.best_metric
    keep_metrics = {best: float(metrics[best])} if best and metrics and best in metrics else None
    self.manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        train=ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step,
                                     "rng": state.rng}),
        extra=ocp.args.JsonSave({"data": distributed.gather_json(data_state)})),
        metrics=keep_metrics, force=True)

  def resume(self, state: TrainState, shardings: TrainState) -> tuple[TrainState, dict | None, str]:
    """Applies the resume order in the module docstring.

    Args:
      state: a freshly initialised state (used for shapes and as the scratch
        fallback).
      shardings: its shardings on the current mesh.

    Returns:
      (state, this process's data iterator state or None, a one-line note on
      where the state came from).
    """
    abstract = _abstract(state, shardings)
    for step in reversed(self.manager.all_steps()):
      try:
        saved_shapes = self.manager.item_metadata(step)["params"]
        if saved_shapes is None:
          raise ValueError("no params metadata")
      except Exception as e:  # Unreadable metadata: a corrupt checkpoint.
        logging.warning("checkpoint step %d in %s is unreadable (%s); trying the previous one",
                        step, self.directory, e)
        continue
      check_compatible(saved_shapes, state.params, self.directory)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract.params),
            train=ocp.args.StandardRestore({"opt_state": abstract.opt_state,
                                            "step": abstract.step, "rng": abstract.rng}),
            extra=ocp.args.JsonRestore()))
      except Exception as e:  # Missing or truncated files: skip, keep going back.
        logging.warning("checkpoint step %d in %s could not be restored (%s); trying the "
                        "previous one", step, self.directory, e)
        continue
      train = restored["train"]
      states = restored["extra"]["data"]
      data_state = states[jax.process_index()] if len(states) == jax.process_count() else None
      if data_state is None:
        logging.warning("checkpoint has data states for %d processes, this run has %d; the "
                        "data iterator starts from its beginning", len(states), jax.process_count())
      state = TrainState(train["step"], restored["params"], train["opt_state"], train["rng"])
      return state, data_state, f"resumed from {self.directory} step {step}"
    if self.config.init_from:
      params = restore_params(self.config.init_from, abstract.params)
      return state._replace(params=params), None, f"params from {self.config.init_from}"
    return state, None, "from scratch"

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def wait(self) -> None:
    """Blocks until async saves are on disk (before exiting, or in tests)."""
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
  path = _absolute(path)
  step = None
  if (path / "checkpoints").is_dir():
    path = path / "checkpoints"
  elif (path / "params").is_dir() and path.name.isdigit():
    path, step = path.parent, int(path.name)
  manager = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True),
                                  item_handlers=_handlers())
  step = manager.latest_step() if step is None else step
  if step is None:
    raise ValueError(f"config.checkpoint.init_from='{path}': no checkpoint found there")
  check_compatible(manager.item_metadata(step)["params"], abstract, path)
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract)))["params"]
  manager.close()
  return restored


def checkpoint_steps(workdir: str) -> list[int]:
  """Saved steps under WORKDIR/checkpoints, oldest first ([] if none)."""
  directory = _absolute(workdir) / "checkpoints"
  if not directory.is_dir():
    return []
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True))
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def check_compatible(saved: Any, params: Any, directory: str) -> None:
  """Refuses a checkpoint whose parameters differ from the model's.

  Raises:
    ValueError naming the first parameter (in sorted path order) that is
    missing, extra or of a different shape, so a wrong `--workdir` or a changed
    model size is caught before anything is overwritten.
  """
  def flat(tree):
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

  saved_shapes, shapes = flat(saved), flat(params)
  for name in sorted(set(saved_shapes) | set(shapes)):
    if saved_shapes.get(name) != shapes.get(name):
      raise ValueError(
          f"checkpoint in {directory} is incompatible with this config: parameter {name} "
          f"has shape {saved_shapes.get(name, 'missing')} in the checkpoint and "
          f"{shapes.get(name, 'missing')} in the model; use a new --workdir")


def _absolute(path: str | epath.Path) -> epath.Path:
  """Orbax wants absolute paths; `gs://...` already is one (`epath`'s
  `absolute()` would prefix it with the current directory)."""
  path = epath.Path(path)
  return path if path.is_absolute() else path.absolute()


def _handlers() -> dict[str, ocp.CheckpointHandler]:
  """Handlers per item, so a manager that did not save can read metadata."""
  return {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
          "extra": ocp.JsonCheckpointHandler()}


def _abstract(state: TrainState, shardings: TrainState) -> TrainState:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
