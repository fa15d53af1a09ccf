"""Train-step speed, MFU and compile cost: `python bench/train_step.py --config=configs/wmt_spa.py`.

Prints the config, the device, compile time, the step's temporary memory
(`compiled.memory_analysis()`), step time, tokens/s, the achieved TFLOP/s per
device and MFU, where

  MFU = model FLOPs per step / step time / peak FLOP/s.

The peak is the device's datasheet figure for the compute dtype
(`flops.PEAK_FLOPS`) on accelerators; on CPU it is measured in the same run (a
large matmul in the compute dtype on the same devices, before and after the
timed steps, the higher kept), and the output says which. Batches are synthetic with the
config's shapes (full rows, no padding: as packed training rows), so no data
is needed. `--compile_only` stops after compiling (layout comparisons of big
models: `--config.model.scan_layers`, `--config.model.remat`).

Model FLOPs per step come from `flops.train_flops_per_step` (its docstring
has the formula) and the peak from `flops.device_peak`, the same functions
the training loop uses for the "mfu" of its train records. The formula is
printed next to XLA's own count (`compiled.cost_analysis()["flops"]`), which
also includes softmax, norms and the optimizer update.

`--matmul_table` times every dot of the compiled step alone (its operand
shapes, dtypes and dimension numbers, read from the optimized HLO), best of
5: how much of the step is matmul, at what speed each shape runs on this
device, and so what MFU the step could reach if nothing else took time.
"""

import collections
import os
import re
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from transformer_research import experiment
from transformer_research import flops as flops_lib
from transformer_research import runtime
from transformer_research import sharding
from transformer_research.data import masking
from transformer_research.data import tasks

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one compile + warmup step).")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 2048, "N of the N x N x N peak-matmul probe (CPU).")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Print compile time and memory only.")
_MATMUL_TABLE = flags.DEFINE_bool("matmul_table", False, "Also time each dot of the compiled "
                                  "step alone, at its own shapes (see the module docstring).")


def synthetic_batch(kind: str, batch: int, s: int, t: int,
                    vocab: tasks.VocabSizes) -> dict[str, np.ndarray]:
  """Random full rows (no padding) of the config's shapes."""
  rng = np.random.default_rng(0)
  out = {}
  if kind in ("seq2seq", "classify", "mlm"):
    out["inputs"] = rng.integers(1, vocab.input, (batch, s), dtype=np.int32)
  if kind in ("seq2seq", "lm"):
    out["targets"] = rng.integers(1, vocab.target, (batch, t), dtype=np.int32)
  if kind == "mlm":  # T tokens predicted per row (data/masking.py: P).
    out["mlm_positions"] = np.sort(rng.permutation(s)[:t])[None].repeat(batch, 0).astype(np.int32)
    out["targets"] = np.take_along_axis(out["inputs"], out["mlm_positions"], 1)
  if kind == "classify":
    out["label"] = rng.integers(0, vocab.num_classes, (batch,), dtype=np.int32)
  return out


def main(argv: list[str]) -> None:
  del argv
  runtime.keep_freed_memory()  # As launch/train.py: before the backend starts.
  c = _CONFIG.value
  exp = experiment.Experiment(c)  # Model and state from the config: no data is read.
  kind, sizes, vocab = exp.kind, exp.model.sizes, exp.vocab
  b, s, t = c.train.batch_size, c.data.max_input_len, c.data.max_target_len
  if kind == "mlm":
    t = masking.predictions(c.data.mask_rate, s)
  mesh = exp.mesh
  sharding.check_batch_size(b, mesh)
  host_batch = synthetic_batch(kind, b, s, t, vocab)
  batch = sharding.global_batch(host_batch, mesh)
  device = jax.devices()[0]
  print(f"config: {c.data.task} {kind} variant={c.model.variant} {sizes} vocab={vocab} "
        f"batch={b} S={s} T={t} optimizer={c.train.optimizer} "
        f"compute_dtype={c.model.compute_dtype} scan_layers={c.model.scan_layers} "
        f"remat={c.model.remat} mesh={dict(mesh.shape)}")
  print(f"device: {jax.device_count()} x {device.platform} ({device.device_kind}), "
        f"{os.cpu_count()} host cores")

  start = time.perf_counter()
  compiled = exp.train_step.lower(exp.abstract_state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  print(f"compile: {compile_s:.1f} s")
  if memory is not None:
    print(f"memory per device: temporaries {memory.temp_size_in_bytes / 2**20:,.1f} MiB, "
          f"arguments {memory.argument_size_in_bytes / 2**20:,.1f} MiB")
  if _COMPILE_ONLY.value:
    return
  cost = compiled.cost_analysis()
  xla_flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))
  state = exp.init_state()
  state, metrics = compiled(state, batch)  # Warmup: first-run allocations.
  jax.block_until_ready(metrics)
  # On CPU the peak is probed before and after the timed steps and the higher
  # one kept: on a shared machine this errs towards a lower, not a
  # flattering, MFU.
  peak = flops_lib.device_peak(mesh, c.model.compute_dtype, _PEAK_SIZE.value)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  if peak.source.startswith("measured"):
    peak = max(peak, flops_lib.device_peak(mesh, c.model.compute_dtype, _PEAK_SIZE.value))

  flops = flops_lib.train_flops_per_step(kind, sizes, b, s, t, vocab.target or 0)
  step_s = float(np.median(times))
  tokens = b * ((s if "inputs" in host_batch else 0) + (t if "targets" in host_batch else 0))
  achieved = flops / step_s / mesh.devices.size
  print(f"step time: {step_s * 1e3:.1f} ms (median of {len(times)}; min {min(times) * 1e3:.1f})")
  print(f"tokens/s: {tokens / step_s:,.0f}")
  print(f"model FLOPs/step: {flops:.3e} (formula); XLA cost_analysis: {xla_flops:.3e} "
        f"(formula/XLA = {flops / xla_flops:.2f})")
  print(f"achieved: {achieved / 1e12:.4f} TFLOP/s per device")
  print(f"peak: {peak.flops_per_device / 1e12:.4f} TFLOP/s per device ({peak.source})")
  print(f"MFU: {achieved / peak.flops_per_device:.1%}")
  if _MATMUL_TABLE.value:
    matmul_table(compiled.as_text(), step_s, flops / mesh.devices.size, peak.flops_per_device)


# A dot of optimized HLO: `dot(%lhs, %rhs), lhs_contracting_dims={1}, ...`.
_DOT = re.compile(r" dot\(%([\w.\-]+), %([\w.\-]+)\), (.*)")
_DEFINITION = re.compile(r"%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_HLO_DTYPES = {"f32": np.float32, "bf16": jax.numpy.bfloat16, "f16": np.float16,
               "s32": np.int32}


def compiled_dots(hlo: str) -> collections.Counter:
  """(lhs (dtype, shape), rhs (dtype, shape), dimension numbers) -> count, for
  every dot in the optimized HLO text of a compiled step."""
  numbers = lambda text: tuple(int(v) for v in text.split(",") if v)
  arrays = {m.group(1): (m.group(2), numbers(m.group(3))) for m in _DEFINITION.finditer(hlo)}
  dots = collections.Counter()
  for line in hlo.splitlines():
    match = _DOT.search(line)
    if not match:
      continue
    def dims(name, attributes=match.group(3)):
      found = re.search(name + r"=\{([\d,]*)\}", attributes)
      return numbers(found.group(1)) if found else ()
    dimension_numbers = ((dims("lhs_contracting_dims"), dims("rhs_contracting_dims")),
                         (dims("lhs_batch_dims"), dims("rhs_batch_dims")))
    dots[arrays[match.group(1)], arrays[match.group(2)], dimension_numbers] += 1
  return dots


def matmul_table(hlo: str, step_s: float, model_flops: float, peak: float) -> None:
  """Prints each distinct dot of one device's step timed alone, and their sum
  against the step; `model_flops` per device, as MFU counts them."""
  print("\nmatmuls of the compiled step, each jitted alone (best of 5):")
  print(f"{'count':>5}  {'lhs':<22} {'rhs':<22} {'contracting':<14} {'batch':<18} "
        f"{'ms':>8} {'TFLOP/s':>8}")
  total_s = total_flop = 0.0
  for (lhs, rhs, numbers), count in sorted(compiled_dots(hlo).items(), key=lambda kv: -kv[1]):
    (_, rhs_contracting), (_, rhs_batch) = numbers
    x, y = (jax.numpy.ones(shape, _HLO_DTYPES[dtype]) for dtype, shape in (lhs, rhs))
    dot = jax.jit(lambda x, y, numbers=numbers: jax.lax.dot_general(x, y, numbers))
    dot(x, y).block_until_ready()
    seconds = []
    for _ in range(5):
      start = time.perf_counter()
      dot(x, y).block_until_ready()
      seconds.append(time.perf_counter() - start)
    kept = [n for i, n in enumerate(rhs[1]) if i not in rhs_contracting and i not in rhs_batch]
    flop = 2.0 * np.prod(lhs[1]) * np.prod(kept)
    total_s += count * min(seconds)
    total_flop += count * flop
    print(f"{count:>5}  {str(lhs[1]):<22} {str(rhs[1]):<22} {str(numbers[0]):<14} "
          f"{str(numbers[1]):<18} {min(seconds) * 1e3:>8.2f} {flop / min(seconds) / 1e12:>8.3f}")
  print(f"matmuls: {total_s * 1e3:,.0f} ms of the {step_s * 1e3:,.0f} ms step "
        f"({total_s / step_s:.0%}), {total_flop / total_s / 1e12:.3f} TFLOP/s: with nothing "
        f"else in the step, MFU would be {model_flops / total_s / peak:.1%}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
