"""Schedules, weight-decay mask and optimizers (optim.py), and losses.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tiny_setup
from transformer_research import losses
from transformer_research import optim


def _train(**kw):
  return tiny_setup.config(**kw).train


def test_rsqrt_schedule_warms_up_then_decays_as_inverse_sqrt():
  s = optim.make_schedule(_train(schedule="rsqrt", warmup_steps=100, learning_rate=1.0))
  np.testing.assert_allclose(s(49), 0.5, rtol=1e-6)  # step+1 = 50 of 100 warmup steps.
  np.testing.assert_allclose(s(99), 1.0, rtol=1e-6)
  np.testing.assert_allclose(s(399), 0.5, rtol=1e-6)  # sqrt(100 / 400).


def test_cosine_and_constant_schedules():
  cos = optim.make_schedule(_train(schedule="cosine", warmup_steps=10, learning_rate=2.0,
                                   num_steps=110, min_lr_ratio=0.1))
  np.testing.assert_allclose([cos(0), cos(10), cos(60), cos(110)], [0.0, 2.0, 1.1, 0.2], rtol=1e-5)
  const = optim.make_schedule(_train(schedule="constant", warmup_steps=4, learning_rate=3.0))
  np.testing.assert_allclose([const(2), const(4), const(1000)], [1.5, 3.0, 3.0], rtol=1e-6)


@pytest.mark.parametrize("schedule", ["rsqrt", "constant"])
def test_more_steps_leave_a_schedule_that_does_not_decay_over_them_alone(schedule):
  before = _train(schedule=schedule, warmup_steps=2, num_steps=6)
  assert optim.schedule_change(before, _train(schedule=schedule, warmup_steps=2, num_steps=12),
                               6) is None


def test_a_resume_that_moves_the_learning_rate_names_both_rates():
  """More steps move a cosine decay back up; so does any other schedule field,
  unless the rate at the resume step stays the same (during warmup here)."""
  cosine = dict(schedule="cosine", warmup_steps=2, learning_rate=1e-3)
  assert optim.schedule_change(_train(**cosine, num_steps=6), _train(**cosine, num_steps=12),
                               6) == (
      "the learning-rate schedule changed (train.num_steps: 6 -> 12): step 6 trains at "
      "0.000655; the schedule of the run's last start gives 0 there (a cosine schedule "
      "decays over train.num_steps)")
  moved = optim.schedule_change(_train(**cosine, num_steps=6),
                                _train(**dict(cosine, learning_rate=2e-3), num_steps=6), 4)
  assert moved.startswith("the learning-rate schedule changed (train.learning_rate: 0.001 -> "
                          "0.002): step 4 trains at 0.001; the schedule of the run's last start "
                          "gives 0.0005 there")
  assert optim.schedule_change(_train(**cosine, num_steps=6),
                               _train(**dict(cosine, schedule="constant"), num_steps=6), 1) is None


def test_unknown_names_are_errors():
  with pytest.raises(ValueError, match="config.train.schedule='linear'"):
    optim.make_schedule(_train(schedule="linear"))
  with pytest.raises(ValueError, match="config.train.optimizer='lamb'"):
    optim.make_optimizer(_train(optimizer="lamb"))


@pytest.mark.parametrize("train,message", [
    (dict(learning_rate=-0.001), r"config.train.learning_rate=-0.001: expected > 0"),
    (dict(learning_rate=0.0), r"config.train.learning_rate=0.0: expected > 0"),
    (dict(learning_rate=float("nan")), r"config.train.learning_rate=nan: expected > 0"),
    (dict(warmup_steps=-5), r"config.train.warmup_steps=-5: expected >= 0"),
])
def test_a_learning_rate_that_cannot_train_is_an_error(train, message):
  with pytest.raises(ValueError, match=message):
    optim.make_schedule(_train(**train))


def test_no_weight_decay_on_biases_and_norms():
  params = {"encoder/layer_00/mlp/linear_0": {"w": jnp.ones((4, 8)), "b": jnp.ones(8)},
            "encoder/ln_final": {"scale": jnp.ones(4), "offset": jnp.ones(4)},
            "target_embed": {"embeddings": jnp.ones((10, 4))}}
  mask = optim.decay_mask(params)
  assert mask["encoder/layer_00/mlp/linear_0"] == {"w": True, "b": False}
  assert mask["encoder/ln_final"] == {"scale": False, "offset": False}
  assert mask["target_embed"]["embeddings"]
  # With zero gradients only decay moves a parameter: biases and norms stay put.
  opt, _ = optim.make_optimizer(_train(optimizer="adamw", weight_decay=0.5, warmup_steps=0,
                                       schedule="constant", grad_clip_norm=0.0))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zeros, opt.init(params), params)
  assert float(jnp.abs(updates["encoder/ln_final"]["scale"]).max()) == 0.0
  assert float(jnp.abs(updates["encoder/layer_00/mlp/linear_0"]["b"]).max()) == 0.0
  assert float(jnp.abs(updates["encoder/layer_00/mlp/linear_0"]["w"]).min()) > 0.0


@pytest.mark.parametrize("name", ["adamw", "adafactor", "sgd"])
def test_each_optimizer_reduces_a_quadratic(name):
  opt, _ = optim.make_optimizer(_train(optimizer=name, learning_rate=0.1, warmup_steps=0,
                                       schedule="constant", weight_decay=0.01))
  params = {"lin": {"w": jnp.full((4, 4), 3.0), "b": jnp.full((4,), -2.0)}}
  loss = lambda p: sum(jnp.sum(x ** 2) for x in jax.tree.leaves(p))
  state = opt.init(params)
  start = loss(params)
  for _ in range(20):
    updates, state = opt.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert loss(params) < 0.5 * start


def test_global_norm_clipping():
  opt, _ = optim.make_optimizer(_train(optimizer="sgd", momentum=0.0, learning_rate=1.0,
                                       warmup_steps=0, schedule="constant", grad_clip_norm=1.0))
  params = {"m": {"w": jnp.zeros((2, 2))}}
  grads = {"m": {"w": jnp.full((2, 2), 10.0)}}  # global norm 20 -> clipped to 1.
  updates, _ = opt.update(grads, opt.init(params), params)
  np.testing.assert_allclose(optax.tree.norm(updates), 1.0, rtol=1e-6)


def test_label_smoothed_cross_entropy_matches_dense_formula():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 3, 5)), jnp.float32)
  labels = jnp.asarray([[1, 2, 0], [4, 4, 3]])
  weights = (labels > 0).astype(jnp.float32)
  out = losses.cross_entropy_sums(logits, labels, weights, label_smoothing=0.1)
  target = jax.nn.one_hot(labels, 5) * 0.9 + (1 - jax.nn.one_hot(labels, 5)) * 0.1 / 4
  dense = -jnp.sum(target * jax.nn.log_softmax(logits), -1)
  dense = dense + jnp.sum(target * jnp.log(target), -1)  # Minus the target's entropy.
  np.testing.assert_allclose(out["loss_sum"], jnp.sum(dense * weights), rtol=1e-5)
  assert float(out["token_count"]) == 5.0
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], -1)[..., 0]
  np.testing.assert_allclose(out["nll_sum"], jnp.sum(nll * weights), rtol=1e-5)


def _params_and_grads():
  c = tiny_setup.config()
  params = tiny_setup.model(c).init(jax.random.PRNGKey(0), tiny_setup.batches(1)[0])
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1), params)
  return params, grads


def _bytes(tree):
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def test_frozen_parameters_get_no_optimizer_state_and_no_update():
  params, grads = _params_and_grads()
  plain, _ = optim.make_optimizer(_train(weight_decay=0.1))
  frozen, _ = optim.make_optimizer(_train(weight_decay=0.1, frozen=("^encoder/", "embed/")))
  encoder = sum(x.size * 4 for k, v in params.items() if k.startswith(("encoder/", "source_embed",
                                                                        "target_embed"))
                for x in jax.tree.leaves(v))
  # Adam keeps two moments per parameter: freezing drops both for the frozen ones.
  assert _bytes(plain.init(params)) - _bytes(frozen.init(params)) == 2 * encoder
  updates, _ = frozen.update(grads, frozen.init(params), params)
  for name, module in updates.items():
    moved = any(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(module))
    assert moved == name.startswith("decoder/"), name


def test_frozen_gradients_do_not_count_towards_clipping():
  params, grads = _params_and_grads()
  grads = jax.tree_util.tree_map_with_path(  # Huge gradients on the frozen part only.
      lambda path, g: g * (1e6 if path[0].key.startswith("encoder/") else 1.0), grads)
  train = dict(optimizer="sgd", momentum=0.0, schedule="constant", warmup_steps=0,
               learning_rate=1.0, grad_clip_norm=1e3)
  frozen, _ = optim.make_optimizer(_train(frozen=("^encoder/",), **train))
  updates, _ = frozen.update(grads, frozen.init(params), params)
  # Unclipped: the trainable gradients' own norm is far below 1e3.
  np.testing.assert_allclose(updates["decoder/layer_00/mlp/linear_0"]["w"], -0.1, rtol=1e-6)


def test_lr_multipliers_scale_each_group_first_match_wins():
  params, grads = _params_and_grads()
  train = dict(schedule="constant", warmup_steps=0, learning_rate=1e-3, grad_clip_norm=0.0)
  plain, _ = optim.make_optimizer(_train(**train))
  grouped, _ = optim.make_optimizer(_train(
      lr_multipliers=(("^encoder/layer_00/attn", 0.5), ("^encoder/", 0.1)), **train))
  base, _ = plain.update(grads, plain.init(params), params)
  scaled, _ = grouped.update(grads, grouped.init(params), params)
  for name in params:
    factor = (0.5 if name.startswith("encoder/layer_00/attn") else
              0.1 if name.startswith("encoder/") else 1.0)
    for a, b in zip(jax.tree.leaves(base[name]), jax.tree.leaves(scaled[name])):
      np.testing.assert_allclose(b, factor * a, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("train,message", [
    (dict(frozen=(".*",)), r"config.train.frozen=\('.\*',\) freezes every parameter \(\d+\): "
                           "nothing to train"),
    (dict(frozen=("^encodr/",)), r"config.train.frozen pattern '\^encodr/' matches no parameter"),
    (dict(frozen=("(",)), r"config.train.frozen pattern '\(' is not a regex"),
    (dict(lr_multipliers=(("^decoder/", 0.0),)), r"lr_multipliers entry \('\^decoder/', 0.0\)"),
    (dict(lr_multipliers=(("^nope/", 2.0),)), r"lr_multipliers pattern '\^nope/' matches no"),
])
def test_bad_parameter_groups_are_errors_naming_them(train, message):
  params, _ = _params_and_grads()
  with pytest.raises(ValueError, match=message):
    optim.make_optimizer(_train(**train))[0].init(params)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_cross_entropy_gradient_matches_autodiff_of_dense_formula(smoothing):
  """The hand-written backward pass (losses._fused_backward) against jax.grad
  of the textbook formula, for both differentiable sums."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(3, 4, 7)) * 3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 7, (3, 4)))
  weights = jnp.asarray(rng.integers(0, 2, (3, 4)), jnp.float32)
  target = jax.nn.one_hot(labels, 7) * (1 - smoothing) + (1 - jax.nn.one_hot(labels, 7)) * smoothing / 6

  def dense(z):
    logp = jax.nn.log_softmax(z)
    return {"loss_sum": jnp.sum(-jnp.sum(target * logp, -1) * weights),
            "nll_sum": jnp.sum(-jnp.take_along_axis(logp, labels[..., None], -1)[..., 0] * weights)}

  for key in ("loss_sum", "nll_sum"):
    fused = jax.grad(lambda z: losses.cross_entropy_sums(z, labels, weights, smoothing)[key])(logits)
    np.testing.assert_allclose(fused, jax.grad(lambda z: dense(z)[key])(logits), atol=1e-6)
  out = losses.cross_entropy_sums(logits, labels, weights, smoothing)
  correct = (jnp.argmax(logits, -1) == labels) * weights
  assert float(out["correct_sum"]) == float(jnp.sum(correct))
