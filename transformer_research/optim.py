"""Optimizers and learning-rate schedules from `config.train`.

Kept apart from the train step so a new optimizer is one branch here, and the
schedule can be evaluated by the loop for logging without touching the state.
"""

from typing import Any

import jax
import jax.numpy as jnp
import optax

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


def make_optimizer(train: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer named by `train.optimizer`, with clipping, and its schedule.

  Args:
    train: `config.train` with `optimizer` ("adamw", "adafactor", "sgd"),
      `learning_rate`, `schedule`, `warmup_steps`, `weight_decay`, `b1`, `b2`,
      `eps`, `momentum` (sgd) and `grad_clip_norm` (0 disables clipping).

  Returns:
    (optimizer, schedule); the schedule is also used for logging.
  """
  schedule = make_schedule(train)
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
  if train.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(train.grad_clip_norm), opt)
  return opt, schedule
