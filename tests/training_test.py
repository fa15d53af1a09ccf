"""Train/eval steps (training.py): every partitioning equals one device.

A sharded step must compute exactly what the same global batch computes on
one device; only float summation order may differ (1e-5 in float32).
"""

import jax
import numpy as np
import pytest

import tiny_setup
from transformer_research import optim
from transformer_research import sharding
from transformer_research import training

STEPS = 2


def _run(shape, partitioning="jit", devices=None, **train):
  """Losses of STEPS steps and the final params; SGD so params compare tightly
  (Adam divides by sqrt(v), amplifying rounding on near-zero gradients)."""
  c = tiny_setup.config(partitioning=partitioning, optimizer="sgd", learning_rate=0.5, **train)
  c.mesh.shape = shape
  model = tiny_setup.model(c)
  mesh = sharding.make_mesh(c.mesh, devices)
  optimizer, schedule = optim.make_optimizer(c.train)
  batches = tiny_setup.batches(STEPS, c.train.batch_size)
  state, shardings = training.init_train_state(
      model, optimizer, {k: v[:1] for k, v in batches[0].items()}, mesh, sharding.PARAM_RULES, 0)
  step = training.jit_train_step(
      training.make_train_step(c, model, optimizer, schedule, "seq2seq", mesh), shardings, mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, sharding.global_batch(batch, mesh))
    losses.append(float(metrics["loss_sum"] / metrics["token_count"]))
  return np.array(losses), jax.device_get(state.params)


@pytest.fixture(scope="module")
def reference():
  return _run((1, 1, 1), devices=jax.devices()[:1])


# The meshes of the issue: every axis alone and all three together for "jit",
# the batch-axis meshes for "shard_map" (which maps over data and fsdp only).
@pytest.mark.parametrize("shape,partitioning", [
    ((8, 1, 1), "jit"), ((2, 2, 2), "jit"), ((1, 8, 1), "jit"), ((1, 1, 8), "jit"),
    ((8, 1, 1), "shard_map"), ((1, 8, 1), "shard_map"), ((2, 4, 1), "shard_map")])
def test_sharded_step_equals_single_device(reference, shape, partitioning):
  ref_losses, ref_params = reference
  losses, params = _run(shape, partitioning)
  np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_grad_accumulation_equals_big_batch(reference):
  ref_losses, ref_params = reference
  losses, params = _run((1, 1, 1), devices=jax.devices()[:1], grad_accum_steps=4)
  np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_shard_map_refuses_tensor_axis():
  c = tiny_setup.config(partitioning="shard_map")
  c.mesh.shape = (1, 4, 2)
  with pytest.raises(ValueError, match="tensor=2"):
    training.make_train_step(c, None, None, None, "seq2seq", sharding.make_mesh(c.mesh))


def test_dropout_depends_on_step_only():
  """fold_in(rng, step): same step -> same dropout, so a resumed run repeats it."""
  c = tiny_setup.config()
  c.model.dropout_rate = 0.5
  model = tiny_setup.model(c)
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:1])
  optimizer, schedule = optim.make_optimizer(c.train)
  batch = tiny_setup.batches(1)[0]
  state, shardings = training.init_train_state(
      model, optimizer, {k: v[:1] for k, v in batch.items()}, mesh, sharding.PARAM_RULES, 0)
  step = jax.jit(training.make_train_step(c, model, optimizer, schedule, "seq2seq"))
  loss = lambda s: float(step(s, batch)[1]["loss_sum"])
  assert loss(state) == loss(state)
  assert loss(state) != loss(state._replace(step=state.step + 1))


def test_eval_step_ignores_padding_rows():
  c = tiny_setup.config()
  model = tiny_setup.model(c)
  batch = tiny_setup.batches(1)[0]
  params = model.init(jax.random.PRNGKey(0), batch)
  eval_step = jax.jit(training.make_eval_step(model, "seq2seq"))
  half = {k: v[:8] for k, v in batch.items()}
  masked = dict(batch, example_mask=(np.arange(16) < 8).astype(np.int32))
  (a, _), (b, _) = eval_step(params, half), eval_step(params, masked)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6)


def test_frozen_parameters_stay_bit_identical_over_training():
  c = tiny_setup.config(frozen=("^encoder/", "^source_embed/"), weight_decay=0.1)
  c.mesh.shape = (1, 1, 1)
  model, mesh = tiny_setup.model(c), sharding.make_mesh(c.mesh, jax.devices()[:1])
  optimizer, schedule = optim.make_optimizer(c.train)
  batches = tiny_setup.batches(3, c.train.batch_size)
  state, shardings = training.init_train_state(
      model, optimizer, {k: v[:1] for k, v in batches[0].items()}, mesh, sharding.PARAM_RULES, 0)
  before = jax.device_get(state.params)
  step = training.jit_train_step(
      training.make_train_step(c, model, optimizer, schedule, "seq2seq", mesh), shardings, mesh)
  for batch in batches:
    state, _ = step(state, sharding.global_batch(batch, mesh))
  after = jax.device_get(state.params)
  for name in before:
    same = all(np.array_equal(a.view(np.uint32), b.view(np.uint32))
               for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])))
    assert same == f"{name}/".startswith(("encoder/", "source_embed/")), name
def test_shard_map_keeps_parameters_and_gradients_sharded_over_fsdp():
  """The shard_map step takes fsdp-sharded parameters (all-gathered inside)
  and reduce-scatters the gradients, rather than replicating both."""
  c = tiny_setup.config(partitioning="shard_map")
  c.mesh.shape = (1, 8, 1)
  hlo = tiny_setup.train_step_hlo(c)
  assert "reduce-scatter" in hlo and "all-gather" in hlo
  params = jax.eval_shape(lambda: tiny_setup.model(c).init(
      jax.random.key(0), {k: v[:1] for k, v in tiny_setup.batches(1)[0].items()}))
  specs = [s.spec for s in jax.tree.leaves(sharding.param_shardings(
      params, sharding.make_mesh(c.mesh)))]
  assert sum("fsdp" in str(s) for s in specs) > len(specs) // 2


def test_remat_policies_keep_less_in_the_order_none_dots_full():
  """`dots` keeps every Dense's matmul output (named: the matmul is inside a
  custom_vjp, where policies that look for dots do not see it, and `dots`
  silently became `full`): its step must hold less than `none`, more than `full`."""
  from transformer_research import configs, experiment  # pylint: disable=g-import-not-at-top
  temporaries = {}
  for remat in ("none", "dots", "full"):
    c = configs.load_config("reverse:tiny,smoke", {
        "model.scan_layers": True, "model.remat": remat, "model.num_encoder_layers": 4,
        "model.num_decoder_layers": 4, "train.batch_size": 32})
    exp = experiment.Experiment(c, devices=jax.devices()[:1])
    batch = tiny_setup.batches(1, 32, c.data.max_input_len + 1)[0]
    compiled = exp.train_step.lower(exp.abstract_state, batch).compile()
    temporaries[remat] = compiled.memory_analysis().temp_size_in_bytes
  assert temporaries["none"] > 1.5 * temporaries["dots"] > 1.5 * 1.5 * temporaries["full"], (
      temporaries)
