"""The three models, plus `build`, the one place that wraps them with
`hk.multi_transform` (once) into a `Model` of pure functions.

Models:
  Transformer        encoder-decoder (kind "seq2seq"), "Attention is all you need".
  EncoderClassifier  encoder + mean/CLS pooling + MLP head (kind "classify").
  TransformerLM      decoder-only language model (kind "lm").
  EncoderMLM         encoder + logits over the vocabulary at every position
                     (kind "mlm": BERT's masked-LM pre-training).

The encoder-only models share their parameter paths (`embed/embeddings`,
`encoder/...`), so a masked LM's encoder loads into a classifier one to one,
and into a translator's encoder by renaming `embed` (checkpoint.init_rules).

Parameter paths are explicit and stable: the models' methods are
`hk.transparent`, so paths start at the parts, e.g. `embed/embeddings`,
`encoder/layer_00/attn/query/w`, `decoder/layer_01/cross_attn/key/w`,
`decoder/layer_01/mlp/linear_0/w`, `encoder/ln_final/scale`, `head/linear_1/w`.

Packed rows: when a batch carries `<key>_segmentation` and `<key>_position`,
masks keep segments apart and positions restart per segment, so a packed row
computes what its examples would compute alone.

Positions for length generalisation (`Options.position_restart_ids`,
`position_offset_max`): with restart ids, an encoder's positions also restart
at 0 after each of those tokens, so in "321+54" the digits of both numbers
count 0, 1, 2 from their least significant end, as the decoder's output digits
do: digit i of each operand and of the sum share position i (the index hints
of Abacus embeddings, McLeish et al. 2024). With an offset maximum N, training
shifts each row's positions, encoder and decoder alike, by a random integer in
[0, N] (randomised positions, Ruoss et al. 2023): the positions of lengths
longer than the trained ones get trained too, and a model that relates
positions must do it by their difference. Evaluation and decoding use no
shift, so a decoding step's position stays its cache index.

Shape glossary:
  B: batch.  S: source length.  T: target length.  D: model width.
  H: heads.  V: vocabulary size.  C: classes.  L: cache length.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from transformer_research.models import attention
from transformer_research.models import layers
from transformer_research.models import masks
from transformer_research.models import variants

Batch = dict[str, jnp.ndarray]


def _positions(batch: Batch, key: str) -> jnp.ndarray:
  """[B, T] positions: the packed `<key>_position`, else 0..T-1."""
  if f"{key}_position" in batch:
    return batch[f"{key}_position"]
  tokens = batch[key]
  return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


def restart_positions(positions: jnp.ndarray, tokens: jnp.ndarray,
                      restart_ids: tuple[int, ...]) -> jnp.ndarray:
  """`positions` [B, S] that also restart at 0 after every token in `restart_ids`.

  A run starts at the later of its segment's start (positions restart there
  already, packed or not) and the token after the last restart token; the
  restart token itself ends the run it follows.
  """
  if not restart_ids:
    return positions
  index = jnp.arange(tokens.shape[1])  # [S]
  after_restart = jnp.where(jnp.isin(tokens, jnp.asarray(restart_ids)), index + 1, 0)
  after_restart = jax.lax.cummax(after_restart, axis=1)  # [B, S] inclusive
  after_restart = jnp.pad(after_restart[:, :-1], ((0, 0), (1, 0)))  # ... exclusive
  return index - jnp.maximum(index - positions, after_restart)


def _encoder_positions(batch: Batch, key: str, options: layers.Options) -> jnp.ndarray:
  """[B, S] positions of an encoder's input `batch[key]`, restarted at the
  options' restart ids."""
  return restart_positions(_positions(batch, key), batch[key], options.position_restart_ids)


def _training_offset(options: layers.Options, batch_size: int, is_training: bool):
  """[B, 1] random position shifts in [0, options.position_offset_max] while
  training (one per row, shared by its encoder and decoder), else 0."""
  if not is_training or not options.position_offset_max:
    return 0
  return jax.random.randint(hk.next_rng_key(), (batch_size, 1), 0,
                            options.position_offset_max + 1)


class _OutputMixin:
  """Logits through the tied embedding or a separate `logits` projection."""

  def _logits(self, y: jnp.ndarray, embed: layers.TokenEmbedding,
              vocab_size: int) -> jnp.ndarray:
    if self.tie_output:
      return embed.attend(y)  # [B, T, V] f32
    return attention.Dense(vocab_size, compute_dtype=self.options.compute_dtype,
                           name="logits")(y, jnp.float32)


def _step_inputs(tokens: jnp.ndarray, cache: dict):
  """One decode step: [B, 1] tokens, [B, 1] positions, an all-True mask."""
  tokens = tokens[:, None]  # [B, 1]
  positions = cache["index"][:, None]  # [B, 1]
  mask = jnp.ones((tokens.shape[0], 1, 1, 1), bool)  # The cache adds causality.
  return tokens, positions, mask


class Transformer(_OutputMixin, hk.Module):
  """Encoder-decoder Transformer; reads `inputs`, `targets` (+ packing keys)."""

  def __init__(self, options: layers.Options, *, num_encoder_layers: int,
               num_decoder_layers: int, input_vocab_size: int,
               target_vocab_size: int, share_embeddings: bool, tie_output: bool,
               name: str = "transformer"):
    super().__init__(name=name)
    self.options = options
    self.num_encoder_layers = num_encoder_layers
    self.num_decoder_layers = num_decoder_layers
    self.input_vocab_size = input_vocab_size
    self.target_vocab_size = target_vocab_size
    self.share_embeddings = share_embeddings
    self.tie_output = tie_output
    self._built = None

  @hk.transparent
  def _parts(self):
    """Creates the embeddings, encoder and decoder once, at the top scope.

    __call__ uses encode; creating a second "embed" there would get a fresh
    name ("embed_1") and a second table, hence the memo.
    """
    if self._built is None:
      o = self.options
      embed = lambda vocab, name: layers.TokenEmbedding(
          vocab, o.d_model, compute_dtype=o.compute_dtype, name=name)
      if self.share_embeddings:
        source = target = embed(self.target_vocab_size, "embed")
      else:
        source = embed(self.input_vocab_size, "source_embed")
        target = embed(self.target_vocab_size, "target_embed")
      self._built = (source, target, layers.Encoder(o, self.num_encoder_layers),
                     layers.Decoder(o, self.num_decoder_layers, cross_attention=True))
    return self._built

  @hk.transparent
  def encode(self, batch: Batch, is_training: bool = False, offset=0) -> jnp.ndarray:
    """Returns the memory [B, S, D] for `batch["inputs"]` [B, S]; `offset`
    ([B, 1] or 0) shifts the positions (see `_training_offset`)."""
    source, _, encoder, _ = self._parts()
    inputs = batch["inputs"]
    mask = masks.encoder_mask(inputs, batch.get("inputs_segmentation"))  # [B, 1, S, S]
    positions = _encoder_positions(batch, "inputs", self.options) + offset
    return encoder(source(inputs), mask, positions, is_training=is_training)

  @hk.transparent
  def __call__(self, batch: Batch, is_training: bool) -> jnp.ndarray:
    """Teacher-forced logits [B, T, V] float32."""
    _, target, _, decoder = self._parts()
    targets, seg = batch["targets"], batch.get("targets_segmentation")
    offset = _training_offset(self.options, targets.shape[0], is_training)
    memory = self.encode(batch, is_training, offset)  # [B, S, D]
    decoder_inputs = masks.shift_right(targets, seg)  # [B, T]
    y, _ = decoder(
        target(decoder_inputs), masks.decoder_mask(targets, seg),
        _positions(batch, "targets") + offset, is_training=is_training, memory=memory,
        memory_mask=masks.memory_mask(targets, batch["inputs"], seg,
                                      batch.get("inputs_segmentation")))
    return self._logits(y, target, self.target_vocab_size)

  @hk.transparent
  def decode_context(self, inputs: jnp.ndarray) -> dict:
    """What every decode step of a source attends to, computed once per source:
    {"mask": [B, S] bool (non-pad), "layer_XX": {"key", "value": [B, H, S, Dh]}}.
    """
    _, _, _, decoder = self._parts()
    memory = self.encode({"inputs": inputs})  # [B, S, D]
    return {"mask": inputs > 0, **decoder.memory_kv(memory)}

  @hk.transparent
  def decode_step(self, tokens: jnp.ndarray, cache: dict,
                  context: dict) -> tuple[jnp.ndarray, dict]:
    """Args: tokens [N] previous tokens, N = G * B (G beams per source, see
    `attention.attend`); cache for N rows; context of the B sources.
    Returns (logits [N, V] float32, cache advanced by one)."""
    _, target, _, decoder = self._parts()
    tokens, positions, mask = _step_inputs(tokens, cache)
    memory_kv = {k: v for k, v in context.items() if k != "mask"}
    y, cache = decoder(target(tokens), mask, positions, is_training=False,
                       memory_mask=context["mask"][:, None, None, :],  # [B, 1, 1, S]
                       memory_kv=memory_kv, cache=cache)
    return self._logits(y, target, self.target_vocab_size)[:, 0], cache


class _OneStack(_OutputMixin, hk.Module):
  """A model of one stack over one vocabulary (TransformerLM, EncoderMLM).

  The default module name is the class's in snake case (`transformer_lm`);
  the methods are transparent, so parameter paths start at the parts.
  """

  def __init__(self, options: layers.Options, *, num_layers: int,
               vocab_size: int, tie_output: bool, name: str | None = None):
    super().__init__(name=name)
    self.options = options
    self.num_layers = num_layers
    self.vocab_size = vocab_size
    self.tie_output = tie_output


class TransformerLM(_OneStack):
  """Decoder-only language model; reads `targets` (+ packing keys)."""

  @hk.transparent
  def _parts(self):
    embed = layers.TokenEmbedding(self.vocab_size, self.options.d_model,
                                  compute_dtype=self.options.compute_dtype, name="embed")
    return embed, layers.Decoder(self.options, self.num_layers, cross_attention=False)

  @hk.transparent
  def __call__(self, batch: Batch, is_training: bool) -> jnp.ndarray:
    """Next-token logits [B, T, V] float32 (position t predicts targets[t])."""
    embed, decoder = self._parts()
    targets, seg = batch["targets"], batch.get("targets_segmentation")
    offset = _training_offset(self.options, targets.shape[0], is_training)
    y, _ = decoder(embed(masks.shift_right(targets, seg)),
                   masks.decoder_mask(targets, seg), _positions(batch, "targets") + offset,
                   is_training=is_training)
    return self._logits(y, embed, self.vocab_size)

  @hk.transparent
  def decode_step(self, tokens: jnp.ndarray, cache: dict,
                  context=None) -> tuple[jnp.ndarray, dict]:
    """Args: tokens [B]. Returns (logits [B, V] float32, advanced cache)."""
    del context  # Decoder-only: nothing to attend to but itself.
    embed, decoder = self._parts()
    tokens, positions, mask = _step_inputs(tokens, cache)
    y, cache = decoder(embed(tokens), mask, positions, is_training=False, cache=cache)
    return self._logits(y, embed, self.vocab_size)[:, 0], cache


class EncoderClassifier(hk.Module):
  """Encoder, then mean pooling over non-pad tokens or a learned CLS token
  (`cls/embeddings`, prepended at position 0), then an MLP `head`."""

  def __init__(self, options: layers.Options, *, num_layers: int,
               vocab_size: int, num_classes: int, pooling: str, hidden_size: int,
               name: str = "encoder_classifier"):
    super().__init__(name=name)
    self.options = options
    self.num_layers = num_layers
    self.vocab_size = vocab_size
    self.num_classes = num_classes
    self.pooling = pooling
    self.hidden_size = hidden_size

  @hk.transparent
  def __call__(self, batch: Batch, is_training: bool) -> jnp.ndarray:
    """Class logits [B, C] float32 for `batch["inputs"]` [B, S]."""
    o = self.options
    inputs = batch["inputs"]  # [B, S]
    x = layers.TokenEmbedding(self.vocab_size, o.d_model, compute_dtype=o.compute_dtype,
                              name="embed")(inputs)  # [B, S, D]
    if self.pooling == "cls":
      cls = layers.TokenEmbedding(1, o.d_model, compute_dtype=o.compute_dtype, name="cls")
      x = jnp.concatenate([cls(jnp.zeros_like(inputs[:, :1])), x], axis=1)  # [B, 1+S, D]
      inputs = jnp.pad(inputs, ((0, 0), (1, 0)), constant_values=1)  # CLS is never pad.
    positions = (_encoder_positions({"inputs": inputs}, "inputs", o)
                 + _training_offset(o, inputs.shape[0], is_training))
    encoder = layers.Encoder(o, self.num_layers)
    x = encoder(x, masks.encoder_mask(inputs), positions, is_training=is_training)
    if self.pooling == "cls":
      pooled = x[:, 0].astype(jnp.float32)  # [B, D]
    else:
      keep = (inputs > 0)[..., None].astype(jnp.float32)  # [B, S, 1]
      pooled = jnp.sum(x.astype(jnp.float32) * keep, 1) / jnp.maximum(keep.sum(1), 1.0)
    pooled = attention.dropout(pooled, o.dropout_rate, is_training)  # [B, D]
    head = layers.FeedForward(self.hidden_size, self.num_classes, activation=o.activation,
                              compute_dtype=o.compute_dtype, name="head")
    return head(pooled, jnp.float32)  # [B, C]


class EncoderMLM(_OneStack):
  """Encoder whose positions predict their original tokens; reads `inputs`
  (+ packing keys) and `mlm_positions` (where to predict; every position
  when absent). Which predictions count is the loss's business (`targets > 0`,
  see data/masking.py)."""

  @hk.transparent
  def __call__(self, batch: Batch, is_training: bool) -> jnp.ndarray:
    """Token logits [B, P, V] float32 at `batch["mlm_positions"]` [B, P]
    ([B, S, V] without it) for `batch["inputs"]` [B, S]."""
    o = self.options
    embed = layers.TokenEmbedding(self.vocab_size, o.d_model, compute_dtype=o.compute_dtype,
                                  name="embed")
    inputs = batch["inputs"]
    mask = masks.encoder_mask(inputs, batch.get("inputs_segmentation"))  # [B, 1, S, S]
    positions = (_encoder_positions(batch, "inputs", o)
                 + _training_offset(o, inputs.shape[0], is_training))
    x = layers.Encoder(o, self.num_layers)(embed(inputs), mask, positions,
                                           is_training=is_training)  # [B, S, D]
    if "mlm_positions" in batch:
      x = jnp.take_along_axis(x, batch["mlm_positions"][..., None], axis=1)  # [B, P, D]
    return self._logits(x, embed, self.vocab_size)


KINDS = ("seq2seq", "classify", "lm", "mlm")
_PACKED = ("_segmentation", "_position")
# What each entry point reads: (required keys, optional packing keys).
_BATCH_KEYS = {
    "seq2seq": (("inputs", "targets"),
                tuple(k + p for k in ("inputs", "targets") for p in _PACKED)),
    "lm": (("targets",), tuple("targets" + p for p in _PACKED)),
    "classify": (("inputs",), ()),
    "mlm": (("inputs",), tuple("inputs" + p for p in _PACKED) + ("mlm_positions",)),
    "encode": (("inputs",), tuple("inputs" + p for p in _PACKED)),
}
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# "auto": bfloat16 where the matrix units are built for it, float32 on CPU:
# most CPUs emulate bfloat16 matmuls, and on one with AMX, where they run ~5x
# float32's, a wmt_spa train step gained ~13% and a decode 6-31% (README benchmarks).
_AUTO_BF16_PLATFORMS = ("tpu", "gpu", "cuda", "rocm")


def compute_dtype(name: str, platform: str | None = None):
  """The activation dtype `config.model.compute_dtype` names on `platform`.

  Args:
    name: "auto", "bfloat16" or "float32".
    platform: the devices' platform ("tpu", "gpu", "cpu"); None = JAX's default backend.

  Raises:
    ValueError: float16 (its small range needs loss scaling, which this
      project does not implement) or an unknown name.
  """
  if name == "float16":
    raise ValueError("model.compute_dtype='float16' needs loss scaling, which is not "
                     "implemented; use 'bfloat16' (same speed on TPU/GPU, float32's range) "
                     "or 'auto'.")
  if name == "auto":
    platform = platform or jax.default_backend()
    return jnp.bfloat16 if platform in _AUTO_BF16_PLATFORMS else jnp.float32
  if name not in _DTYPES:
    raise ValueError(f"model.compute_dtype={name!r}; expected one of "
                     f"{['auto', *_DTYPES]}.")
  return _DTYPES[name]


def dummy_batch(kind: str) -> dict[str, np.ndarray]:
  """A one-row batch for `Model.init`: parameter shapes do not depend on
  sequence lengths, so this builds the same parameters as any real batch."""
  row = np.ones((1, 4), np.int32)  # [B=1, 4]
  return {"seq2seq": {"inputs": row, "targets": row}, "lm": {"targets": row},
          "classify": {"inputs": row, "label": np.zeros((1,), np.int32)},
          "mlm": {"inputs": row, "mlm_positions": row[:, :1], "targets": row[:, :1]}}[kind]


def _model_batch(entry: str, batch: Batch) -> Batch:
  """The keys `entry` reads, checked; extra keys (e.g. `length`) dropped."""
  required, optional = _BATCH_KEYS[entry]
  missing = [k for k in required if k not in batch]
  if missing:
    raise ValueError(f"batch lacks {missing} (has {sorted(batch)}); expected "
                     f"{list(required)} for {entry}.")
  out = {k: batch[k] for k in required + optional if k in batch}
  for k, v in out.items():
    layers.check_token_ids(f'batch["{k}"]', v)
    if jnp.ndim(v) != 2:
      raise ValueError(f'batch["{k}"] has shape {jnp.shape(v)}; expected [B, length].')
  return out


class Model:
  """The transformed model: pure functions of (params, rng, data).

  Built once by `build`; every method is safe to call under `jax.jit`.
  """

  def __init__(self, kind: str, options: layers.Options, sizes: variants.Sizes,
               transformed: hk.MultiTransformed):
    self.kind = kind
    self.options = options
    self.sizes = sizes
    self._transformed = transformed

  def init(self, rng, batch: Batch) -> hk.Params:
    """Returns float32 params for batches shaped like `batch`."""
    return self._transformed.init(rng, _model_batch(self.kind, batch))

  def apply(self, params: hk.Params, rng, batch: Batch,
            is_training: bool = False) -> jnp.ndarray:
    """Logits, float32: seq2seq [B, T, V_tgt]; lm [B, T, V]; classify [B, C];
    mlm [B, P, V] at `mlm_positions` (or [B, S, V]).

    `rng` drives dropout and may be None when not training.
    """
    if is_training and rng is None and (self.options.dropout_rate > 0 or
                                        self.options.attention_dropout_rate > 0):
      raise ValueError("rng=None with is_training=True; expected a PRNG key "
                       "for dropout.")
    return self._transformed.apply[0](params, rng, _model_batch(self.kind, batch),
                                      is_training)

  def encode(self, params: hk.Params, batch: Batch) -> jnp.ndarray:
    """seq2seq only: memory [B, S, D] for `batch["inputs"]` (+ segmentation)."""
    self._need("seq2seq", "encode")
    return self._transformed.apply[1](params, None, _model_batch("encode", batch))

  def init_cache(self, batch_size: int, max_len: int) -> dict:
    """Zero decoding cache; every leaf has leading dim `batch_size`.

    {"index": [B] int32, "layer_XX": {"key", "value": [B, H, L, Dh]}} (with
    model.scan_layers one "layers" entry of [B, num_layers, H, L, Dh]), in the
    compute dtype; L = `max_len` decoding steps. Steps past L write
    nothing, so size it for the longest decode.
    """
    self._need(("seq2seq", "lm"), "init_cache")
    o = self.options
    if o.positions == "learned" and max_len > o.max_len:
      raise ValueError(f"max_len={max_len} exceeds model.max_len={o.max_len}, the "
                       f"learned position table; expected at most {o.max_len}.")
    shape = (batch_size, o.num_heads, max_len, o.d_model // o.num_heads)  # Head-major.
    cache = {"index": jnp.zeros((batch_size,), jnp.int32)}
    zeros = lambda shape: {"key": jnp.zeros(shape, o.compute_dtype),
                           "value": jnp.zeros(shape, o.compute_dtype)}
    if o.scan_layers:  # One stacked entry [B, layers, ...]; the decoder slices it per layer.
      cache[layers.SCANNED] = zeros((batch_size, self.sizes.num_decoder_layers) + shape[1:])
      return cache
    for i in range(self.sizes.num_decoder_layers):
      cache[layers.layer_name(i)] = zeros(shape)
    return cache

  def decode_context(self, params: hk.Params, inputs: jnp.ndarray) -> dict:
    """seq2seq only: the encoder run and every layer's cross-attention keys and
    values of `inputs` [B, S], computed once per source for `decode_step`.

    {"mask": [B, S] bool, "layer_XX": {"key", "value": [B, H, S, Dh]}} (scanned:
    one "layers" entry of [B, num_layers, H, S, Dh]).
    """
    self._need("seq2seq", "decode_context")
    layers.check_token_ids("inputs", inputs)
    return self._transformed.apply[3](params, None, inputs)

  def decode_step(self, params: hk.Params, tokens: jnp.ndarray, cache: dict,
                  context: dict | None = None) -> tuple[jnp.ndarray, dict]:
    """One decoding step: tokens [N] int32 (previous token, 0 at the first
    step) -> (logits [N, V] float32, cache advanced by one position).

    seq2seq needs the `context` of its B sources from `decode_context`; N may
    be G * B (G beams per source, in the batch-major layout of
    `decoding.tile_beams`): the beams of a source share its context, so it is
    neither tiled nor reordered with the beams.
    """
    self._need(("seq2seq", "lm"), "decode_step")
    layers.check_token_ids("tokens", tokens)
    if tokens.ndim != 1:
      raise ValueError(f"tokens has shape {tokens.shape}; expected [B].")
    if self.kind == "seq2seq":
      if context is None:
        raise ValueError("context is None; expected decode_context()'s context "
                         "of the sources for kind='seq2seq'.")
      return self._transformed.apply[2](params, None, tokens, cache, context)
    return self._transformed.apply[1](params, None, tokens, cache)

  def _need(self, kinds, method: str) -> None:
    kinds = (kinds,) if isinstance(kinds, str) else kinds
    if self.kind not in kinds:
      raise ValueError(f"{method}() needs kind in {list(kinds)}; this model has "
                       f"kind={self.kind!r}.")


def _options(model_config, platform: str | None = None) -> tuple[layers.Options, variants.Sizes]:
  """Validated Options from `config.model` (sizes from the variant table)."""
  c = model_config
  sizes = variants.resolve(c)
  for field, value, valid in (("norm", c.norm, layers.NORMS),
                              ("activation", c.activation, tuple(layers.ACTIVATIONS)),
                              ("positions", c.positions, layers.POSITIONS),
                              ("pooling", c.pooling, ("mean", "cls")),
                              ("remat", c.remat, tuple(layers.REMAT_POLICIES))):
    if value not in valid:
      raise ValueError(f"model.{field}={value!r}; expected one of {list(valid)}.")
  for field in ("scan_layers", "residual"):
    if not isinstance(c[field], bool):
      raise ValueError(f"model.{field}={c[field]!r}; expected one of [True, False].")
  for field in ("dropout_rate", "attention_dropout_rate"):
    # Checked here, not only where dropout runs: that is the first train step,
    # after the run directory was written.
    if not isinstance(c[field], (int, float)) or not 0 <= c[field] < 1:
      raise ValueError(f"model.{field}={c[field]!r}; expected a value in [0, 1).")
  if c.positions == "rope" and (sizes.d_model // sizes.num_heads) % 2:
    raise ValueError(f"model.positions='rope' needs an even head width; got "
                     f"d_model // num_heads = {sizes.d_model // sizes.num_heads}.")
  options = layers.Options(
      d_model=sizes.d_model, num_heads=sizes.num_heads, d_ff=sizes.d_ff,
      norm=c.norm, residual=c.residual, activation=c.activation, positions=c.positions,
      max_len=c.max_len, position_restart_ids=_restart_ids(c.position_restart_ids),
      position_offset_max=_non_negative("model.position_offset_max", c.position_offset_max),
      fused_qkv=c.fused_qkv, dropout_rate=c.dropout_rate,
      attention_dropout_rate=c.attention_dropout_rate,
      compute_dtype=compute_dtype(c.compute_dtype, platform), scan_layers=c.scan_layers,
      remat=c.remat)
  return options, sizes


def _restart_ids(value) -> tuple[int, ...]:
  """`model.position_restart_ids` as a tuple of token ids (pad 0 is never one)."""
  ids = tuple(value) if isinstance(value, (tuple, list)) else None
  if ids is None or not all(isinstance(i, int) and i > 0 for i in ids):
    raise ValueError(f"model.position_restart_ids={value!r}; expected a tuple of token "
                     "ids > 0 (the pad id 0 cannot restart a count)")
  return ids


def _non_negative(name: str, value) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < 0:
    raise ValueError(f"{name}={value!r}; expected an int >= 0.")
  return value


def _positive(name: str, value) -> int:
  if not isinstance(value, int) or value <= 0:
    raise ValueError(f"{name}={value!r}; expected a positive int.")
  return value


def build(model_config, kind: str, *, input_vocab_size: int | None = None,
          target_vocab_size: int | None = None,
          num_classes: int | None = None, platform: str | None = None) -> Model:
  """Builds the model for a task kind from `config.model`.

  Args:
    model_config: the `config.model` section.
    kind: "seq2seq" (needs both vocab sizes), "lm" (target_vocab_size),
      "classify" (input_vocab_size, num_classes) or "mlm" (input_vocab_size).
    input_vocab_size: source vocabulary size.
    target_vocab_size: target vocabulary size.
    num_classes: number of classes.
    platform: where it will run, for `compute_dtype="auto"`; None = JAX's
      default backend.

  Returns:
    A Model; its functions come from one `hk.multi_transform`.
  """
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}; expected one of {list(KINDS)}.")
  options, sizes = _options(model_config, platform)
  if kind == "seq2seq":
    v_in = _positive("input_vocab_size", input_vocab_size)
    v_out = _positive("target_vocab_size", target_vocab_size)
    if model_config.share_embeddings and v_in != v_out:
      raise ValueError(f"model.share_embeddings=True with input_vocab_size={v_in} "
                       f"!= target_vocab_size={v_out}; expected equal sizes.")
    make = lambda: Transformer(
        options, num_encoder_layers=sizes.num_encoder_layers,
        num_decoder_layers=sizes.num_decoder_layers, input_vocab_size=v_in,
        target_vocab_size=v_out, share_embeddings=model_config.share_embeddings,
        tie_output=model_config.tie_output)
  elif kind == "lm":
    v_out = _positive("target_vocab_size", target_vocab_size)
    make = lambda: TransformerLM(options, num_layers=sizes.num_decoder_layers,
                                 vocab_size=v_out, tie_output=model_config.tie_output)
  elif kind == "mlm":
    v_in = _positive("input_vocab_size", input_vocab_size)
    make = lambda: EncoderMLM(options, num_layers=sizes.num_encoder_layers, vocab_size=v_in,
                              tie_output=model_config.tie_output)
  else:
    v_in = _positive("input_vocab_size", input_vocab_size)
    n = _positive("num_classes", num_classes)
    make = lambda: EncoderClassifier(
        options, num_layers=sizes.num_encoder_layers, vocab_size=v_in,
        num_classes=n, pooling=model_config.pooling,
        hidden_size=model_config.classifier_hidden or sizes.d_model)

  def functions():
    module = make()
    init = lambda batch: module(batch, is_training=False)
    if kind == "seq2seq":
      return init, (module.__call__, module.encode, module.decode_step,
                    module.decode_context)
    if kind == "lm":
      return init, (module.__call__, module.decode_step)
    return init, (module.__call__,)

  return Model(kind, options, sizes, hk.multi_transform(functions))
