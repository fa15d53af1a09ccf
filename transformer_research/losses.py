"""Losses and accuracy as sums plus denominators.

Every function returns sums (`loss_sum`, `correct_sum`) and the count they are
over (`token_count`), never means: a mean of per-device or per-micro-batch
means is wrong when the pieces hold different numbers of real tokens, while
sums add up exactly and are divided once, at the end.
"""

import jax
import jax.numpy as jnp


def weights_for(batch: dict[str, jax.Array], kind: str) -> jax.Array:
  """Which targets count: non-pad tokens (id 0 is pad), or every example.

  Returns:
    float32 [B, T] for "seq2seq"/"lm", [B] for "classify". Eval batches padded
    by the loop carry `example_mask` [B] so padding rows count for nothing.
  """
  if kind == "classify":
    w = jnp.ones(batch["label"].shape, jnp.float32)
  else:
    w = (batch["targets"] > 0).astype(jnp.float32)
  if "example_mask" in batch:
    mask = batch["example_mask"].astype(jnp.float32)
    w = w * mask.reshape(mask.shape + (1,) * (w.ndim - 1))
  return w


def cross_entropy_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                       label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """Summed (label-smoothed) cross entropy, plain NLL and correct predictions.

  Args:
    logits: float32 [..., V].
    labels: int32 [...].
    weights: float32 [...]; 0 excludes a position.
    label_smoothing: mass moved from the label uniformly to the other V-1
      classes. The constant entropy of the smoothed target is subtracted
      (as in the Transformer paper's codebases) so a perfect model scores 0.

  Returns:
    `loss_sum` (smoothed objective), `nll_sum` (unsmoothed, for perplexity),
    `correct_sum` and `token_count`, all float32 scalars.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing={label_smoothing}: expected a value in [0, 1)")
  vocab = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [..., V]
  nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]  # [...]
  if label_smoothing > 0.0:
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    # Cross entropy against the smoothed target, without building it [..., V].
    smoothed = confidence * nll - low * (jnp.sum(log_probs, axis=-1) + nll)
    normalizer = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
    loss = smoothed - normalizer
  else:
    loss = nll
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return {
      "loss_sum": jnp.sum(loss * weights),
      "nll_sum": jnp.sum(nll * weights),
      "correct_sum": jnp.sum(correct * weights),
      "token_count": jnp.sum(weights),
  }


def task_sums(logits: jax.Array, batch: dict[str, jax.Array], kind: str,
              label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """`cross_entropy_sums` with the labels and weights of a task kind."""
  labels = batch["label"] if kind == "classify" else batch["targets"]
  return cross_entropy_sums(logits, labels, weights_for(batch, kind), label_smoothing)
