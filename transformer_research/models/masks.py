"""Boolean attention masks and the decoder input shift.

Masks are boolean, True = "this query may attend to this key", with shape
[B, 1, Tq, Tk] (the 1 broadcasts over heads). Combine them with `&`.

Packed rows hold several examples in one row; their `segmentation` arrays give
each token its example id (1, 2, ...; 0 = padding). `segment_mask` keeps
tokens of different examples from attending to each other, and
`shift_right` restarts every example with token 0, so a packed row computes
exactly what its examples would compute alone.

Shape glossary:
  B: batch size.  T: target (decoder) length.  S: source (encoder) length.
  Tq, Tk: query and key lengths.
"""

import jax.numpy as jnp


def padding_mask(query_tokens: jnp.ndarray,
                 key_tokens: jnp.ndarray) -> jnp.ndarray:
  """Masks pad (id 0) queries and keys.

  Pad query rows are fully masked; attention then returns zeros for them
  (see attention.masked_softmax), and losses ignore those positions anyway.

  Args:
    query_tokens: [B, Tq] int token ids (or segment ids).
    key_tokens: [B, Tk] int token ids (or segment ids).

  Returns:
    [B, 1, Tq, Tk] bool.
  """
  return (query_tokens[:, None, :, None] > 0) & (key_tokens[:, None, None, :] > 0)


def causal_mask(length: int) -> jnp.ndarray:
  """Look-ahead mask: query t sees keys 0..t.

  Returns:
    [1, 1, T, T] bool, lower triangular.
  """
  return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def segment_mask(query_segmentation: jnp.ndarray,
                 key_segmentation: jnp.ndarray) -> jnp.ndarray:
  """Keeps packed examples apart: same segment id only.

  Args:
    query_segmentation: [B, Tq] int segment ids.
    key_segmentation: [B, Tk] int segment ids.

  Returns:
    [B, 1, Tq, Tk] bool.
  """
  return query_segmentation[:, None, :, None] == key_segmentation[:, None, None, :]


def encoder_mask(inputs: jnp.ndarray,
                 segmentation: jnp.ndarray | None = None) -> jnp.ndarray:
  """Encoder self-attention: padding (and segments when packed).

  Args:
    inputs: [B, S] int token ids.
    segmentation: optional [B, S] int segment ids.

  Returns:
    [B, 1, S, S] bool.
  """
  mask = padding_mask(inputs, inputs)
  if segmentation is not None:
    mask &= segment_mask(segmentation, segmentation)
  return mask


def decoder_mask(targets: jnp.ndarray,
                 segmentation: jnp.ndarray | None = None) -> jnp.ndarray:
  """Decoder self-attention: causal AND padding (AND segments when packed).

  Built from the targets, not the shifted decoder inputs, whose leading 0 is
  the start token rather than padding.

  Args:
    targets: [B, T] int token ids.
    segmentation: optional [B, T] int segment ids.

  Returns:
    [B, 1, T, T] bool.
  """
  mask = padding_mask(targets, targets) & causal_mask(targets.shape[1])
  if segmentation is not None:
    mask &= segment_mask(segmentation, segmentation)
  return mask


def memory_mask(targets: jnp.ndarray, inputs: jnp.ndarray,
                targets_segmentation: jnp.ndarray | None = None,
                inputs_segmentation: jnp.ndarray | None = None) -> jnp.ndarray:
  """Cross-attention from decoder queries to encoder keys.

  Args:
    targets: [B, T] int target ids (queries).
    inputs: [B, S] int source ids (keys).
    targets_segmentation: optional [B, T] segment ids; needs the inputs' too.
    inputs_segmentation: optional [B, S] segment ids.

  Returns:
    [B, 1, T, S] bool.
  """
  mask = padding_mask(targets, inputs)
  if targets_segmentation is not None and inputs_segmentation is not None:
    mask &= segment_mask(targets_segmentation, inputs_segmentation)
  return mask


def shift_right(tokens: jnp.ndarray,
                segmentation: jnp.ndarray | None = None) -> jnp.ndarray:
  """Decoder inputs from targets: prepend 0, drop the last token.

  With `segmentation`, the first token of every packed example is 0 as well
  (it would otherwise be the previous example's last token).

  Args:
    tokens: [B, T] int.
    segmentation: optional [B, T] int segment ids.

  Returns:
    [B, T] int, same dtype as `tokens`.
  """
  shifted = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
  if segmentation is not None:
    prev_segment = jnp.pad(segmentation, ((0, 0), (1, 0)))[:, :-1]
    shifted = jnp.where(segmentation == prev_segment, shifted, 0)
  return shifted
