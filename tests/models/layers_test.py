"""Tests for models/layers.py: positions, embeddings, block wiring."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_research.models import layers
from transformer_research.models import masks


def test_sinusoidal_matches_the_formula():
  d = 8
  enc = np.asarray(layers.sinusoidal(jnp.arange(5)[None], d))[0]  # [5, 8]
  freq = 10000.0 ** (-np.arange(d // 2) / (d // 2 - 1))
  angles = np.arange(5)[:, None] * freq
  np.testing.assert_allclose(enc, np.concatenate([np.sin(angles), np.cos(angles)], -1),
                             atol=1e-5)


def test_token_embedding_scales_lookup_and_ties_output():
  def forward(tokens, x):
    embed = layers.TokenEmbedding(7, 4, name="embed")
    return embed(tokens), embed.attend(x)

  f = hk.transform(forward)
  tokens = jnp.array([[1, 6]])
  params = f.init(jax.random.key(0), tokens, jnp.ones((1, 1, 4)))
  table = params["embed"]["embeddings"]  # [7, 4]
  emb, logits = f.apply(params, None, tokens, jnp.ones((1, 1, 4)))
  np.testing.assert_allclose(emb[0], table[tokens[0]] * 2.0, rtol=1e-6)
  np.testing.assert_allclose(logits[0, 0], table.sum(-1), rtol=1e-5)
  with pytest.raises(ValueError, match="tokens has dtype float32; expected integer"):
    f.init(jax.random.key(0), tokens.astype(jnp.float32), jnp.ones((1, 1, 4)))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_block_norm_placement(norm):
  """Post-LN blocks end in LayerNorm (unit-scale rows at init); pre-LN keep
  the raw residual stream, so a large input passes through at its scale."""
  options = layers.Options(d_model=8, num_heads=2, d_ff=16, norm=norm)
  f = hk.transform(lambda x: layers.EncoderBlock(options, name="layer_00")(
      x, masks.causal_mask(3), jnp.zeros((1, 3), jnp.int32), is_training=False))
  x = 100.0 * jax.random.normal(jax.random.key(1), (1, 3, 8))
  y = f.apply(f.init(jax.random.key(0), x), None, x)
  if norm == "post":
    np.testing.assert_allclose(y.std(-1), 1.0, rtol=1e-2)
  else:
    assert float(y.std()) > 10.0
  assert set(f.init(jax.random.key(0), x)) >= {
      "layer_00/attn/query", "layer_00/mlp/linear_0", "layer_00/ln_attn", "layer_00/ln_mlp"}


def test_learned_positions_reject_sequences_longer_than_the_table():
  options = layers.Options(d_model=8, num_heads=2, d_ff=16, positions="learned", max_len=4)
  f = hk.transform(lambda x: layers.PositionEmbedding(options)(
      x, jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])))
  f.init(jax.random.key(0), jnp.ones((1, 4, 8)))
  with pytest.raises(ValueError, match=r"sequence length 5 exceeds model.max_len=4"):
    f.init(jax.random.key(0), jnp.ones((1, 5, 8)))
