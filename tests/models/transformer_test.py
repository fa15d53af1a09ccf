"""Tests for the models through `build`: parameter counts, causality, padding
invariance, packing, dropout, cached decoding, mixed precision, bad input."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import random_tokens
from transformer_research import models
from transformer_research.models import variants

V_IN, V_OUT, C = 19, 23, 3


def _build(kind, config):
  return models.build(config, kind, input_vocab_size=V_IN,
                      target_vocab_size=V_IN if config.share_embeddings else V_OUT,
                      num_classes=C)


def _batch(kind, seed=0, batch=2, s=6, t=5, pad=True):
  rng = np.random.default_rng(seed)
  src_len = [s - 2, s] if pad else None
  tgt_len = [t, t - 2] if pad else None
  out = {"inputs": random_tokens(rng, batch, s, V_IN, src_len),
         "targets": random_tokens(rng, batch, t, V_OUT, tgt_len)}
  return {"seq2seq": out, "lm": {"targets": out["targets"]},
          "classify": {"inputs": out["inputs"]}}[kind]


def _expected_param_count(kind, config):
  """Closed form from the sizes: what every block should own, no more."""
  s = variants.resolve(config)
  d, f = s.d_model, s.d_ff
  attn = 4 * (d * d + d)  # query, key, value, linear (fused qkv: same count).
  ln = 0 if config.norm == "none" else 2 * d
  mlp = d * f + f + f * d + d + ln if f else 0  # With its LayerNorm.
  stack = (ln if config.norm == "pre" else 0) + (
      config.max_len * d if config.positions == "learned" else 0)
  encoder = s.num_encoder_layers * (attn + mlp + ln) + stack
  if kind == "classify":
    hidden = config.classifier_hidden or d
    cls = d if config.pooling == "cls" else 0
    return V_IN * d + cls + encoder + d * hidden + hidden + hidden * C + C
  v_out = V_IN if config.share_embeddings else V_OUT
  output = 0 if config.tie_output else d * v_out + v_out
  if kind == "lm":
    return v_out * d + s.num_decoder_layers * (attn + mlp + ln) + stack + output
  embeddings = V_IN * d if config.share_embeddings else (V_IN + V_OUT) * d
  decoder = s.num_decoder_layers * (2 * attn + mlp + 2 * ln) + stack
  return embeddings + encoder + decoder + output


CONFIGS = [
    ("seq2seq", {}),
    ("seq2seq", dict(share_embeddings=True, tie_output=False, positions="learned",
                     norm="post", fused_qkv=True, max_len=16)),
    ("lm", {}),
    ("lm", dict(tie_output=False, positions="learned", max_len=16, activation="gelu")),
    ("classify", {}),
    ("classify", dict(pooling="cls", classifier_hidden=7, positions="learned", max_len=16)),
    # The ablation switches: each component off.
    ("seq2seq", dict(d_ff=0, norm="none", positions="none", residual=False)),
    ("lm", dict(d_ff=0)),
    ("classify", dict(norm="none", positions="none")),
]


@pytest.mark.parametrize("kind,overrides", CONFIGS)
def test_shapes_dtypes_and_closed_form_parameter_count(make_config, kind, overrides):
  config = make_config(**overrides)
  model = _build(kind, config)
  batch = _batch(kind)
  params = model.init(jax.random.key(0), batch)
  count = sum(x.size for x in jax.tree_util.tree_leaves(params))
  assert count == _expected_param_count(kind, config)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  logits = model.apply(params, None, batch, False)
  want = {"seq2seq": (2, 5, V_IN if config.share_embeddings else V_OUT),
          "lm": (2, 5, V_OUT), "classify": (2, C)}[kind]
  assert logits.shape == want and logits.dtype == jnp.float32


def test_without_positions_an_encoder_cannot_see_token_order(make_config):
  """positions="none" makes the classifier a bag of tokens (mean pooling):
  permuting the input leaves its logits unchanged; with positions it does not."""
  batch = _batch("classify", pad=False)
  permuted = {"inputs": batch["inputs"][:, ::-1]}
  for positions, same in (("none", True), ("sinusoidal", False)):
    model = _build("classify", make_config(positions=positions))
    params = model.init(jax.random.key(0), batch)
    a, b = (model.apply(params, None, x, False) for x in (batch, permuted))
    assert np.allclose(a, b, atol=1e-5) == same, positions


def test_restarted_positions_count_each_number_from_its_first_digit():
  plus = 13
  tokens = jnp.array([[3, 4, 5, plus, 6, 7, 0, 0],
                      [3, plus, 4, plus, 5, 6, 7, 0]])
  positions = jnp.broadcast_to(jnp.arange(8), tokens.shape)
  np.testing.assert_array_equal(
      models.transformer.restart_positions(positions, tokens, (plus,)),
      [[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 0, 1, 0, 1, 2, 3]])
  # Packed rows restart at their segments too: "34+5" then "3+44".
  packed = jnp.array([[3, 4, plus, 5, 3, plus, 4, 4]])
  np.testing.assert_array_equal(
      models.transformer.restart_positions(jnp.array([[0, 1, 2, 3, 0, 1, 2, 3]]), packed, (plus,)),
      [[0, 1, 2, 0, 0, 1, 0, 1]])
  np.testing.assert_array_equal(
      models.transformer.restart_positions(positions, tokens, ()), positions)


def test_with_restarts_the_order_of_equally_long_numbers_is_invisible(make_config):
  """Each number's digits count from 0, so "12+34" and "34+12" give a mean-pooling
  classifier the same (token, position) pairs: equal logits, which plain
  positions tell apart."""
  plus = 13
  batch = {"inputs": np.array([[4, 5, plus, 6, 7]], np.int32)}
  swapped = {"inputs": np.array([[6, 7, plus, 4, 5]], np.int32)}
  for restart_ids, same in (((plus,), True), ((), False)):
    model = _build("classify", make_config(position_restart_ids=restart_ids))
    params = model.init(jax.random.key(0), batch)
    a, b = (model.apply(params, None, x, False) for x in (batch, swapped))
    assert np.allclose(a, b, atol=1e-5) == same, restart_ids


@pytest.mark.parametrize("kind", ["seq2seq", "lm", "classify"])
def test_random_position_offsets_apply_only_while_training(make_config, kind):
  """An offset maximum changes training (a shift drawn per row from the rng)
  but not evaluation; under RoPE, which sees only differences, a shared shift
  changes nothing even in training."""
  batch = _batch(kind)
  config = lambda **overrides: make_config(dropout_rate=0.0, **overrides)
  plain, shifted = _build(kind, config()), _build(kind, config(position_offset_max=50))
  params = plain.init(jax.random.key(0), batch)
  train = lambda model, seed: model.apply(params, jax.random.key(seed), batch, True)
  np.testing.assert_array_equal(shifted.apply(params, None, batch, False),
                                plain.apply(params, None, batch, False))
  np.testing.assert_array_equal(train(plain, 1), train(plain, 2))  # No dropout.
  assert not np.allclose(train(shifted, 1), train(shifted, 2))
  np.testing.assert_array_equal(train(shifted, 1), train(shifted, 1))
  if kind != "classify":  # RoPE is in self-attention; a classifier's pooling is not relative.
    rope, rope_shifted = (_build(kind, config(positions="rope", position_offset_max=n))
                          for n in (0, 50))
    rope_params = rope.init(jax.random.key(0), batch)
    np.testing.assert_allclose(rope_shifted.apply(rope_params, jax.random.key(1), batch, True),
                               rope.apply(rope_params, jax.random.key(1), batch, True),
                               atol=1e-4)


def test_residual_switch_keeps_the_parameters_and_changes_the_function(make_config):
  batch = _batch("seq2seq")
  with_res, without = (_build("seq2seq", make_config(residual=r)) for r in (True, False))
  params = with_res.init(jax.random.key(0), batch)
  assert (jax.tree.structure(params)
          == jax.tree.structure(without.init(jax.random.key(0), batch)))
  assert not np.allclose(with_res.apply(params, None, batch, False),
                         without.apply(params, None, batch, False))


def test_parameter_paths_are_stable(make_config):
  params = _build("seq2seq", make_config(share_embeddings=True)).init(
      jax.random.key(0), _batch("seq2seq"))
  paths = {f"{m}/{n}" for m, d in params.items() for n in d}
  for path in ("embed/embeddings", "encoder/layer_00/attn/query/w",
               "encoder/layer_01/attn/linear/w", "decoder/layer_01/cross_attn/key/w",
               "decoder/layer_01/self_attn/value/b", "decoder/layer_01/mlp/linear_0/w",
               "decoder/layer_00/mlp/linear_1/w", "decoder/ln_final/scale"):
    assert path in paths, path


@pytest.mark.parametrize("kind", ["seq2seq", "lm"])
def test_causality(make_config, kind):
  """Changing targets from t on (decoder inputs from t+1) leaves logits <= t."""
  model = _build(kind, make_config())
  batch = _batch(kind, pad=False)
  params = model.init(jax.random.key(0), batch)
  t = 2
  changed = dict(batch, targets=batch["targets"].copy())
  changed["targets"][:, t:] = (changed["targets"][:, t:] % (V_OUT - 1)) + 1
  base, new = model.apply(params, None, batch, False), model.apply(params, None, changed, False)
  np.testing.assert_allclose(base[:, :t + 1], new[:, :t + 1], atol=1e-6)
  assert not np.allclose(base[:, t + 1:], new[:, t + 1:], atol=1e-3)


@pytest.mark.parametrize("kind,overrides", [
    ("seq2seq", {}), ("seq2seq", dict(positions="rope")),
    ("classify", {}), ("classify", dict(pooling="cls"))])
def test_extra_source_padding_changes_nothing(make_config, kind, overrides):
  model = _build(kind, make_config(**overrides))
  batch = _batch(kind)
  params = model.init(jax.random.key(0), batch)
  padded = dict(batch, inputs=np.pad(batch["inputs"], ((0, 0), (0, 3))))
  base, new = model.apply(params, None, batch, False), model.apply(params, None, padded, False)
  if kind == "seq2seq":
    real = batch["targets"] > 0  # Only non-pad target positions are compared.
    base, new = base[real], new[real]
  np.testing.assert_allclose(base, new, atol=1e-5)


@pytest.mark.parametrize("kind", ["seq2seq", "lm", "classify"])
def test_fully_padded_rows_give_finite_logits_and_gradients(make_config, kind):
  model = _build(kind, make_config())
  batch = {k: v.copy() for k, v in _batch(kind).items()}
  for v in batch.values():
    v[0] = 0  # Row 0 is all padding.
  params = model.init(jax.random.key(0), batch)
  assert np.isfinite(model.apply(params, None, batch, False)).all()
  if kind == "seq2seq":  # Encoder, decoder and cross-attention in one gradient.
    loss = lambda p: jnp.sum(model.apply(p, None, batch, False) ** 2)
    grads = jax.jit(jax.grad(loss))(params)  # Compiled: faster than eager here.
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def _pack(a, b, length):
  """Two rows -> one packed row plus segmentation and positions (pad to length)."""
  tokens = np.zeros((1, length), np.int32)
  seg = np.zeros((1, length), np.int32)
  pos = np.zeros((1, length), np.int32)
  tokens[0, :len(a) + len(b)] = np.concatenate([a, b])
  seg[0, :len(a) + len(b)] = [1] * len(a) + [2] * len(b)
  pos[0, :len(a) + len(b)] = list(range(len(a))) + list(range(len(b)))
  return tokens, seg, pos


@pytest.mark.parametrize("kind", ["seq2seq", "lm"])
@pytest.mark.parametrize("positions", ["sinusoidal", "learned", "rope"])
def test_packed_row_equals_each_sequence_alone(make_config, kind, positions):
  rng = np.random.default_rng(3)
  model = _build(kind, make_config(positions=positions, max_len=16))
  src = [random_tokens(rng, 1, n, V_IN)[0] for n in (3, 4)]
  tgt = [random_tokens(rng, 1, n, V_OUT)[0] for n in (4, 3)]
  alone = {"targets": np.stack([np.pad(t, (0, 8 - len(t))) for t in tgt])}
  packed = dict(zip(["targets", "targets_segmentation", "targets_position"],
                    _pack(*tgt, 8)))
  if kind == "seq2seq":
    alone["inputs"] = np.stack([np.pad(s, (0, 8 - len(s))) for s in src])
    packed.update(zip(["inputs", "inputs_segmentation", "inputs_position"], _pack(*src, 8)))
  params = model.init(jax.random.key(0), alone)
  want = model.apply(params, None, alone, False)  # [2, 8, V]
  got = model.apply(params, None, packed, False)[0]  # [8, V]
  np.testing.assert_allclose(got[:4], want[0, :4], atol=1e-5)
  np.testing.assert_allclose(got[4:7], want[1, :3], atol=1e-5)


@pytest.mark.parametrize("kind", ["seq2seq", "lm", "classify"])
def test_dropout_only_when_training_and_keyed_by_rng(make_config, kind):
  model = _build(kind, make_config(dropout_rate=0.3, attention_dropout_rate=0.1))
  batch = _batch(kind)
  params = model.init(jax.random.key(0), batch)
  run = lambda seed, training: model.apply(
      params, None if seed is None else jax.random.key(seed), batch, training)
  np.testing.assert_array_equal(run(None, False), run(1, False))
  np.testing.assert_array_equal(run(1, True), run(1, True))
  assert not np.allclose(run(1, True), run(2, True))
  assert not np.allclose(run(1, True), run(None, False))
  with pytest.raises(ValueError, match="rng=None with is_training=True"):
    run(None, True)


@pytest.mark.parametrize("kind", ["seq2seq", "lm"])
@pytest.mark.parametrize("overrides", [
    dict(positions="sinusoidal"), dict(positions="learned", max_len=8),
    dict(positions="rope"),
    dict(positions="learned", max_len=8, norm="post", fused_qkv=True, tie_output=False)])
def test_cached_decode_steps_equal_apply(make_config, kind, overrides):
  """What decoding relies on: step t with the cache gives apply's logits at t."""
  model = _build(kind, make_config(**overrides))
  batch = _batch(kind, pad=False, t=6)
  params = model.init(jax.random.key(0), batch)
  want = model.apply(params, None, batch, False)  # [B, T, V]
  context = model.decode_context(params, batch["inputs"]) if kind == "seq2seq" else None
  step = jax.jit(model.decode_step)
  cache = model.init_cache(2, 8)
  assert all(x.shape[0] == 2 for x in jax.tree_util.tree_leaves(cache))
  decoder_inputs = np.pad(batch["targets"], ((0, 0), (1, 0)))[:, :-1]  # shift_right
  for t in range(6):
    logits, cache = step(params, jnp.asarray(decoder_inputs[:, t]), cache, context)
    np.testing.assert_allclose(logits, want[:, t], atol=1e-5, err_msg=f"step {t}")
  np.testing.assert_array_equal(cache["index"], [6, 6])


def test_beams_share_their_source_context(make_config):
  """Three rows per source (beams, batch-major) against one context per source:
  each row gives what its source alone gives, with its own self-attention cache."""
  model = _build("seq2seq", make_config())
  batch = _batch("seq2seq", pad=True)
  params = model.init(jax.random.key(0), batch)
  context = model.decode_context(params, batch["inputs"])  # 2 sources
  assert context["layer_00"]["key"].shape == (2, 4, 6, 8)  # [B, H, S, Dh]
  rng = np.random.default_rng(1)
  tokens = rng.integers(1, V_OUT, (6, 4)).astype(np.int32)  # 3 different beams per source
  beams, alone = model.init_cache(6, 4), model.init_cache(6, 4)
  tiled = jax.tree.map(lambda x: jnp.repeat(x, 3, axis=0), context)
  for t in range(4):
    got, beams = model.decode_step(params, jnp.asarray(tokens[:, t]), beams, context)
    want, alone = model.decode_step(params, jnp.asarray(tokens[:, t]), alone, tiled)
    np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"step {t}")


def test_bfloat16_compute_keeps_float32_params_and_logits(make_config):
  batch = _batch("seq2seq")
  f32 = _build("seq2seq", make_config())
  bf16 = _build("seq2seq", make_config(compute_dtype="bfloat16"))
  params = bf16.init(jax.random.key(0), batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))
  logits = bf16.apply(params, None, batch, False)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, f32.apply(params, None, batch, False), atol=0.1)
  assert bf16.init_cache(2, 4)["layer_00"]["key"].dtype == jnp.bfloat16


def test_auto_compute_dtype_is_bfloat16_on_accelerators_and_float16_is_refused(make_config):
  def dtype(name, platform):
    return models.build(make_config(compute_dtype=name), "lm", target_vocab_size=V_OUT,
                        platform=platform).options.compute_dtype
  assert [dtype("auto", p) for p in ("tpu", "gpu", "cpu")] == [jnp.bfloat16] * 2 + [jnp.float32]
  assert dtype("auto", None) == jnp.float32  # The tests run on CPU.
  assert dtype("float32", "tpu") == jnp.float32
  with pytest.raises(ValueError, match="compute_dtype='float16' needs loss scaling"):
    dtype("float16", "gpu")
  with pytest.raises(ValueError, match=r"compute_dtype='fp8'; expected one of \['auto'"):
    dtype("fp8", "cpu")


def test_bad_inputs_raise_value_errors_naming_the_argument(make_config):
  model = _build("seq2seq", make_config(positions="learned", max_len=8))
  batch = _batch("seq2seq")
  params = model.init(jax.random.key(0), batch)
  with pytest.raises(ValueError, match=r'batch\["inputs"\] has dtype float32; expected integer'):
    model.apply(params, None, dict(batch, inputs=batch["inputs"].astype(np.float32)), False)
  with pytest.raises(ValueError, match=r"sequence length 9 exceeds model.max_len=8"):
    model.apply(params, None, dict(batch, targets=np.ones((2, 9), np.int32)), False)
  with pytest.raises(ValueError, match=r"max_len=9 exceeds model.max_len=8"):
    model.init_cache(2, 9)
  with pytest.raises(ValueError, match=r"tokens has dtype float32"):
    model.decode_step(params, jnp.zeros((2,)), model.init_cache(2, 4),
                      model.decode_context(params, batch["inputs"]))
  with pytest.raises(ValueError, match=r"context is None; expected decode_context"):
    model.decode_step(params, jnp.zeros((2,), jnp.int32), model.init_cache(2, 4))
  with pytest.raises(ValueError, match=r"batch lacks \['targets'\]"):
    model.apply(params, None, {"inputs": batch["inputs"]}, False)
  with pytest.raises(ValueError, match=r"model.num_heads=5 does not divide model.d_model=32"):
    _build("seq2seq", make_config(num_heads=5))
  with pytest.raises(ValueError, match=r"kind='mt'; expected one of"):
    models.build(make_config(), "mt", input_vocab_size=3, target_vocab_size=3)
  with pytest.raises(ValueError, match=r"model.positions='alibi'; expected one of"):
    _build("lm", make_config(positions="alibi"))
  with pytest.raises(ValueError, match=r"sequence length 6 \+ model.position_offset_max=4 exceeds "
                                       r"model.max_len=8.*at most 4 tokens"):
    shifted = _build("seq2seq", make_config(positions="learned", max_len=8, position_offset_max=4))
    shifted.apply(params, jax.random.key(0), batch, True)
  with pytest.raises(ValueError, match=r"model.position_offset_max=-1; expected an int >= 0"):
    _build("lm", make_config(position_offset_max=-1))
  with pytest.raises(ValueError, match=r"model.position_restart_ids=\(0,\); expected a tuple of "
                                       r"token ids > 0"):
    _build("classify", make_config(position_restart_ids=(0,)))
  with pytest.raises(ValueError, match=r"model.remat='some'; expected one of \['none', 'full', 'dots'\]"):
    _build("lm", make_config(remat="some"))
  with pytest.raises(ValueError, match=r"model.scan_layers='yes'; expected one of \[True, False\]"):
    _build("lm", ml_collections.ConfigDict({**make_config().to_dict(), "scan_layers": "yes"}))
  with pytest.raises(ValueError, match=r"share_embeddings=True with input_vocab_size=3"):
    models.build(make_config(share_embeddings=True), "seq2seq", input_vocab_size=3,
                 target_vocab_size=4)
  lm = _build("lm", make_config())
  with pytest.raises(ValueError, match=r"encode\(\) needs kind in \['seq2seq'\]"):
    lm.encode(params, batch)


def test_masked_lm_shares_the_classifier_encoder_paths_and_predicts_at_positions(make_config):
  config = make_config()
  classify = _build("classify", config).init(jax.random.key(0), _batch("classify"))
  model = _build("mlm", config)
  inputs = _batch("classify")["inputs"]  # [2, 6]
  positions = np.array([[0, 3], [5, 1]], np.int32)
  mlm = model.init(jax.random.key(0), {"inputs": inputs, "mlm_positions": positions})
  # The classifier is the masked LM's parameters plus its head: a one-to-one warm start.
  assert set(mlm) == {k for k in classify if not k.startswith("head/")}
  assert all(mlm[k][n].shape == classify[k][n].shape for k in mlm for n in mlm[k])
  everywhere = model.apply(mlm, None, {"inputs": inputs}, False)  # [2, 6, V]
  picked = model.apply(mlm, None, {"inputs": inputs, "mlm_positions": positions}, False)
  assert everywhere.shape == (2, 6, V_IN) and picked.shape == (2, 2, V_IN)
  np.testing.assert_allclose(picked, np.take_along_axis(everywhere, positions[..., None], 1),
                             atol=1e-5)


def test_masked_lm_packed_row_equals_each_sequence_alone(make_config):
  rng = np.random.default_rng(3)
  model = _build("mlm", make_config())
  src = [random_tokens(rng, 1, n, V_IN)[0] for n in (3, 4)]
  alone = {"inputs": np.stack([np.pad(s, (0, 8 - len(s))) for s in src])}
  packed = dict(zip(["inputs", "inputs_segmentation", "inputs_position"], _pack(*src, 8)))
  params = model.init(jax.random.key(0), alone)
  want = model.apply(params, None, alone, False)  # [2, 8, V]
  got = model.apply(params, None, packed, False)[0]  # [8, V]
  np.testing.assert_allclose(got[:3], want[0, :3], atol=1e-5)
  np.testing.assert_allclose(got[3:7], want[1, :4], atol=1e-5)
