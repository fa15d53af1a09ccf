"""Optimizers and learning-rate schedules from `config.train`.

Kept apart from the train step so a new optimizer is one branch here, and the
schedule can be evaluated by the loop for logging without touching the state.

Parameter groups (`train.frozen`, `train.lr_multipliers`, regexes over the
parameter paths `sharding.path_str` gives, e.g. `encoder/layer_00/attn/query/w`)
go through `optax.multi_transform`: a frozen parameter's update is zero and it
gets no optimizer state at all (no Adam moments), and each learning-rate group
runs the optimizer with its multiple of the schedule. Gradients of frozen
parameters are zeroed before clipping, so the clipping norm is that of the
parameters that train. With neither field set the optimizer is the plain chain
(the same state layout as before these fields existed).
"""

import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

from transformer_research import sharding

# Haiku names biases "b" and LayerNorm/RMSNorm parameters "scale"/"offset".
_NO_DECAY_NAMES = ("b", "scale", "offset")


def make_schedule(train: Any) -> optax.Schedule:
  """Learning rate per step: linear warmup to `train.learning_rate`, then decay.

  * "rsqrt": the Transformer paper's `min(step / warmup, sqrt(warmup / step))`
    scaled so the peak is `learning_rate` (it is `d_model^-0.5 * warmup^-0.5`
    in the paper, folded into one number here).
  * "cosine": cosine decay to `learning_rate * train.min_lr_ratio` at
    `train.num_steps`.
  * "constant": flat after warmup.
  """
  lr, warmup = float(train.learning_rate), int(train.warmup_steps)
  if not lr > 0:  # A sign typo would train by gradient ascent.
    raise ValueError(f"config.train.learning_rate={train.learning_rate!r}: expected > 0 (the "
                     "peak of the schedule)")
  if warmup < 0:
    raise ValueError(f"config.train.warmup_steps={train.warmup_steps!r}: expected >= 0")
  if train.schedule == "rsqrt":
    def rsqrt(step):
      s = jnp.asarray(step, jnp.float32) + 1.0
      return lr * jnp.minimum(s / max(warmup, 1), jnp.sqrt(max(warmup, 1) / s))
    return rsqrt
  if train.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup, max(int(train.num_steps), warmup + 1), end_value=lr * train.min_lr_ratio)
  if train.schedule == "constant":
    if warmup == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup])
  raise ValueError(f"config.train.schedule={train.schedule!r}: expected 'rsqrt', 'cosine' "
                   "or 'constant'")


# The fields `make_schedule` reads.
_SCHEDULE_FIELDS = ("schedule", "learning_rate", "warmup_steps", "num_steps", "min_lr_ratio")


def schedule_change(previous: Any, train: Any, step: int) -> str | None:
  """What a resume at `step` does to the learning rate, if it is not what it was.

  Raising `train.num_steps` to train a run on reads as "more of the same",
  but a cosine schedule decays over num_steps: the resumed run jumps back up
  the curve (a run decayed to 0 at its step 6, then taken on to 12 steps,
  trains step 6 at 6.5e-4 of a 1e-3 peak). Allowed (a restart of the decay
  can be what one wants), but said, with both rates; "rsqrt" and "constant"
  do not depend on num_steps.

  Args:
    previous, train: the `config.train` of the run's last start and of this one.
    step: the step the run resumes at.

  Returns:
    One line naming the changed schedule fields and the rate at `step` under
    each, or None when the rate there is the same.
  """
  before, now = (float(make_schedule(t)(step)) for t in (previous, train))
  if abs(now - before) <= 1e-6 * max(abs(before), abs(now)):
    return None
  fields = "; ".join(f"train.{f}: {previous.get(f)!r} -> {train.get(f)!r}"
                     for f in _SCHEDULE_FIELDS if previous.get(f) != train.get(f))
  why = (" (a cosine schedule decays over train.num_steps)" if train.schedule == "cosine" and
         previous.get("num_steps") != train.num_steps else "")
  return (f"the learning-rate schedule changed ({fields}): step {step} trains at {now:.3g}; "
          f"the schedule of the run's last start gives {before:.3g} there{why}")


def decay_mask(params: Any) -> Any:
  """True where weight decay applies: matrices, not biases or norm parameters.

  Decaying a norm's scale pulls it towards 0 (not its natural value 1) and
  decaying biases only limits capacity without regularising, so both are
  excluded, as in most Transformer recipes.
  """
  def one(path, p):
    name = str(path[-1].key) if isinstance(path[-1], jax.tree_util.DictKey) else ""
    module = "/".join(str(getattr(k, "key", "")) for k in path[:-1])
    return p.ndim >= 2 and name not in _NO_DECAY_NAMES and "norm" not in module
  return jax.tree_util.tree_map_with_path(one, params)


def _compiled(name: str, patterns: Any) -> list[re.Pattern]:
  out = []
  for pattern in patterns:
    try:
      out.append(re.compile(pattern))
    except (re.error, TypeError) as e:
      raise ValueError(f"config.{name} pattern {pattern!r} is not a regex ({e})") from None
  return out


def param_labels(train: Any) -> Any:
  """`params -> labels`: "frozen" or "lr_x<factor>" per parameter, for multi_transform.

  Raises (when called, i.e. at `optimizer.init`, before anything trains):
    ValueError: a pattern that matches no parameter (naming it), a factor
      that is not positive, or `train.frozen` matching every parameter.
  """
  frozen = _compiled("train.frozen", train.get("frozen", ()))
  groups = list(train.get("lr_multipliers", ()))
  for group in groups:
    if len(group) != 2 or not isinstance(group[1], (int, float)) or group[1] <= 0:
      raise ValueError(f"config.train.lr_multipliers entry {tuple(group)!r}: expected a "
                       "(regex, factor > 0) pair (freeze with train.frozen instead)")
  group_patterns = _compiled("train.lr_multipliers", [g[0] for g in groups])

  def labels(params):
    names = [sharding.path_str(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    for field, patterns in (("frozen", frozen), ("lr_multipliers", group_patterns)):
      for pattern in patterns:
        if not any(pattern.search(n) for n in names):
          raise ValueError(f"config.train.{field} pattern {pattern.pattern!r} matches no "
                           f"parameter (they are named like {names[0]!r})")
    def one(name):
      if any(p.search(name) for p in frozen):
        return "frozen"
      factor = next((f for p, (_, f) in zip(group_patterns, groups) if p.search(name)), 1.0)
      return f"lr_x{float(factor)}"
    out = [one(n) for n in names]
    if all(label == "frozen" for label in out):
      raise ValueError(f"config.train.frozen={tuple(train.frozen)!r} freezes every parameter "
                       f"({len(names)}): nothing to train")
    return jax.tree.unflatten(jax.tree.structure(params), out)
  return labels


def _factors(train: Any) -> list[float]:
  return sorted({1.0, *(float(f) for _, f in train.get("lr_multipliers", ()))})


def make_optimizer(train: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer named by `train.optimizer`, with clipping, and its schedule.

  Args:
    train: `config.train` with `optimizer` ("adamw", "adafactor", "sgd"),
      `learning_rate`, `schedule`, `warmup_steps`, `weight_decay`, `b1`, `b2`,
      `eps`, `momentum` (sgd), `grad_clip_norm` (0 disables clipping), and the
      parameter groups `frozen` and `lr_multipliers` (module docstring).

  Returns:
    (optimizer, schedule); the schedule is also used for logging (the 1x group's).
  """
  schedule = make_schedule(train)
  if not train.get("frozen", ()) and not train.get("lr_multipliers", ()):
    return _clipped(train, _base_optimizer(train, schedule)), schedule
  labels = param_labels(train)
  groups = {f"lr_x{f}": _base_optimizer(train, lambda step, f=f: f * schedule(step))
            for f in _factors(train)}
  opt = optax.multi_transform({"frozen": optax.set_to_zero(), **groups}, labels)
  opt = _clipped(train, opt)
  zero_frozen = optax.masked(optax.set_to_zero(),
                             lambda params: jax.tree.map(lambda l: l == "frozen", labels(params)))
  return optax.chain(zero_frozen, opt), schedule


def _clipped(train: Any, opt: optax.GradientTransformation) -> optax.GradientTransformation:
  if train.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(train.grad_clip_norm), opt)
  return opt


def _base_optimizer(train: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
  """`train.optimizer` with weight decay, driven by `schedule`."""
  wd = float(train.weight_decay)
  if train.optimizer == "adamw":
    opt = optax.adamw(schedule, b1=train.b1, b2=train.b2, eps=train.eps, weight_decay=wd,
                      mask=decay_mask)
  elif train.optimizer == "adafactor":
    opt = optax.adafactor(schedule, weight_decay_rate=wd or None, weight_decay_mask=decay_mask)
  elif train.optimizer == "sgd":
    opt = optax.chain(optax.add_decayed_weights(wd, decay_mask),
                      optax.sgd(schedule, momentum=train.momentum or None))
  else:
    raise ValueError(f"config.train.optimizer={train.optimizer!r}: expected 'adamw', "
                     "'adafactor' or 'sgd'")
  return opt
