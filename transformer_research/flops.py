"""Model FLOPs of a train step and the peak FLOP/s MFU divides by.

MFU (model FLOPs utilisation) = model FLOPs per step / step time / peak
FLOP/s. bench/train_step.py prints it for one config; the training loop puts
it in every train record. Both use the functions here so the figures agree.

The peak is the datasheet figure of the device for the compute dtype
(`PEAK_FLOPS`: dense matmul throughput, no sparsity), as MaxText and the
PaLM paper report MFU, so accelerator MFU is comparable across codebases. A
CPU has no such figure: there the peak is measured (a float32 matmul on the
same devices) and every output that shows it says "measured".
"""

import logging
import time
from typing import Mapping, NamedTuple

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


# Dense datasheet peak FLOP/s of one chip / GPU, by compute dtype. Keys are
# lower-case substrings of `jax.Device.device_kind`, most specific first
# ("h100 pcie" before "h100"). float32 means what XLA runs for a float32 dot
# at JAX's default precision: one bfloat16 pass on TPU (so the bf16 peak) and
# TF32 tensor cores on A100/H100/H200 (the TF32 peak). float16 = bfloat16.
_TPU_V4 = {"bfloat16": 275e12}  # cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16 per chip.
_TPU_V5E = {"bfloat16": 197e12}  # cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16 per chip.
_TPU_V5P = {"bfloat16": 459e12}  # cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16 per chip.
_TPU_V6E = {"bfloat16": 918e12}  # cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16 per chip.
# NVIDIA A100 datasheet (SXM and PCIe alike): 312 TFLOP/s bf16, 156 TF32 (dense).
_A100 = {"bfloat16": 312e12, "float32": 156e12}
# NVIDIA H100 datasheet (H100 SXM column): 989 TFLOP/s bf16, 494.5 TF32 (half
# the "with sparsity" 1,979 / 989 figures); the H200 datasheet gives the same.
_H100_SXM = {"bfloat16": 989e12, "float32": 494.5e12}
# NVIDIA H100 datasheet, H100 PCIe column: 756 bf16 (1,513 sparse), 378 TF32 (756 sparse).
_H100_PCIE = {"bfloat16": 756e12, "float32": 378e12}
# H100 NVL / H200 NVL columns: 835 bf16 (1,671 sparse), 417.5 TF32 (835 sparse).
_NVL = {"bfloat16": 835e12, "float32": 417.5e12}
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("tpu v4", _TPU_V4),
    ("tpu v5 lite", _TPU_V5E), ("tpu v5e", _TPU_V5E),
    ("tpu v5p", _TPU_V5P), ("tpu v5", _TPU_V5P),  # jax names v5p "TPU v5".
    ("tpu v6 lite", _TPU_V6E), ("tpu v6e", _TPU_V6E),
    ("a100", _A100),
    ("h100 pcie", _H100_PCIE), ("h100 nvl", _NVL), ("h100", _H100_SXM),
    ("h200 nvl", _NVL), ("h200", _H100_SXM),
)


class Peak(NamedTuple):
  """One device's peak FLOP/s and where it came from, for the output."""
  flops_per_device: float
  source: str  # e.g. "datasheet, NVIDIA H100 80GB HBM3, bfloat16" or "measured, ..."


def datasheet_peak(device_kind: str, compute_dtype: str) -> float | None:
  """`PEAK_FLOPS` for one device kind and compute dtype; None if not listed."""
  dtype = "bfloat16" if compute_dtype == "float16" else compute_dtype
  kind = device_kind.lower()
  for key, table in PEAK_FLOPS:
    if key in kind:
      if dtype in table:
        return table[dtype]
      # TPUs run a default-precision float32 dot as one bfloat16 pass.
      return table["bfloat16"] if kind.startswith("tpu") else None
  return None


def peak_matmul_flops(mesh: jax.sharding.Mesh, n: int, repeats: int = 5,
                      dtype: str = "float32") -> float:
  """Best of `repeats` N x N x N matmuls in `dtype`, in FLOP/s over all mesh devices.

  Every device of the mesh multiplies its own matrix (the leading dimension
  is split over all mesh axes), so the figure is the whole mesh's peak. The
  best, not the mean, is kept: other load on the machine can only slow a run
  down, never speed it up.
  """
  count = mesh.devices.size
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(tuple(mesh.axis_names)))
  # Made on the devices, so every process of a multi-host mesh can run it.
  a = jax.jit(lambda: jnp.ones((count, n, n), dtype), out_shardings=spec)()
  # Accumulated and returned in float32, as the model's dense layers do: for
  # bfloat16 on XLA:CPU that is also what selects the fast (AMX) kernel; a
  # bfloat16 result ran at a sixth of its speed on the README's machine.
  matmul = jax.jit(lambda x: jnp.einsum("bij,bjk->bik", x, x,
                                        preferred_element_type=jnp.float32),
                   out_shardings=spec)
  matmul(a).block_until_ready()  # Compile and first-run allocations.
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * count * n ** 3 / best


def device_peak(mesh: jax.sharding.Mesh, compute_dtype: str, probe_size: int = 2048,
                repeats: int = 5) -> Peak:
  """The datasheet peak of the mesh's devices, else (CPU, unlisted kinds) a measured one.

  Args:
    mesh: the devices that run the step (all of one kind).
    compute_dtype: `config.model.compute_dtype` ("auto" is resolved for the
      mesh's platform, as the model resolves it).
    probe_size, repeats: the matmul probe, where one is needed: in the compute
      dtype, since a CPU's bfloat16 and float32 matmuls can differ by 5x
      (AMX: 1.5 against 0.3 TFLOP/s on the 2-core machine of the README).
  """
  device = mesh.devices.flat[0]
  if compute_dtype == "auto":
    compute_dtype = jnp.dtype(models.transformer.compute_dtype("auto", device.platform)).name
  listed = datasheet_peak(device.device_kind, compute_dtype)
  if listed is not None:
    return Peak(listed, f"datasheet, {device.device_kind}, {compute_dtype}")
  if device.platform != "cpu":
    logging.warning("flops: no datasheet peak for device kind %r and %s (flops.PEAK_FLOPS); "
                    "MFU is relative to a measured %s matmul instead", device.device_kind,
                    compute_dtype, compute_dtype)
  measured = peak_matmul_flops(mesh, probe_size, repeats, compute_dtype) / mesh.devices.size
  return Peak(measured, f"measured, {compute_dtype} {probe_size}^3 matmul on {device.device_kind}")


def loop_peak_flops(peak_flops_per_device: float, mesh: jax.sharding.Mesh,
                    compute_dtype: str = "float32") -> float:
  """The whole mesh's peak FLOP/s for the loop's "mfu"; 0 means don't report.

  Args:
    peak_flops_per_device: `config.train.peak_flops_per_device`: -1 takes
      `device_peak` (the datasheet; on CPU a small 1024^3 probe, best of 3,
      so start-up stays well under a second), 0 turns "mfu" off, a positive
      value is one device's FLOP/s.
    mesh: the training mesh.
    compute_dtype: `config.model.compute_dtype`, which selects the datasheet figure.

  Raises:
    ValueError: a negative value other than -1.
  """
  if peak_flops_per_device == -1:
    peak = device_peak(mesh, compute_dtype, probe_size=1024, repeats=3)
    logging.info("mfu: peak %.1f TFLOP/s per device (%s)", peak.flops_per_device / 1e12,
                 peak.source)
    return peak.flops_per_device * mesh.devices.size
  if peak_flops_per_device < 0:
    raise ValueError(f"config.train.peak_flops_per_device={peak_flops_per_device}; expected "
                     "-1 (datasheet, measured on CPU), 0 (don't report) or a positive FLOP/s "
                     "of one device")
  return float(peak_flops_per_device) * mesh.devices.size
