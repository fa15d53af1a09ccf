"""Tests for models/attention.py: MHA against a NumPy reference, masking,
dropout, RoPE and the key/value cache."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_research.models import attention
from transformer_research.models import masks

B, T, S, D, H = 2, 5, 4, 16, 4


def _mha(**kwargs):
  """Transformed MHA: f(x, mask, memory=None, is_training=False) -> [B, T, D]."""

  def forward(x, mask, memory=None, is_training=False):
    return attention.MultiHeadAttention(H, D, name="attn", **kwargs)(
        x, mask, memory=memory, is_training=is_training)[0]

  return hk.transform(forward)


def _reference(params, x, memory, mask, fused):
  """Scaled dot-product attention with explicit per-head split and merge (float64).

  A fused `qkv` weight's columns are head-major, (H, 3, Dh): head h's q, k, v
  are adjacent, so a `tensor` split of the columns keeps whole heads.
  """
  p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
  x, memory = np.asarray(x, np.float64), np.asarray(memory, np.float64)
  if fused:
    w = p["attn/qkv"]["w"].reshape(D, H, 3, D // H)
    b = p["attn/qkv"]["b"].reshape(H, 3, D // H)
    q, k, v = (x @ w[:, :, i].reshape(D, D) + b[:, i].reshape(D) for i in range(3))
  else:
    q = x @ p["attn/query"]["w"] + p["attn/query"]["b"]
    k = memory @ p["attn/key"]["w"] + p["attn/key"]["b"]
    v = memory @ p["attn/value"]["w"] + p["attn/value"]["b"]
  split = lambda t: t.reshape(t.shape[0], t.shape[1], H, D // H).transpose(0, 2, 1, 3)
  q, k, v = split(q), split(k), split(v)  # [B, H, T, Dh]
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(D // H)  # [B, H, Tq, Tk]
  out = np.zeros(q.shape)
  for bi in range(q.shape[0]):
    for h in range(H):
      for t in range(q.shape[2]):
        allowed = np.asarray(mask)[bi, 0, t]
        if allowed.any():
          e = np.exp(logits[bi, h, t, allowed] - logits[bi, h, t, allowed].max())
          out[bi, h, t] = (e / e.sum()) @ v[bi, h, allowed]
  merged = out.transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[2], D)  # [B, T, D]
  return merged @ p["attn/linear"]["w"] + p["attn/linear"]["b"]


@pytest.mark.parametrize("fused,cross", [(False, False), (True, False), (False, True)])
def test_mha_matches_numpy_reference(fused, cross):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, T, D)).astype(np.float32)
  memory = rng.normal(size=(B, S, D)).astype(np.float32) if cross else None
  tokens = np.array([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
  keys = np.array([[1, 1, 0, 0], [1, 1, 1, 1]]) if cross else tokens
  mask = masks.padding_mask(tokens, keys) & (True if cross else masks.causal_mask(T))
  f = _mha(fused_qkv=fused)
  params = f.init(jax.random.key(0), x, mask, memory)
  got = f.apply(params, None, x, mask, memory)
  want = _reference(params, x, x if memory is None else memory, mask, fused and not cross)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_masked_softmax_fully_masked_row_is_zero_not_nan():
  logits = jnp.array([[1.0, 2.0, 3.0], [1e30, -1e30, 0.0]])
  mask = jnp.array([[True, False, True], [False, False, False]])
  w = attention.masked_softmax(logits, mask)
  np.testing.assert_allclose(w[0], [1 / (1 + np.e ** 2), 0, np.e ** 2 / (1 + np.e ** 2)],
                             rtol=1e-6)
  np.testing.assert_array_equal(w[1], [0, 0, 0])
  grad = jax.grad(lambda l: jnp.sum(attention.masked_softmax(l, mask) ** 2))(logits)
  assert np.isfinite(grad).all()


def test_mha_fully_padded_rows_are_finite_in_value_and_gradient():
  x = jax.random.normal(jax.random.key(1), (B, T, D))
  tokens = np.array([[0] * T, [3, 4, 0, 0, 0]])  # Row 0: all padding.
  mask = masks.decoder_mask(tokens)
  f = _mha()
  params = f.init(jax.random.key(0), x, mask)
  out = f.apply(params, None, x, mask)
  assert np.isfinite(out).all()
  grads = jax.grad(lambda p: jnp.sum(f.apply(p, None, x, mask) ** 2))(params)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def test_attention_dropout_only_when_training():
  x = jax.random.normal(jax.random.key(1), (B, T, D))
  mask = masks.causal_mask(T)
  f = _mha(dropout_rate=0.5)
  params = f.init(jax.random.key(0), x, mask)
  eval_a = f.apply(params, jax.random.key(1), x, mask)
  eval_b = f.apply(params, jax.random.key(2), x, mask)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_a = f.apply(params, jax.random.key(1), x, mask, None, True)
  train_a2 = f.apply(params, jax.random.key(1), x, mask, None, True)
  train_b = f.apply(params, jax.random.key(2), x, mask, None, True)
  np.testing.assert_array_equal(train_a, train_a2)
  assert not np.allclose(train_a, train_b)
  assert not np.allclose(train_a, eval_a)


def test_rope_attention_depends_only_on_relative_positions():
  x = jax.random.normal(jax.random.key(1), (B, T, D))
  mask = masks.causal_mask(T)

  def forward(x, positions):
    return attention.MultiHeadAttention(H, D, rope=True, name="attn")(
        x, mask, positions=positions)[0]

  f = hk.transform(forward)
  positions = jnp.broadcast_to(jnp.arange(T), (B, T))
  params = f.init(jax.random.key(0), x, positions)
  np.testing.assert_allclose(f.apply(params, None, x, positions),
                             f.apply(params, None, x, positions + 17), atol=1e-5)
  assert not np.allclose(f.apply(params, None, x, positions),
                         f.apply(params, None, x, positions[:, ::-1]), atol=1e-3)


@pytest.mark.parametrize("rope", [False, True])
def test_cached_steps_equal_full_causal_attention(rope):
  x = jax.random.normal(jax.random.key(1), (B, T, D))
  positions = jnp.broadcast_to(jnp.arange(T), (B, T))

  def full(x):
    return attention.MultiHeadAttention(H, D, rope=rope, name="attn")(
        x, masks.causal_mask(T), positions=positions)[0]

  def step(x_t, cache, index):
    return attention.MultiHeadAttention(H, D, rope=rope, name="attn")(
        x_t, jnp.ones((B, 1, 1, 1), bool), positions=index[:, None], cache=cache,
        cache_index=index)

  f_full, f_step = hk.transform(full), hk.transform(step)
  params = f_full.init(jax.random.key(0), x)
  cache = {"key": jnp.zeros((B, H, T, D // H)), "value": jnp.zeros((B, H, T, D // H))}
  outs = []
  for t in range(T):
    out, cache = f_step.apply(params, None, x[:, t:t + 1], cache,
                              jnp.full((B,), t, jnp.int32))
    outs.append(out[:, 0])
  np.testing.assert_allclose(jnp.stack(outs, 1), f_full.apply(params, None, x), atol=1e-5)


def test_precomputed_memory_kv_with_grouped_queries_equals_cross_attention():
  """Decoding's cross-attention: keys and values once per source, three query
  rows (beams) per source, against the memory tiled once per row."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3 * B, 1, D)).astype(np.float32)
  memory = rng.normal(size=(B, S, D)).astype(np.float32)
  keys = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)  # Padded sources.

  def forward(x, mask, memory, precomputed):
    attn = attention.MultiHeadAttention(H, D, name="attn")
    if precomputed:
      return attn(x, mask, memory_kv=attn.memory_kv(memory))[0]
    return attn(x, mask, memory=memory)[0]

  f = hk.transform(forward)
  tiled_mask = np.repeat(keys, 3, axis=0)[:, None, None, :]  # [3B, 1, 1, S]
  tiled = np.repeat(memory, 3, axis=0)
  params = f.init(jax.random.key(0), x, tiled_mask, tiled, False)
  want = f.apply(params, None, x, tiled_mask, tiled, False)
  got = f.apply(params, None, x, keys[:, None, None, :], memory, True)
  np.testing.assert_allclose(got, want, atol=1e-5)
  with pytest.raises(ValueError, match="queries have 5 rows and keys 2"):
    f.apply(params, None, x[:5], keys[:, None, None, :], memory, True)


def test_bad_mask_shape_and_dtype_and_heads_raise():
  x = jnp.ones((B, T, D))
  f = _mha()
  with pytest.raises(ValueError, match=r"mask has shape \(2, 1, 5, 4\).*\[2, 4, 5, 5\]"):
    f.init(jax.random.key(0), x, jnp.ones((B, 1, T, T - 1), bool))
  with pytest.raises(ValueError, match=r"mask has shape \(5, 5\)"):
    f.init(jax.random.key(0), x, jnp.ones((T, T), bool))
  with pytest.raises(ValueError, match=r"mask has dtype float32; expected bool"):
    f.init(jax.random.key(0), x, jnp.ones((B, 1, T, T), jnp.float32))
  with pytest.raises(ValueError, match=r"num_heads=3 does not divide d_model=16"):
    hk.transform(lambda x: attention.MultiHeadAttention(3, D)(x, masks.causal_mask(T))).init(
        jax.random.key(0), x)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_rate_and_scale(rate):
  """The packed 16-bit draw drops `rate` of the units (to within sampling
  noise, 2^-16 rounding included) and keeps the mean."""
  x = jnp.ones((64, 64, 64))  # 262,144 units.
  f = hk.transform(lambda x: attention.dropout(x, rate, is_training=True))
  y = np.asarray(f.apply({}, jax.random.key(3), x))
  dropped = float(np.mean(y == 0))
  assert abs(dropped - rate) < 5 * np.sqrt(rate * (1 - rate) / y.size), dropped
  assert abs(float(y.mean()) - 1.0) < 0.01
  np.testing.assert_allclose(np.unique(y), [0.0, 65536 / (65536 - round(rate * 65536))], rtol=1e-6)
  with pytest.raises(ValueError, match="rate=1.0"):
    hk.transform(lambda x: attention.dropout(x, 1.0, is_training=True)).apply({}, jax.random.key(0), x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_gradients_equal_autodiff_of_the_plain_product(dtype):
  """Dense's backward pass is written by hand (flattened rows, for XLA:CPU's
  speed): it must give what autodiff of x @ w + b gives, in either compute dtype."""
  f = hk.transform(lambda x: attention.Dense(6, compute_dtype=dtype, name="d")(x, jnp.float32))
  x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
  params = f.init(jax.random.PRNGKey(1), x)
  weights = jax.random.normal(jax.random.PRNGKey(2), (B, T, 6))

  def plain(p, x):
    y = jnp.dot(x.astype(dtype), p["d"]["w"].astype(dtype), preferred_element_type=jnp.float32)
    return jnp.sum((y + p["d"]["b"]) * weights)

  got = jax.grad(lambda p, x: jnp.sum(f.apply(p, None, x) * weights), argnums=(0, 1))(params, x)
  want = jax.grad(plain, argnums=(0, 1))(params, x)
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)
