"""Projections and multi-head attention.

`Dense` keeps parameters in float32 and computes in the configured compute
dtype (bfloat16 on accelerators); `MultiHeadAttention` computes attention
logits and the softmax in float32 whatever the compute dtype, because bf16
exponentials of large logits lose most of their mantissa.

Two attention kernels. Training and full forward passes use `masked_softmax`:
it gives fully masked rows (padding queries) zero weights and supports
attention dropout. A cached decode step uses `jax.nn.dot_product_attention`
(`attend`), which selects cuDNN / flash kernels on GPU: there every query row
has at least one key to attend to (a step always sees its own key; a
cross-attention row sees its source), and on such rows the two compute the
same softmax. The beams of a source, which share its cross-attention keys,
attend through `masked_softmax` and einsums (faster on CPU, see `attend`).

Shape glossary:
  B: batch.  Tq: query length.  Tk: key length.  L: cache length.
  D: model width.  H: heads.  Dh: D // H, width of one head.
"""

from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import numpy as np

Cache = dict[str, jnp.ndarray]

# Dropout draws 16-bit uniform numbers, two per 32-bit random word.
_DROPOUT_BITS = 16


def dropout(x: jnp.ndarray, rate: float, is_training: bool) -> jnp.ndarray:
  """Inverted dropout, only while training (no rng needed otherwise).

  `hk.dropout` draws a float32 uniform per element through threefry, which
  was a twentieth of the `wmt_spa` small train step on CPU. Here each 32-bit
  random word gives two 16-bit numbers and a unit is dropped when its number
  is below `rate` rounded to a multiple of 2^-16 (so 0.1 drops 6554/65536 =
  0.100006 of them); survivors are scaled by 1 / (1 - that rate), which keeps
  the expectation exact. The cost is a third of hk.dropout's.
  """
  if not is_training or rate == 0:
    return x
  if not 0 < rate < 1:
    raise ValueError(f"dropout rate={rate}; expected a value in [0, 1)")
  scale = 2 ** _DROPOUT_BITS
  threshold = round(rate * scale)
  per_word = 32 // _DROPOUT_BITS
  words = jax.random.bits(hk.next_rng_key(), (-(-x.size // per_word),), jnp.uint32)
  bits = jax.lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)[:x.size].reshape(x.shape)
  keep = bits >= np.uint16(threshold)
  return jnp.where(keep, x * (scale / (scale - threshold)), 0).astype(x.dtype)


# What `model.remat="dots"` keeps (layers.REMAT_POLICIES): every Dense's matmul output.
DENSE_OUTPUT = "dense_output"


class Dense(hk.Module):
  """y = x @ w + b with float32 parameters and a chosen compute dtype.

  `hk.Linear` creates its parameters in the dtype of its input, so bf16
  activations would give bf16 parameters; this one always stores float32.
  """

  def __init__(self, output_size: int, *, compute_dtype: Any = jnp.float32,
               name: str | None = None):
    super().__init__(name=name)
    self.output_size = output_size
    self.compute_dtype = compute_dtype

  def __call__(self, x: jnp.ndarray, out_dtype: Any = None) -> jnp.ndarray:
    """Args: x [..., Din]. Returns [..., output_size] in `out_dtype` (default compute dtype)."""
    fan_in = x.shape[-1]
    glorot = hk.initializers.VarianceScaling(1.0, "fan_avg", "uniform")
    w = hk.get_parameter("w", [fan_in, self.output_size], jnp.float32, init=glorot)
    b = hk.get_parameter("b", [self.output_size], jnp.float32, init=jnp.zeros)
    y = _project(x.astype(self.compute_dtype), w.astype(self.compute_dtype))
    # Named, so that `model.remat="dots"` can keep it: the dot is inside a
    # custom_vjp, where remat policies that look for dots do not see it.
    y = checkpoint_name(y, DENSE_OUTPUT)
    return (y + b).astype(out_dtype or self.compute_dtype)


@jax.custom_vjp
def _project(x: jnp.ndarray, w: jnp.ndarray) -> jnp.ndarray:
  """x [..., Din] @ w [Din, Dout] -> [..., Dout] float32 (f32 accumulation).

  Autodiff would contract x and the output gradient g over all their leading
  axes at once for w's gradient, and XLA:CPU then lays g out transposed and
  runs that dot at a third of its matmul speed (0.13-0.19 TFLOP/s against
  0.45 on the wmt_spa step's shapes, where these gradients took ~40% of the
  step). The backward pass below flattens both to [rows, features] first:
  the same dot, at full speed (the step 1.6 s -> 1.35 s on a 2-core CPU).
  """
  return jnp.dot(x, w, preferred_element_type=jnp.float32)


def _project_forward(x, w):
  return _project(x, w), (x, w)


def _project_backward(residuals, g):
  x, w = residuals  # g: [..., Dout] float32, as the output.
  dx = jnp.dot(g.astype(x.dtype), w.T, preferred_element_type=jnp.float32)
  # float32 operands, as tied_logits' table gradient (layers.py) says why.
  rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  dw = jnp.einsum("nk,nm->km", rows, g.reshape(-1, g.shape[-1]).astype(jnp.float32))
  return dx.astype(x.dtype), dw.astype(w.dtype)


_project.defvjp(_project_forward, _project_backward)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
  """Rotary position embedding (Su et al. 2021), "rotate half" layout.

  Rotating q and k by angles proportional to their positions makes q.k depend
  only on the relative offset, so it works unchanged for cached decoding and
  for packed rows whose positions restart.

  Args:
    x: [B, T, H, Dh] queries or keys, Dh even.
    positions: [B, T] int positions.

  Returns:
    [B, T, H, Dh], same dtype as `x`; rotation computed in float32.
  """
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (10000.0 ** (np.arange(half, dtype=np.float32) / half))  # [Dh/2]
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, Dh/2]
  sin = jnp.sin(angles)[:, :, None, :]  # [B, T, 1, Dh/2]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # [B, T, H, Dh/2] each
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def masked_softmax(logits: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """Softmax over the last axis restricted to `mask`, in float32.

  A row with no allowed key gives all zeros (not NaN, not uniform weights):
  masked entries are zeroed after the exponential and the normaliser is
  guarded, so fully padded rows stay finite in the forward and backward pass.

  Args:
    logits: [..., Tk] float.
    mask: bool, broadcastable to `logits`.

  Returns:
    float32 weights, same shape as `logits`; each row sums to 1 or to 0.
  """
  logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  logits -= jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  unnormalised = jnp.exp(logits) * mask
  total = jnp.sum(unnormalised, axis=-1, keepdims=True)
  return unnormalised / jnp.where(total > 0, total, 1.0)


def attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """softmax(q k^T / sqrt(Dh)) v through `jax.nn.dot_product_attention` (einsums
  for grouped rows, below).

  Keys and values are head-major, [B, H, Tk, Dh], as the decoding caches keep
  them: that is the layout a CPU dot reads without transposing, and XLA folds
  the [B, Tk, H, Dh] views taken here into the dot. In the [B, Tk, H, Dh]
  layout every step transposed the whole cache, ~8x slower on CPU.

  Rows of `q` may come in groups sharing one row of keys: with N = G * B, the
  query rows b * G ... b * G + G - 1 (batch-major) attend to key row b. The
  beams of one source (`decoding.tile_beams`) are such a group, so a source's
  cross-attention keys are stored once, not once per beam: a group's G queries
  are folded into the query axis, which changes nothing since queries do not
  interact.

  Args:
    q: [N, Tq, H, Dh] queries, N = G * B.
    k, v: [B, H, Tk, Dh] keys and values.
    mask: bool broadcastable to [B, 1, Tq, Tk] (Tq = 1 when G > 1); every row
      must allow at least one key (see the module docstring).

  Returns:
    [N, Tq, H, Dh] in the dtype of `q`.
  """
  n, q_len = q.shape[:2]
  b = k.shape[0]
  if n % b or (n != b and mask.shape[2] != 1):
    raise ValueError(f"queries have {n} rows and keys {b} with a mask of shape "
                     f"{tuple(mask.shape)}: expected a multiple of {b} query rows, "
                     "and a mask of query length 1 when rows are grouped.")
  if n != b:
    # Grouped rows (beams), as plain einsums over head-major keys: through
    # dot_product_attention's [B, Tk, H, Dh] views, XLA's CPU dot for G > 1
    # transposed the values of every layer at every step (a beam-4 step of
    # wmt_spa small spent 3.0 ms in attention, 1.2-1.9 ms this way).
    grouped = jnp.swapaxes(q.reshape(b, (n // b) * q_len, *q.shape[2:]), 1, 2)  # [B, H, G, Dh]
    logits = jnp.einsum("bhgd,bhsd->bhgs", grouped, k.astype(q.dtype),
                        preferred_element_type=jnp.float32) * (1.0 / np.sqrt(q.shape[-1]))
    weights = masked_softmax(logits, mask)  # [B, H, G, Tk] f32
    out = jnp.einsum("bhgs,bhsd->bhgd", weights.astype(q.dtype), v.astype(q.dtype))
    return jnp.swapaxes(out, 1, 2).reshape(q.shape)
  k, v = (jnp.swapaxes(x, 1, 2).astype(q.dtype) for x in (k, v))  # [B, Tk, H, Dh] views
  return jax.nn.dot_product_attention(q, k, v, mask=mask)


def check_mask(mask: jnp.ndarray, expected: tuple[int, int, int, int]) -> None:
  """Raises ValueError unless `mask` is bool and broadcasts to `expected`."""
  if mask.dtype != jnp.bool_:
    raise ValueError(f"mask has dtype {mask.dtype}; expected bool (True = may attend).")
  shape = tuple(mask.shape)
  if len(shape) != 4 or any(m not in (1, e) for m, e in zip(shape, expected)):
    raise ValueError(f"mask has shape {shape}; expected a shape broadcastable "
                     f"to [B, H, Tq, Tk] = {list(expected)}.")


class MultiHeadAttention(hk.Module):
  """Scaled dot-product attention over H heads, with an optional KV cache.

  Parameters: `query/w`, `key/w`, `value/w` (or one fused `qkv/w` [D, 3D] for
  self-attention when `fused_qkv`, columns head-major: (H, 3, Dh)), output
  `linear/w`, each with a bias `b`.
  """

  def __init__(self, num_heads: int, d_model: int, *, fused_qkv: bool = False,
               dropout_rate: float = 0.0, rope: bool = False,
               compute_dtype: Any = jnp.float32, name: str | None = None):
    super().__init__(name=name)
    if d_model % num_heads:
      raise ValueError(f"num_heads={num_heads} does not divide d_model={d_model}; "
                       "expected a divisor of d_model.")
    self.num_heads = num_heads
    self.d_model = d_model
    self.head_dim = d_model // num_heads
    self.fused_qkv = fused_qkv
    self.dropout_rate = dropout_rate
    self.rope = rope
    self.compute_dtype = compute_dtype

  @hk.transparent
  def _project(self, x: jnp.ndarray, name: str) -> jnp.ndarray:
    y = Dense(self.d_model, compute_dtype=self.compute_dtype, name=name)(x)  # [B, T, D]
    return y.reshape(*y.shape[:-1], self.num_heads, self.head_dim)  # [B, T, H, Dh]

  @hk.transparent
  def _qkv(self, query: jnp.ndarray, memory: jnp.ndarray | None):
    if memory is None and self.fused_qkv:
      # Head-major columns (H, 3, Dh): a `tensor`-axis split of the 3D columns
      # (sharding.PARAM_RULES) gives each device whole heads with their q, k
      # and v, so attention needs no collective; a (3, H, Dh) order would not.
      qkv = Dense(3 * self.d_model, compute_dtype=self.compute_dtype, name="qkv")(query)
      qkv = qkv.reshape(*qkv.shape[:-1], self.num_heads, 3, self.head_dim)  # [B, T, H, 3, Dh]
      return qkv[..., 0, :], qkv[..., 1, :], qkv[..., 2, :]
    source = query if memory is None else memory
    return (self._project(query, "query"), self._project(source, "key"),
            self._project(source, "value"))

  @hk.name_like("__call__")  # Same parameters as the full pass: key/w, not ~memory_kv.
  def memory_kv(self, memory: jnp.ndarray) -> Cache:
    """Cross-attention keys and values of `memory`, computed once per source.

    A decoder step then projects only its one query (`__call__(memory_kv=...)`)
    instead of the whole source again at every step.

    Args:
      memory: [B, S, D] encoder output.

    Returns:
      {"key", "value": [B, H, S, Dh]} (head-major, see `attend`) in the
      compute dtype.
    """
    return {name: jnp.swapaxes(self._project(memory, name), 1, 2) for name in ("key", "value")}

  def __call__(self, query: jnp.ndarray, mask: jnp.ndarray, *,
               memory: jnp.ndarray | None = None, memory_kv: Cache | None = None,
               is_training: bool = False, positions: jnp.ndarray | None = None,
               cache: Cache | None = None, cache_index: jnp.ndarray | None = None,
               ) -> tuple[jnp.ndarray, Cache | None]:
    """Attends from `query` to itself (self-attention) or to `memory`.

    Args:
      query: [B, Tq, D].
      mask: bool broadcastable to [B, H, Tq, Tk] (usually [B, 1, Tq, Tk]);
        True = may attend. With a cache, Tk = L and the look-ahead limit
        (keys up to `cache_index`) is added here, so `mask` may be all True.
      memory: [B, Tk, D] for cross-attention; None for self-attention.
      memory_kv: instead of `memory`, its keys and values from `memory_kv`
        (decoding): then `query` may hold G rows per memory row, [G * B, 1, D]
        (beams, see `attend`), and `mask` is [B, 1, 1, Tk].
      is_training: enables dropout on the attention weights.
      positions: [B, Tq] int positions for RoPE (self-attention only).
      cache: {"key", "value": [B, H, L, Dh]} (head-major, see `attend`) for
        incremental self-attention;
        then Tq must be 1 and the new key/value is written at `cache_index`
        (keys are cached after RoPE, so old steps are never re-rotated).
        Cross-attention takes no cache: its keys come from `memory` or
        `memory_kv`.
      cache_index: [B] int32 position of this step, per example.

    Returns:
      ([B, Tq, D] in the compute dtype, the updated cache or None).
    """
    batch, q_len = query.shape[:2]
    if memory_kv is not None:
      q = self._project(query, "query")  # [G*B, 1, H, Dh]
      sources, source_len = memory_kv["key"].shape[0], memory_kv["key"].shape[2]
      check_mask(mask, (sources, self.num_heads, 1, source_len))
      return self._output(attend(q, memory_kv["key"], memory_kv["value"], mask)), None
    q, k, v = self._qkv(query, memory)  # [B, T, H, Dh] each
    key_len = k.shape[1] if cache is None else cache["key"].shape[2]
    check_mask(mask, (batch, self.num_heads, q_len, key_len))
    if self.rope and memory is None:
      if positions is None:
        raise ValueError("positions is None with rope=True; expected [B, Tq] "
                         "int positions for self-attention.")
      q, k = apply_rope(q, positions), apply_rope(k, positions)
    if cache is not None:
      if q_len != 1:
        raise ValueError(f"query has length {q_len} with a cache; expected 1 "
                         "(one token per decode step).")
      # A scatter of one row per example: in place in the decode loop, where
      # a select over the whole cache would rewrite all L positions each step.
      # Out-of-range indices (steps past L) are dropped: they write nothing.
      rows = jnp.arange(batch)
      cache = {name: cache[name].at[rows, :, cache_index].set(
          new[:, 0].astype(cache[name].dtype), mode="drop")
               for name, new in (("key", k), ("value", v))}  # [B, H, L, Dh]
      seen = jnp.arange(key_len)[None, :] <= cache_index[:, None]  # [B, L]
      mask = mask & seen[:, None, None, :]  # [B, 1, 1, L]
      return self._output(attend(q, cache["key"], cache["value"], mask)), cache
    scale = 1.0 / np.sqrt(self.head_dim)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                        preferred_element_type=jnp.float32) * scale  # [B, H, Tq, Tk]
    weights = masked_softmax(logits, mask)  # [B, H, Tq, Tk] f32
    weights = dropout(weights, self.dropout_rate, is_training)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.compute_dtype),
                     v.astype(self.compute_dtype))  # [B, Tq, H, Dh]
    return self._output(out), None

  @hk.transparent
  def _output(self, heads: jnp.ndarray) -> jnp.ndarray:
    """[B, Tq, H, Dh] -> [B, Tq, D] through the output projection `linear`."""
    merged = heads.reshape(*heads.shape[:2], self.d_model)  # [B, Tq, D]
    return Dense(self.d_model, compute_dtype=self.compute_dtype, name="linear")(merged)
