"""Building blocks: embeddings, positions, feed-forward, encoder/decoder
blocks and the Encoder / Decoder stacks the models in transformer.py use.

Every block takes `is_training` explicitly; dropout is active only when it is
True. Blocks are pre-LN by default (LayerNorm inside the residual branch,
stable without warm-up tricks) or post-LN (LayerNorm after the residual add,
the original paper). LayerNorm statistics are computed in float32.

Shape glossary:
  B: batch.  T: sequence length (S for the source).  D: model width.
  F: feed-forward hidden width.  V: vocabulary size.  L: cache length.
"""

import dataclasses
from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from transformer_research.models import attention

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu}
# "none" of each, residual=False and d_ff=0 switch a component off, for
# ablations (the component-by-component build-up of the README).
POSITIONS = ("learned", "sinusoidal", "rope", "none")
NORMS = ("pre", "post", "none")


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything a block needs, resolved once from `config.model` by `build`."""
  d_model: int
  num_heads: int
  d_ff: int  # 0 = no feed-forward sublayer.
  norm: str = "pre"
  residual: bool = True
  activation: str = "relu"
  positions: str = "sinusoidal"
  max_len: int = 512
  # Index hints and randomised positions (length generalisation, see
  # transformer.py): encoder positions restart at 0 after these token ids, and
  # while training every row's positions are shifted by a random offset in
  # [0, position_offset_max].
  position_restart_ids: tuple[int, ...] = ()
  position_offset_max: int = 0
  fused_qkv: bool = False
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  compute_dtype: Any = jnp.float32
  scan_layers: bool = False
  remat: str = "none"


# Rematerialisation policies (`model.remat`): what the backward pass may keep
# from the forward pass of a block instead of recomputing it.
REMAT_POLICIES = {
    "none": None,  # Keep everything (no jax.checkpoint).
    "full": jax.checkpoint_policies.nothing_saveable,  # Keep only the block's input.
    # Keep the weight matmuls' outputs, recompute attention and elementwise ops.
    "dots": jax.checkpoint_policies.save_only_these_names(attention.DENSE_OUTPUT),
}
# Scanned stacks keep their blocks under ENCODER_OR_DECODER/layers/layer/...,
# with a leading [num_layers] dimension on every parameter.
SCANNED = "layers"


def layer_name(index: int) -> str:
  """Stable, sortable block names: layer_00, layer_01, ..."""
  return f"layer_{index:02d}"


def check_token_ids(name: str, value) -> None:
  """Token ids must be integers: a float array here is a data bug, and
  gathering with it would fail later inside XLA with a vaguer message."""
  dtype = jnp.asarray(value).dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"{name} has dtype {dtype}; expected integer token ids "
                     "(int32).")


class TokenEmbedding(hk.Module):
  """Token lookup (scaled by sqrt(D), as in the paper) and its transpose.

  Parameter `embeddings` [V, D] float32. `attend` reuses it as the output
  projection when the output is tied to the embedding.
  """

  def __init__(self, vocab_size: int, d_model: int, *,
               compute_dtype: Any = jnp.float32, name: str | None = None):
    super().__init__(name=name)
    self.vocab_size = vocab_size
    self.d_model = d_model
    self.compute_dtype = compute_dtype

  def _table(self) -> jnp.ndarray:
    init = hk.initializers.TruncatedNormal(stddev=self.d_model ** -0.5)
    return hk.get_parameter("embeddings", [self.vocab_size, self.d_model],
                            jnp.float32, init=init)  # [V, D]

  def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
    """Args: tokens [B, T] int. Returns [B, T, D] in the compute dtype."""
    check_token_ids("tokens", tokens)
    x = jnp.take(self._table(), tokens, axis=0) * np.sqrt(self.d_model)
    return x.astype(self.compute_dtype)

  def attend(self, x: jnp.ndarray) -> jnp.ndarray:
    """Args: x [B, T, D]. Returns logits [B, T, V] float32."""
    return tied_logits(x.astype(self.compute_dtype), self._table().astype(self.compute_dtype))


@jax.custom_vjp
def tied_logits(x: jnp.ndarray, table: jnp.ndarray) -> jnp.ndarray:
  """x [B, T, D] @ table [V, D]^T -> [B, T, V] float32 (f32 accumulation).

  Autodiff would compute the table's gradient as g^T @ x, for which XLA:CPU
  first writes the [B*T, V] logits gradient g a second time, transposed; the
  backward pass below computes (x^T @ g)^T instead, transposing only the
  [D, V] result. On the wmt_spa steps that transposed copy of g was the
  largest single non-matmul op.
  """
  return jnp.einsum("btd,vd->btv", x, table, preferred_element_type=jnp.float32)


def _tied_logits_forward(x, table):
  return tied_logits(x, table), (x, table)


def _tied_logits_backward(residuals, g):
  x, table = residuals  # g: [B, T, V] float32, as the logits.
  dx = jnp.einsum("btv,vd->btd", g.astype(x.dtype), table, preferred_element_type=jnp.float32)
  # The table's gradient sums over every token: float32 operands, as XLA computes
  # the other weight gradients. (With bfloat16 operands and a float32 result,
  # XLA:CPU compiles this dot but fails running it: "Unsupported element type
  # for DotThunk::Execute: BF16 x BF16 = F32".)
  dtable = jnp.einsum("btd,btv->dv", x.astype(jnp.float32), g).T  # [V, D]
  return dx.astype(x.dtype), dtable.astype(table.dtype)


tied_logits.defvjp(_tied_logits_forward, _tied_logits_backward)


def sinusoidal(positions: jnp.ndarray, d_model: int) -> jnp.ndarray:
  """Fixed sin/cos position encodings (sin half, then cos half).

  Computed from the positions themselves, so there is no table and no length
  limit, and packed rows (positions restarting per segment) need nothing
  special.

  Args:
    positions: [B, T] int.

  Returns:
    [B, T, D] float32.
  """
  half = d_model // 2
  inv_freq = np.exp(-np.log(10000.0) * np.arange(half) / max(half - 1, 1))  # [D/2]
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
  enc = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return jnp.pad(enc, ((0, 0), (0, 0), (0, d_model - 2 * half)))  # odd D


class PositionEmbedding(hk.Module):
  """Adds absolute positions: a learned table `embeddings` [max_len, D] or
  sinusoids. RoPE is relative and lives in the attention, so here it adds
  nothing."""

  def __init__(self, options: Options, name: str | None = None):
    super().__init__(name=name)
    self.options = options

  def __call__(self, x: jnp.ndarray, positions: jnp.ndarray) -> jnp.ndarray:
    """Args: x [B, T, D]; positions [B, T] int. Returns [B, T, D]."""
    kind, d_model = self.options.positions, self.options.d_model
    if kind == "learned":
      max_len, offset = self.options.max_len, self.options.position_offset_max
      if x.shape[1] + offset > max_len:
        plus_offset = f" + model.position_offset_max={offset}" if offset else ""
        raise ValueError(f"sequence length {x.shape[1]}{plus_offset} exceeds model.max_len="
                         f"{max_len}, the size of the learned position table; expected at "
                         f"most {max_len - offset} tokens.")
      table = hk.get_parameter("embeddings", [max_len, d_model], jnp.float32,
                               init=hk.initializers.TruncatedNormal(stddev=0.02))
      return x + jnp.take(table, positions, axis=0).astype(x.dtype)
    if kind == "sinusoidal":
      return x + sinusoidal(positions, d_model).astype(x.dtype)
    return x


def layer_norm(x: jnp.ndarray, name: str) -> jnp.ndarray:
  """LayerNorm with float32 statistics and parameters; returns x's dtype."""
  y = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True,
                   name=name)(x.astype(jnp.float32))
  return y.astype(x.dtype)


class FeedForward(hk.Module):
  """Position-wise MLP: `linear_0` (D -> F), activation, `linear_1` (F -> out)."""

  def __init__(self, hidden_size: int, output_size: int, *, activation: str,
               compute_dtype: Any = jnp.float32, name: str | None = None):
    super().__init__(name=name)
    self.hidden_size = hidden_size
    self.output_size = output_size
    self.activation = ACTIVATIONS[activation]
    self.compute_dtype = compute_dtype

  def __call__(self, x: jnp.ndarray, out_dtype: Any = None) -> jnp.ndarray:
    """Args: x [..., D]. Returns [..., output_size]."""
    dense = lambda size, name: attention.Dense(size, compute_dtype=self.compute_dtype,
                                               name=name)
    h = self.activation(dense(self.hidden_size, "linear_0")(x))  # [..., F]
    return dense(self.output_size, "linear_1")(h, out_dtype)


class _Block(hk.Module):
  """Shared residual wiring of encoder and decoder blocks."""

  def __init__(self, options: Options, name: str | None = None):
    super().__init__(name=name)
    self.options = options

  @hk.transparent
  def _attention(self, name: str, rope: bool) -> attention.MultiHeadAttention:
    o = self.options
    return attention.MultiHeadAttention(
        o.num_heads, o.d_model, fused_qkv=o.fused_qkv,
        dropout_rate=o.attention_dropout_rate, rope=rope,
        compute_dtype=o.compute_dtype, name=name)

  @hk.transparent
  def _residual(self, x, sublayer, ln_name: str, is_training: bool):
    """pre-LN: x + drop(f(LN(x)));  post-LN: LN(x + drop(f(x)));  no norm:
    x + drop(f(x)). Without the residual connection the `x +` goes."""
    o = self.options
    y, aux = sublayer(layer_norm(x, ln_name) if o.norm == "pre" else x)
    y = attention.dropout(y, o.dropout_rate, is_training)
    if o.residual:
      y = x + y
    return (layer_norm(y, ln_name) if o.norm == "post" else y), aux

  @hk.transparent
  def _mlp(self, x, is_training: bool) -> jnp.ndarray:
    o = self.options
    if not o.d_ff:
      return x
    mlp = FeedForward(o.d_ff, o.d_model, activation=o.activation,
                      compute_dtype=o.compute_dtype, name="mlp")
    x, _ = self._residual(x, lambda h: (mlp(h), None), "ln_mlp", is_training)
    return x


class EncoderBlock(_Block):
  """Self-attention (`attn`) then feed-forward (`mlp`)."""

  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, positions: jnp.ndarray,
               *, is_training: bool) -> jnp.ndarray:
    """Args: x [B, S, D]; mask [B, 1, S, S] bool; positions [B, S]. Returns [B, S, D]."""
    attn = self._attention("attn", rope=self.options.positions == "rope")
    x, _ = self._residual(
        x, lambda h: attn(h, mask, is_training=is_training, positions=positions),
        "ln_attn", is_training)
    return self._mlp(x, is_training)


class DecoderBlock(_Block):
  """Causal self-attention (`self_attn`), optional cross-attention to the
  encoder output (`cross_attn`), then feed-forward (`mlp`)."""

  def __init__(self, options: Options, *, cross_attention: bool,
               name: str | None = None):
    super().__init__(options, name=name)
    self.cross_attention = cross_attention

  @hk.name_like("__call__")  # Same parameters as the full pass: key/w, not ~memory_kv.
  def memory_kv(self, memory: jnp.ndarray) -> attention.Cache:
    """This block's cross-attention keys and values of `memory` [B, S, D]."""
    return self._attention("cross_attn", rope=False).memory_kv(memory)

  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, positions: jnp.ndarray,
               *, is_training: bool, memory: jnp.ndarray | None = None,
               memory_mask: jnp.ndarray | None = None,
               memory_kv: attention.Cache | None = None,
               cache: attention.Cache | None = None,
               cache_index: jnp.ndarray | None = None,
               ) -> tuple[jnp.ndarray, attention.Cache | None]:
    """Runs the block on a whole sequence, or on one step with a cache.

    Args:
      x: [B, T, D] (T = 1 with a cache).
      mask: [B, 1, T, T] bool causal mask (with a cache, [B, 1, 1, 1] True;
        the cache adds the look-ahead limit).
      positions: [B, T] int.
      is_training: enables dropout.
      memory: [B, S, D] encoder output, when `cross_attention`.
      memory_mask: [B, 1, T, S] bool.
      memory_kv: instead of `memory` (decoding): this block's `memory_kv` of
        it, {"key", "value": [B_src, H, S, Dh]}; `x` may then hold several
        rows (beams) per source, and `memory_mask` is [B_src, 1, 1, S].
      cache: this block's self-attention {"key", "value": [B, H, L, Dh]}.
      cache_index: [B] int32 decode position.

    Returns:
      ([B, T, D], the updated cache or None).
    """
    self_attn = self._attention("self_attn", rope=self.options.positions == "rope")
    x, cache = self._residual(
        x, lambda h: self_attn(h, mask, is_training=is_training, positions=positions,
                               cache=cache, cache_index=cache_index),
        "ln_self_attn", is_training)
    if self.cross_attention:
      cross_attn = self._attention("cross_attn", rope=False)
      x, _ = self._residual(
          x, lambda h: cross_attn(h, memory_mask, memory=memory, memory_kv=memory_kv,
                                  is_training=is_training),
          "ln_cross_attn", is_training)
    return self._mlp(x, is_training), cache


class Encoder(hk.Module):
  """Positions, dropout, `layer_XX` EncoderBlocks (or, with
  `options.scan_layers`, one `hk.layer_stack` of them), final LayerNorm (pre-LN)."""

  def __init__(self, options: Options, num_layers: int, name: str = "encoder"):
    super().__init__(name=name)
    self.options = options
    self.num_layers = num_layers

  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, positions: jnp.ndarray,
               *, is_training: bool) -> jnp.ndarray:
    """Args: x [B, S, D] token embeddings; mask [B, 1, S, S]; positions [B, S].
    Returns [B, S, D] in the compute dtype."""
    o = self.options
    x = PositionEmbedding(o, name="pos_embed")(x, positions)
    x = attention.dropout(x, o.dropout_rate, is_training)
    block = lambda name: _remat(o, lambda x: EncoderBlock(o, name=name)(
        x, mask, positions, is_training=is_training))
    if o.scan_layers:
      x = hk.layer_stack(self.num_layers, name=SCANNED)(block("layer"))(x)
    else:
      for i in range(self.num_layers):
        x = block(layer_name(i))(x)
    if o.norm == "pre":  # Pre-LN leaves the residual stream unnormalised.
      x = layer_norm(x, "ln_final")
    return x


def _swap_layers_and_batch(tree):
  """[L, B, ...] <-> [B, L, ...]: stacked caches keep batch leading, as the
  searches gather rows; `hk.layer_stack` scans the leading axis."""
  return jax.tree.map(lambda c: jnp.swapaxes(c, 0, 1), tree)


def _remat(o: Options, fn):
  """`fn` under `jax.checkpoint` with the policy of `o.remat` ("none": as is).

  CSE prevention is only needed outside a scan (inside one XLA cannot merge
  the recomputation into the forward pass anyway).
  """
  if o.remat == "none":
    return fn
  return hk.remat(fn, policy=REMAT_POLICIES[o.remat], prevent_cse=not o.scan_layers)


class Decoder(hk.Module):
  """Positions, dropout, `layer_XX` DecoderBlocks, final LayerNorm (pre-LN).

  Runs a whole sequence (training, teacher forcing) or one step against a
  cache {"index": [B] int32, "layer_XX": {"key", "value": [B, H, L, Dh]}}
  (scanned: {"index", "layers": {"key", "value": [B, num_layers, H, L, Dh]}}).
  A step of an encoder-decoder attends to a context from `memory_kv`, the
  cross-attention keys and values of every layer, computed once per source.
  With `options.scan_layers` the blocks are one `hk.layer_stack` (compiled
  once, whatever the depth) named `layers/layer`.
  """

  def __init__(self, options: Options, num_layers: int, *,
               cross_attention: bool, name: str = "decoder"):
    super().__init__(name=name)
    self.options = options
    self.num_layers = num_layers
    self.cross_attention = cross_attention

  @hk.name_like("__call__")  # Same parameters as the full pass: key/w, not ~memory_kv.
  def memory_kv(self, memory: jnp.ndarray) -> dict:
    """{"layer_XX": {"key", "value": [B, H, S, Dh]}} of `memory` [B, S, D]
    (scanned: {"layers": {"key", "value": [B, num_layers, H, S, Dh]}})."""
    kv = lambda name, m: DecoderBlock(self.options, cross_attention=True, name=name).memory_kv(m)
    if self.options.scan_layers:
      _, stacked = hk.layer_stack(self.num_layers, with_per_layer_inputs=True, name=SCANNED)(
          lambda m: (m, kv("layer", m)))(memory)
      return {SCANNED: _swap_layers_and_batch(stacked)}
    return {layer_name(i): kv(layer_name(i), memory) for i in range(self.num_layers)}

  def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, positions: jnp.ndarray,
               *, is_training: bool, memory: jnp.ndarray | None = None,
               memory_mask: jnp.ndarray | None = None, memory_kv: dict | None = None,
               cache: dict | None = None) -> tuple[jnp.ndarray, dict | None]:
    """Args: x [B, T, D] embedded decoder inputs; mask [B, 1, T, T];
    positions [B, T]; memory [B, S, D]; memory_mask [B, 1, T, S]; cache as
    above (then T = 1 and positions = cache["index"]); memory_kv (with a
    cache, instead of memory) from `memory_kv`, memory_mask then
    [B_src, 1, 1, S] (see `DecoderBlock`).
    Returns ([B, T, D], the updated cache or None)."""
    o = self.options
    x = PositionEmbedding(o, name="pos_embed")(x, positions)
    x = attention.dropout(x, o.dropout_rate, is_training)
    index = None if cache is None else cache["index"]

    def block(name):
      def apply(x, layer_cache=None, layer_kv=None):
        return DecoderBlock(o, cross_attention=self.cross_attention, name=name)(
            x, mask, positions, is_training=is_training, memory=memory,
            memory_mask=memory_mask, memory_kv=layer_kv, cache=layer_cache, cache_index=index)
      return _remat(o, apply)

    new_cache = None if cache is None else {"index": cache["index"] + 1}
    if o.scan_layers and cache is None:
      x = hk.layer_stack(self.num_layers, name=SCANNED)(lambda x: block("layer")(x)[0])(x)
    elif o.scan_layers:  # Each layer reads and returns its slice of the stacked cache.
      # The cache keeps batch leading (as the searches expect); the stack scans axis 0.
      kv = None if memory_kv is None else _swap_layers_and_batch(memory_kv[SCANNED])
      x, stacked = hk.layer_stack(self.num_layers, with_per_layer_inputs=True, name=SCANNED)(
          block("layer"))(x, _swap_layers_and_batch(cache[SCANNED]), kv)
      new_cache[SCANNED] = _swap_layers_and_batch(stacked)
    else:
      for i in range(self.num_layers):
        name = layer_name(i)
        x, layer_cache = block(name)(x, None if cache is None else cache[name],
                                     None if memory_kv is None else memory_kv[name])
        if cache is not None:
          new_cache[name] = layer_cache
    if o.norm == "pre":
      x = layer_norm(x, "ln_final")
    return x, new_cache
