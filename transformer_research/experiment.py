"""`Experiment(config, workdir)`: the one place that assembles the parts of a run.

    config ──> task spec ──> vocabulary sizes ──> model ─────────┐
       ├─────> optimizer + schedule ─────────────────────────────┼──> abstract state
       ├─────> mesh ──> parameter rules ─────────────────────────┘    + shardings
       │                                                                  │
       │                                             train step, eval step, decoders
       └─────> task: tokenizers and data (the only part that reads files)

Every part is a `functools.cached_property`: built on first use, once, from
the parts it needs and nothing else. The model, the abstract state and the
compiled steps need the config and the vocabulary sizes, and those come from
the config and the task registry (`tasks.vocab_sizes`), never from a dataset.
So a compile check, an export or `launch/translate.py` builds exactly the
model and state layout a training run built, without opening a data file.
The training loop, the evaluators, the launch tools and `bench/` all assemble
their run here, so "the model of this config" is written once.
"""

import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Mapping, Sequence

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections

from transformer_research import checkpointing
from transformer_research import configs
from transformer_research import inference
from transformer_research import models
from transformer_research import optim
from transformer_research import sharding
from transformer_research import storage
from transformer_research import training
from transformer_research.data import tasks


class Experiment:
  """The parts of one run of `config`, each built lazily and once.

  Attributes:
    config: the run's (locked) config.
    workdir: the run directory: where tokenizer models are trained into and
      found again. Only `task` reads it; None is fine for anything else.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | None = None, *,
               devices: Sequence[jax.Device] | None = None, train_tokenizers: bool = True):
    """Args:
      config: a full config (`configs.load_config` or `--config`).
      workdir: the run directory (see the class docstring).
      devices: the devices of the mesh; default `jax.devices()`. A compile
        check passes the devices of a TPU topology here.
      train_tokenizers: False for a trained run (`load_run`): its tokenizer
        models are only loaded from `workdir`, never trained, so decoding
        needs no dataset; a missing one is an error naming the file.
    """
    self.config = config
    self.workdir = workdir
    self._devices = devices
    self._train_tokenizers = train_tokenizers
    self._generate_fns: dict[tuple, Callable] = {}

  # ----------------------------------------------------- what the task is
  @functools.cached_property
  def spec(self) -> tasks.TaskSpec:
    return tasks.spec(self.config.data.task)

  @property
  def kind(self) -> str:
    return self.spec.kind

  @functools.cached_property
  def vocab(self) -> tasks.VocabSizes:
    """Vocabulary sizes and classes, from the config alone (no data read)."""
    return tasks.vocab_sizes(self.config)

  @functools.cached_property
  def task(self) -> tasks.Task:
    """Tokenizers and data: trains SentencePiece into `workdir` if needed
    (and allowed); splits are opened when first iterated."""
    if self.workdir is None and self.spec.tokenizer != "char":
      raise ValueError(f"data.task={self.config.data.task!r} keeps its tokenizer models in "
                       "the run directory: expected a workdir")
    task = tasks.build(self.config, self.workdir, train_tokenizers=self._train_tokenizers)
    tasks.check_vocab_sizes(task, self.vocab)
    return task

  # -------------------------------------------------------- model, optimizer
  @functools.cached_property
  def model(self) -> models.Model:
    v = self.vocab
    return models.build(self.config.model, self.kind, input_vocab_size=v.input,
                        target_vocab_size=v.target, num_classes=v.num_classes,
                        platform=self.mesh.devices.flat[0].platform)

  @functools.cached_property
  def _optimizer_and_schedule(self) -> tuple[Any, Any]:
    return optim.make_optimizer(self.config.train)

  @property
  def optimizer(self):
    return self._optimizer_and_schedule[0]

  @property
  def schedule(self):
    """Learning rate per step; reported by the train step."""
    return self._optimizer_and_schedule[1]

  # --------------------------------------------------------- mesh, layout
  @functools.cached_property
  def mesh(self) -> jax.sharding.Mesh:
    return sharding.make_mesh(self.config.mesh, self._devices)

  @functools.cached_property
  def param_rules(self) -> tuple[tuple[str, Any], ...]:
    return sharding.param_rules(self.config.mesh)

  @functools.cached_property
  def abstract_state(self) -> training.TrainState:
    """The train state as `jax.ShapeDtypeStruct`s carrying their shardings:
    what a restore targets and what a compile check lowers against."""
    return training.abstract_train_state(self.model, self.optimizer, models.dummy_batch(self.kind),
                                         self.mesh, self.param_rules, self.config.seed)

  @functools.cached_property
  def param_count(self) -> int:
    """Parameters of the model (from the abstract state: nothing is allocated)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_state.params))

  @property
  def state_shardings(self) -> training.TrainState:
    return jax.tree.map(lambda x: x.sharding, self.abstract_state)

  def init_state(self) -> training.TrainState:
    """A fresh state, created directly in its sharded layout."""
    return training.init_train_state(self.model, self.optimizer, models.dummy_batch(self.kind),
                                     self.mesh, self.param_rules, self.config.seed)[0]

  # ---------------------------------------------------- compiled functions
  @functools.cached_property
  def train_step(self) -> Callable:
    """Jitted `train_step(state, global_batch) -> (state, metrics)`; donates the state."""
    step = training.make_train_step(self.config, self.model, self.optimizer, self.schedule,
                                    self.kind, self.mesh)
    return training.jit_train_step(step, self.state_shardings, self.mesh)

  @functools.cached_property
  def eval_step(self) -> Callable:
    """Jitted `eval_step(params, global_batch) -> (sums, per-example correct or None)`."""
    return training.jit_eval_step(training.make_eval_step(self.model, self.kind),
                                  self.state_shardings, self.mesh)

  @functools.cached_property
  def class_probabilities(self) -> Callable[[Any, jax.Array], jax.Array]:
    """Jitted `(params, inputs [B, S]) -> [B, classes]` softmax of a classifier."""
    return jax.jit(lambda params, inputs: jax.nn.softmax(
        self.model.apply(params, None, {"inputs": inputs}), axis=-1))

  @functools.cached_property
  def state_is_finite(self) -> Callable[[training.TrainState], jax.Array]:
    """Jitted: are the parameters and optimizer state all finite?"""
    return jax.jit(lambda state: training.all_finite((state.params, state.opt_state)))

  def generate_fn(self, **settings: Any) -> Callable:
    """`inference.make_generate_fn(self.model, **settings)`, compiled once per settings,
    so every eval of a run reuses one decoder."""
    key = tuple(sorted(settings.items()))
    if key not in self._generate_fns:
      self._generate_fns[key] = inference.make_generate_fn(self.model, **settings)
    return self._generate_fns[key]


@dataclasses.dataclass(frozen=True)
class Run:
  """A saved run, restored for decoding and evaluation (`load_run`)."""
  experiment: Experiment
  params: Any  # Restored onto `experiment.mesh`.
  step: int
  # With `load_run(average_last=N)`: the N steps whose parameters were
  # averaged into `params` (`step` is the last); () for one checkpoint.
  averaged_steps: tuple[int, ...] = ()


# The config.data fields that say where a run's data is on the machine it
# trained on; a reader elsewhere gives its own (`load_run(data_paths=...)`).
DATA_PATH_FIELDS = ("manual_dir", "tfds_data_dir", "train_path", "eval_path")


def describe_data_paths(config: ml_collections.ConfigDict) -> str:
  """Where a run reads its data, for messages: "the run's data paths (the path
  fields that are set)"."""
  paths = ", ".join(f"data.{field}={config.data[field]!r}" for field in DATA_PATH_FIELDS
                    if config.data.get(field))
  return f"the run's data paths ({paths or f'data.task={config.data.task!r}, default paths'})"


def load_run(workdir: str, step: int | None = None, *, average_last: int = 1,
             devices: Sequence[jax.Device] | None = None,
             data_paths: Mapping[str, str] | None = None) -> Run:
  """Restores the config, tokenizers, model and parameters of a training run.

  Everything comes from the run directory: config.json (model, vocabulary
  sizes), the tokenizer models the run wrote there, the checkpoint. No
  dataset split is opened until an evaluation iterates one, and no tokenizer
  is ever trained here.

  Args:
    workdir: a directory written by `train_loop.train_and_evaluate`.
    step: the checkpoint step; None = the newest one that can be read (a
      warning names it when a newer one cannot). Nothing is moved or
      changed: a run may be training in `workdir`, and when it saves and
      deletes the checkpoint being read, its newest is read instead.
    average_last: N > 1 averages the parameters of that step and the N - 1
      saved before it (Vaswani et al., 2017, averaged the last 5 checkpoints
      of their base models): the mean of nearby points of a noisy
      trajectory usually scores better than any one of them.
    devices: the devices to restore onto; default `jax.devices()`. They form
      the run's `config.mesh` where they can, else a data-parallel mesh.
    data_paths: `{field: path}` over `DATA_PATH_FIELDS`: where this machine
      has the data that config.json names by the training machine's paths
      (read only when a split is evaluated).

  Raises:
    ValueError: no (readable) checkpoint in `workdir`, `step` was not saved,
      or fewer than `average_last` checkpoints up to it, each naming what was
      found.
    FileNotFoundError: config.json or a tokenizer model missing from
      `workdir`, naming its path.
  """
  if average_last < 1:
    raise ValueError(f"average_last={average_last!r}: expected the number of checkpoints "
                     "to average, >= 1 (1 = the step alone)")
  storage.check_workdir(workdir)
  config_path = epath.Path(workdir) / "config.json"
  steps = checkpointing.checkpoint_steps(workdir)
  if not steps:
    raise ValueError(
        f"workdir={workdir!r} has no checkpoint: expected the workdir of a training run "
        "(launch/train.py --workdir=...) that saved at least one checkpoint.")
  if step is not None and step not in steps:
    raise ValueError(f"step={step}: no checkpoint of that step in {workdir}; "
                     f"expected one of {steps}.")
  exp = Experiment(_fitted(configs.saved_config(config_path), devices, data_paths), workdir,
                   devices=devices, train_tokenizers=False)
  _ = exp.task  # The tokenizers: a missing model file is named before the checkpoint is read.
  candidates = [step] if step is not None else list(reversed(steps))
  relisted = 0
  while candidates:
    candidate = candidates.pop(0)
    # Checked before anything is restored: an older candidate has fewer still.
    averaged = tuple(s for s in steps if s <= candidate)[-average_last:]
    if len(averaged) < average_last:
      raise ValueError(
          f"average_last={average_last}: {workdir} has {len(averaged)} checkpoint(s) up to "
          f"step {candidate} ({list(averaged)}); expected at least {average_last} (a run "
          "keeps config.checkpoint.max_to_keep of them)")
    try:
      params = _restore_mean(workdir, averaged, exp)
    except _Unreadable as e:
      if step is not None:
        if isinstance(e, _Deleted):
          raise ValueError(
              f"{e}; the steps saved now: {checkpointing.checkpoint_steps(workdir)}") from e
        raise
      now = checkpointing.checkpoint_steps(workdir)
      if now != steps and relisted < _RELISTS:
        # A run training here saved meanwhile, deleting its oldest (maybe this
        # one, maybe half-way still): start again from its newest.
        relisted += 1
        logging.warning("%s; the run saved meanwhile: taking its newest checkpoint", e)
        steps, candidates = now, list(reversed(now))
        continue
      if e.step != candidate:
        raise
      logging.warning("%s; trying the previous one", e)
      continue
    if candidate != steps[-1]:
      logging.warning("using step %d, the newest checkpoint of %s that can be read",
                      candidate, workdir)
    return Run(exp, params, candidate, averaged if average_last > 1 else ())
  raise ValueError(f"no checkpoint in {workdir} can be read (steps {steps}).")


# How many times `load_run` lists the checkpoints again when a run saves while
# it reads; more would mean a run saving faster than a restore.
_RELISTS = 3


class _Unreadable(ValueError):
  """The files of checkpoint `step` cannot be read (truncated, missing)."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class _Deleted(_Unreadable):
  """A checkpoint removed while it was read: a run training in the same
  directory keeps only its newest `config.checkpoint.max_to_keep`."""


def _fitted(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None,
            data_paths: Mapping[str, str] | None) -> ml_collections.ConfigDict:
  """`config` fitted to the machine that reads the run, which need not be the
  one it trained on (a run trained on a pod slice, read on one host or a laptop).

  The mesh is the run's own where these devices form it (parameters are then
  laid out as in training), else data parallel over all of them: restoring
  and decoding need no particular layout. `eval.batch_size` is rounded up to
  a multiple of that mesh's batch shards; the padding rows count for nothing,
  so no score changes. `data_paths` replace the data locations.
  """
  fitted = config.copy_and_resolve_references()
  for field, path in (data_paths or {}).items():
    if field not in DATA_PATH_FIELDS:
      raise ValueError(f"data_paths: {field!r} is not a data location; expected one of "
                       f"{list(DATA_PATH_FIELDS)}")
    logging.info("config.data.%s=%r read as %r", field, fitted.data[field], path)
    fitted.data[field] = path
  try:
    mesh = sharding.make_mesh(fitted.mesh, devices)
  except ValueError as e:
    fitted.mesh.shape, fitted.mesh.dcn_shape = (-1, 1, 1), ()
    mesh = sharding.make_mesh(fitted.mesh, devices)
    logging.info("the run trained on another mesh (%s): reading it with data parallelism over "
                 "the %d devices here", e, mesh.devices.size)
  multiple = sharding.batch_multiple(mesh)
  if fitted.eval.batch_size % multiple:
    rounded = -(-fitted.eval.batch_size // multiple) * multiple
    logging.info("config.eval.batch_size=%d read as %d: a multiple of the %d batch shards here",
                 fitted.eval.batch_size, rounded, multiple)
    fitted.eval.batch_size = rounded
  return fitted


def _restore_mean(workdir: str, steps: Sequence[int], exp: Experiment) -> Any:
  """The mean parameters of `steps`' checkpoints (one step: as saved).

  A running sum, from the newest: two parameter sets in memory at a time (the
  sum and the one being added), however many are averaged.
  """
  if len(steps) == 1:
    return _restore_step(workdir, steps[0], exp)
  total = None
  for s in (steps[-1], *steps[:-1]):
    total = _add_share(total, _restore_step(workdir, s, exp), 1 / len(steps))
  return jax.tree.map(lambda t, x: t.astype(x.dtype), total, exp.abstract_state.params)


def _restore_step(workdir: str, step: int, exp: Experiment) -> Any:
  """The parameters saved at `step`; _Unreadable naming the step if its files cannot be
  read (_Deleted if they were removed while being read; IncompatibleCheckpoint if
  they do not fit the config's model)."""
  path = epath.Path(workdir) / "checkpoints" / str(step)
  target = exp.abstract_state.params  # A config error is no unreadable checkpoint.
  try:
    return checkpointing.restore_params(path, target)
  except checkpointing.IncompatibleCheckpoint:
    raise
  except Exception as e:  # Truncated or missing files.
    if not path.exists():
      raise _Deleted(f"checkpoint step {step} in {workdir} was deleted while it was read "
                     "(a run training there keeps its newest config.checkpoint.max_to_keep)",
                     step) from e
    raise _Unreadable(f"checkpoint step {step} in {workdir} cannot be read ({e})", step) from e


@functools.partial(jax.jit, donate_argnums=0)
def _add_share(total: Any | None, tree: Any, share: float) -> Any:
  """`total + share * tree` leaf by leaf in float32 (`tree` alone when `total` is None),
  keeping each leaf's sharding: one step of `load_run`'s running mean."""
  scaled = jax.tree.map(lambda x: x.astype(jnp.float32) * share, tree)
  return scaled if total is None else jax.tree.map(jnp.add, total, scaled)
