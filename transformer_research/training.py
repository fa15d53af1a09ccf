"""Train state, and pure train/eval steps built by factories.

The steps have no globals, I/O or Python side effects; the caller jits them
with shardings from `sharding.py` (`jit_train_step`, `jit_eval_step`). Two
partitionings give the same numbers:

* "jit": GSPMD. The step is written for the global batch and XLA inserts
  the collectives implied by the parameter and batch shardings.
* "shard_map": the forward/backward pass runs per batch shard under
  `jax.shard_map`; gradients and metrics are combined with explicit
  collectives, which is easier to reason about and to profile. Parameters
  stay sharded over `fsdp` as the rules say: each shard all-gathers them for
  its pass and reduce-scatters the gradients back to its slice (ZeRO-3), so
  no device ever keeps a whole gradient.

The objective is `sum(loss) / number of real tokens in the global batch`, for
every partitioning and number of gradient-accumulation micro-batches, so all
of them equal one big single-device step up to float rounding.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import optax

from transformer_research import losses
from transformer_research import sharding

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
  """Everything a step reads and writes; checkpointed whole."""
  step: jax.Array  # int32 []: number of updates applied so far.
  params: Any  # Haiku params, float32.
  opt_state: Any
  rng: jax.Array  # uint32 [2]; dropout uses fold_in(rng, step), so resume is exact.


def _init_fn(model: Any, optimizer: optax.GradientTransformation,
             init_batch: dict[str, Any]) -> Callable[[jax.Array], TrainState]:
  def init(rng):
    init_rng, train_rng = jax.random.split(rng)
    params = model.init(init_rng, init_batch)
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params), train_rng)
  return init


def abstract_train_state(model: Any, optimizer: optax.GradientTransformation,
                         init_batch: dict[str, Any], mesh: Mesh, rules: Any,
                         seed: int) -> TrainState:
  """The state's shapes and dtypes (`jax.eval_shape`: no memory, no compute),
  each a `jax.ShapeDtypeStruct` carrying its sharding from the rules."""
  abstract = jax.eval_shape(_init_fn(model, optimizer, init_batch), jax.random.PRNGKey(seed))
  shardings = state_shardings(abstract, mesh, rules)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      abstract, shardings)


def init_train_state(model: Any, optimizer: optax.GradientTransformation,
                     init_batch: dict[str, Any], mesh: Mesh, rules: Any,
                     seed: int) -> tuple[TrainState, TrainState]:
  """Creates the state directly in its sharded layout.

  Shapes come from `abstract_train_state`, then a jitted init with
  `out_shardings` materialises every parameter and optimizer slot on the
  devices that own it: no model has to fit on one device, and no host ever
  holds the whole state.

  Returns:
    (state, state_shardings), the latter a TrainState of `NamedSharding`s.
  """
  abstract = abstract_train_state(model, optimizer, init_batch, mesh, rules, seed)
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  init = jax.jit(_init_fn(model, optimizer, init_batch), out_shardings=shardings)
  return init(jax.random.PRNGKey(seed)), shardings


def state_shardings(abstract: TrainState, mesh: Mesh, rules: Any) -> TrainState:
  """Shardings of a (possibly abstract) state: optimizer slots follow params."""
  params = sharding.param_shardings(abstract.params, mesh, rules)
  replicated = NamedSharding(mesh, P())
  return TrainState(replicated, params,
                    sharding.follow_params(abstract.opt_state, abstract.params, params, mesh),
                    replicated)


def make_train_step(config: Any, model: Any, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, kind: str,
                    mesh: Mesh | None = None) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """Returns `train_step(state, batch) -> (state, metrics)`.

  Args:
    config: full config; reads `train.grad_accum_steps`, `train.label_smoothing`
      and `train.partitioning`.
    model: a `models.Model` (init/apply).
    optimizer: from `optim.make_optimizer`.
    schedule: its learning-rate schedule, reported as `learning_rate`.
    kind: "seq2seq", "lm" or "classify".
    mesh: required for `partitioning="shard_map"`.

  Returns:
    A pure step. Metrics are sums (`loss_sum`, `nll_sum`, `correct_sum`) and
    `token_count`, plus `grad_norm` and `learning_rate`.
  """
  check_step_config(config, mesh)
  if config.train.partitioning == "shard_map" and mesh is None:
    raise ValueError("partitioning='shard_map' needs the mesh")
  accum = int(config.train.grad_accum_steps)
  smoothing = float(config.train.label_smoothing)
  partitioning = config.train.partitioning

  def grads_and_sums(params, batch, rng, denominator):
    """Gradient of sum(loss)/denominator and the metric sums over `batch`."""
    def loss_fn(p, micro, r):
      logits = model.apply(p, r, micro, True)
      sums = losses.task_sums(logits, micro, kind, smoothing)
      return sums["loss_sum"] / denominator, sums

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if accum == 1:
      return grad_fn(params, batch, rng)

    def split(x):
      # Strided micro-batches ([B/A, A] then swap): each keeps rows from every
      # batch shard, so all devices stay busy in every micro-step.
      return jnp.swapaxes(x.reshape((x.shape[0] // accum, accum) + x.shape[1:]), 0, 1)

    def body(carry, xs):
      i, micro = xs
      g, s = grad_fn(params, micro, jax.random.fold_in(rng, i))
      return jax.tree.map(jnp.add, carry, (g, s)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    zero_sums = {k: jnp.zeros((), jnp.float32)
                 for k in ("loss_sum", "nll_sum", "correct_sum", "token_count")}
    micro = jax.tree.map(split, batch)
    (grads, sums), _ = jax.lax.scan(body, (zeros, zero_sums), (jnp.arange(accum), micro))
    return grads, sums

  def token_count(batch):
    return jnp.sum(losses.weights_for(batch, kind))

  def sharded_grads(param_dims, params, batch, rng):
    # Each shard differentiates sum(local loss) / mean(local token counts);
    # the mean of those gradients is then exactly sum(loss) / global count.
    index = jax.lax.axis_index(sharding.BATCH_AXES)
    mean_count = jax.lax.pmean(token_count(batch), sharding.BATCH_AXES)
    gather = lambda p, dim: p if dim is None else jax.lax.all_gather(p, "fsdp", axis=dim,
                                                                    tiled=True)
    full = jax.tree.map(gather, params, param_dims)
    grads, sums = grads_and_sums(full, batch, jax.random.fold_in(rng, index), mean_count)

    def reduce(g, dim):  # Mean over every batch shard, each keeping its fsdp slice.
      if dim is None:
        return jax.lax.pmean(g, sharding.BATCH_AXES)
      g = jax.lax.psum_scatter(g, "fsdp", scatter_dimension=dim, tiled=True)
      return jax.lax.pmean(g, "data") / mesh.shape["fsdp"]

    grads = jax.tree.map(reduce, grads, param_dims)
    sums = jax.lax.psum(sums, sharding.BATCH_AXES)  # Sums add; means come later.
    return grads, sums

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(state.rng, state.step)
    if partitioning == "shard_map":
      # The layout jit_train_step gives the parameters (from config.mesh's rules).
      specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(
          state.params, mesh, sharding.param_rules(config.mesh)))
      dims = jax.tree.map(_fsdp_dim, specs, is_leaf=lambda x: isinstance(x, P))
      grads, sums = jax.shard_map(
          functools.partial(sharded_grads, dims), mesh=mesh,
          in_specs=(specs, P(sharding.BATCH_AXES), P()),
          out_specs=(specs, P()), check_vma=False)(state.params, batch, rng)
    else:
      grads, sums = grads_and_sums(state.params, batch, rng, token_count(batch))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(sums, grad_norm=optax.tree.norm(grads),
                   learning_rate=jnp.asarray(schedule(state.step), jnp.float32))
    return TrainState(state.step + 1, params, opt_state, state.rng), metrics

  return train_step


def check_step_config(config: Any, mesh: Mesh | None) -> None:
  """The train step's settings, checked before a run writes anything: the
  partitioning, and a batch (per shard, under shard_map) that splits into
  `train.grad_accum_steps` micro-batches. Without a mesh (a config checked
  before its devices are known), the whole batch must split.

  Raises:
    ValueError naming the field and its value.
  """
  accum, partitioning = config.train.grad_accum_steps, config.train.partitioning
  if isinstance(accum, bool) or not isinstance(accum, int) or accum < 1:
    raise ValueError(f"config.train.grad_accum_steps={accum!r}: expected an int >= 1")
  if partitioning not in ("jit", "shard_map"):
    raise ValueError(f"config.train.partitioning={partitioning!r}: expected 'jit' or 'shard_map'")
  rows, per = config.train.batch_size, "step"
  if partitioning == "shard_map" and mesh is not None:
    if mesh.shape["tensor"] != 1:
      raise ValueError(f"partitioning='shard_map' maps over the batch axes only; mesh "
                       f"tensor={mesh.shape['tensor']}: expected 1 (use 'jit' for tensor "
                       "parallelism)")
    rows, per = rows // sharding.batch_shards(mesh), "batch shard"
  if rows % accum:
    raise ValueError(f"config.train.batch_size={config.train.batch_size} ({rows} rows a "
                     f"{per}) is not divisible by config.train.grad_accum_steps={accum}")


def _fsdp_dim(spec: P) -> int | None:
  """The dimension a parameter's spec shards over `fsdp` (the only axis the
  shard_map path allows on parameters), or None."""
  for dim, axes in enumerate(spec):
    if axes == "fsdp" or (isinstance(axes, tuple) and "fsdp" in axes):
      return dim
  return None


def make_eval_step(model: Any, kind: str) -> Callable[[Any, Batch], tuple[Metrics, jax.Array | None]]:
  """Returns `eval_step(params, batch) -> (sums, correct)` (no dropout, no smoothing).

  `correct` [B] bool says which examples a classifier got right (for the
  per-length accuracy tables); None for the other kinds.
  """
  def eval_step(params, batch):
    logits = model.apply(params, None, batch, False)
    sums = losses.task_sums(logits, batch, kind)
    if kind != "classify":
      return sums, None
    return sums, jnp.argmax(logits, -1) == batch["label"]  # [B]
  return eval_step


def all_finite(tree: Any) -> jax.Array:
  """True when every float in `tree` is finite: one reduction per leaf, on device.

  Checked before every save, so a state that a finite loss and gradient norm
  still turned into Inf/NaN (a huge learning rate) is never checkpointed.
  """
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def jit_train_step(train_step: Callable, shardings: TrainState, mesh: Mesh) -> Callable:
  """Compiles the step with explicit layouts; the old state is donated."""
  replicated = NamedSharding(mesh, P())
  return jax.jit(train_step, in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, replicated), donate_argnums=0)


def jit_eval_step(eval_step: Callable, shardings: TrainState, mesh: Mesh) -> Callable:
  replicated = NamedSharding(mesh, P())
  return jax.jit(eval_step, in_shardings=(shardings.params, sharding.batch_sharding(mesh)),
                 out_shardings=replicated)
