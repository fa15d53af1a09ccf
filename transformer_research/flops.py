"""Model FLOPs of a train step and the measured matmul peak, for MFU.

MFU (model FLOPs utilisation) = model FLOPs per step / step time / peak
FLOP/s. bench/train_step.py prints it for one config; the training loop puts
it in every train record. Both use the two functions here so the figures
agree.

The peak is measured (a float32 matmul on the same devices) rather than taken
from a datasheet, so MFU is relative to what this machine really delivers.
"""

import time
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from transformer_research import models
from transformer_research.models import variants


def train_flops_per_step(kind: str, sizes: variants.Sizes, batch_size: int, input_len: int,
                         target_len: int, vocab_size: int) -> float:
  """Training FLOPs of one step of the model, from its shapes alone.

  A multiply-add counts as 2 FLOPs and the backward pass as twice the forward
  (training = 3 x forward). With B = `batch_size` rows, S = `input_len` and
  T = `target_len` positions, D = d_model, F = d_ff, V = `vocab_size` (the
  target vocab), L_e / L_d encoder / decoder layers:

    encoder, per layer:   B*S*(8*D^2 + 4*D*F) + B*S*S*4*D          (QKVO, FFN; QK^T, AV)
    decoder, per layer:   B*T*(8*D^2 + 4*D*F) + B*T*T*4*D          (self-attention, FFN)
                        + B*T*4*D^2 + B*S*4*D^2 + B*T*S*4*D        (cross-attention Q,O / K,V / QK^T,AV)
    output logits:        B*T*2*D*V
    total:                3 * (sum of the above)

  seq2seq counts all of it; lm the decoder without cross-attention plus the
  logits; classify the encoder only (its small head is left out); mlm the
  encoder plus logits at its T = P predicted positions. Attention
  is counted over all positions: masks do not skip work. Softmax, norms and
  the optimizer update are left out, which is why XLA's own count
  (`compiled.cost_analysis()["flops"]`) comes out a little higher.

  Raises:
    ValueError: `kind` is not one of models.KINDS.
  """
  if kind not in models.KINDS:
    raise ValueError(f"kind={kind!r}; expected one of {models.KINDS}")
  b, s, t = batch_size, input_len, target_len
  d, f = sizes.d_model, sizes.d_ff
  encoder = b * s * (8 * d * d + 4 * d * f) + b * s * s * 4 * d
  decoder = b * t * (8 * d * d + 4 * d * f) + b * t * t * 4 * d
  cross = b * t * 4 * d * d + b * s * 4 * d * d + b * t * s * 4 * d
  forward = 0.0
  if kind in ("seq2seq", "classify", "mlm"):
    forward += sizes.num_encoder_layers * encoder
  if kind == "seq2seq":
    forward += sizes.num_decoder_layers * (decoder + cross)
  if kind == "lm":
    forward += sizes.num_decoder_layers * decoder
  if kind != "classify":
    forward += b * t * 2 * d * vocab_size
  return 3.0 * forward


def batch_train_flops(kind: str, sizes: variants.Sizes, batch: Mapping[str, np.ndarray],
                      vocab_size: int) -> float:
  """`train_flops_per_step` for a host batch, read from its array shapes.

  The loop calls this every step: unpacked batches come in several bucket
  lengths, so the shapes, not the config's maxima, say what was computed.
  Only shapes are read, so this never waits for a device.
  """
  rows = len(next(iter(batch.values())))
  input_len = batch["inputs"].shape[1] if kind != "lm" else 0
  target_len = batch["targets"].shape[1] if kind != "classify" else 0
  return train_flops_per_step(kind, sizes, rows, input_len, target_len, vocab_size)


def peak_matmul_flops(mesh: jax.sharding.Mesh, n: int, repeats: int = 5) -> float:
  """Best of `repeats` float32 N x N x N matmuls, in FLOP/s over all mesh devices.

  Every device of the mesh multiplies its own matrix (the leading dimension
  is split over all mesh axes), so the figure is the whole mesh's peak. The
  best, not the mean, is kept: other load on the machine can only slow a run
  down, never speed it up.
  """
  count = mesh.devices.size
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(tuple(mesh.axis_names)))
  # Made on the devices, so every process of a multi-host mesh can run it.
  a = jax.jit(lambda: jnp.ones((count, n, n), jnp.float32), out_shardings=spec)()
  matmul = jax.jit(lambda x: jnp.einsum("bij,bjk->bik", x, x), out_shardings=spec)
  matmul(a).block_until_ready()  # Compile and first-run allocations.
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * count * n ** 3 / best


def loop_peak_flops(peak_flops_per_device: float, mesh: jax.sharding.Mesh) -> float:
  """The whole mesh's peak FLOP/s for the loop's "mfu"; 0 means don't report.

  Args:
    peak_flops_per_device: `config.train.peak_flops_per_device`: -1 measures
      (a small 1024^3 probe, best of 3, so start-up stays well under a second
      on CPU), 0 turns "mfu" off, a positive value is one device's FLOP/s.

  Raises:
    ValueError: a negative value other than -1.
  """
  if peak_flops_per_device == -1:
    return peak_matmul_flops(mesh, 1024, repeats=3)
  if peak_flops_per_device < 0:
    raise ValueError(f"config.train.peak_flops_per_device={peak_flops_per_device}; expected "
                     "-1 (measure), 0 (don't report) or a positive FLOP/s of one device")
  return float(peak_flops_per_device) * mesh.devices.size
