"""Train-step speed and MFU: `python bench/train_step.py --config=configs/wmt_spa.py`.

Prints the config, the device, step time, tokens/s and MFU, where

  MFU = model FLOPs per step / step time / peak matmul FLOP/s,

the peak being measured in the same run (a large float32 matmul on the same
devices), so the figure is relative to what this machine really delivers
rather than a datasheet. Batches are synthetic with the config's shapes
(full rows, no padding: as packed training rows), so no data is needed.

Model FLOPs per step come from `flops.train_flops_per_step` (its docstring
has the formula) and the peak from `flops.peak_matmul_flops`, the same two
functions the training loop uses for the "mfu" of its train records. The
formula is printed next to XLA's own count (`compiled.cost_analysis()["flops"]`),
which also includes softmax, norms and the optimizer update.
"""

import os
import sys
import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

# The repository root, so that config files can `from configs import base`.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from transformer_research import flops as flops_lib  # noqa: E402
from transformer_research import models  # noqa: E402
from transformer_research import optim  # noqa: E402
from transformer_research import sharding  # noqa: E402
from transformer_research import training  # noqa: E402
from transformer_research.data import tasks  # noqa: E402
from transformer_research.models import variants  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one compile + warmup step).")
_PEAK_SIZE = flags.DEFINE_integer("peak_size", 2048, "N of the N x N x N peak-matmul probe.")


def synthetic_batch(kind: str, batch: int, s: int, t: int, vocab: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  out = {}
  if kind in ("seq2seq", "classify"):
    out["inputs"] = rng.integers(1, vocab, (batch, s), dtype=np.int32)
  if kind in ("seq2seq", "lm"):
    out["targets"] = rng.integers(1, vocab, (batch, t), dtype=np.int32)
  if kind == "classify":
    out["label"] = rng.integers(0, 2, (batch,), dtype=np.int32)
  return out


def main(argv: list[str]) -> None:
  del argv
  c = _CONFIG.value
  kind = tasks.REGISTRY[c.data.task].kind
  sizes = variants.resolve(c.model)
  b, s, t, vocab = c.train.batch_size, c.data.max_input_len, c.data.max_target_len, c.data.vocab_size
  mesh = sharding.make_mesh(c.mesh)
  sharding.check_batch_size(b, mesh)
  model = models.build(c.model, kind, input_vocab_size=vocab, target_vocab_size=vocab,
                       num_classes=2 if kind == "classify" else None)
  optimizer, schedule = optim.make_optimizer(c.train)
  host_batch = synthetic_batch(kind, b, s, t, vocab)
  state, shardings = training.init_train_state(
      model, optimizer, {k: v[:1] for k, v in host_batch.items()}, mesh,
      tuple(c.mesh.param_rules) or sharding.PARAM_RULES, c.seed)
  step = training.jit_train_step(
      training.make_train_step(c, model, optimizer, schedule, kind, mesh), shardings, mesh)
  batch = sharding.global_batch(host_batch, mesh)

  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  xla_flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))
  state, metrics = compiled(state, batch)  # Warmup: first-run allocations.
  jax.block_until_ready(metrics)
  # The peak is probed before and after the timed steps and the higher one
  # kept: on a shared machine this errs towards a lower, not a flattering, MFU.
  peak = flops_lib.peak_matmul_flops(mesh, _PEAK_SIZE.value)
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  peak = max(peak, flops_lib.peak_matmul_flops(mesh, _PEAK_SIZE.value))

  flops = flops_lib.train_flops_per_step(kind, sizes, b, s, t, vocab)
  step_s = float(np.median(times))
  tokens = b * ((s if "inputs" in host_batch else 0) + (t if "targets" in host_batch else 0))
  device = jax.devices()[0]
  print(f"config: {c.data.task} {kind} variant={c.model.variant} {sizes} vocab={vocab} "
        f"batch={b} S={s} T={t} optimizer={c.train.optimizer} "
        f"compute_dtype={c.model.compute_dtype} mesh={dict(mesh.shape)}")
  print(f"device: {jax.device_count()} x {device.platform} ({device.device_kind}), "
        f"{os.cpu_count()} host cores")
  print(f"compile: {compile_s:.1f} s")
  print(f"step time: {step_s * 1e3:.1f} ms (median of {len(times)}; min {min(times) * 1e3:.1f})")
  print(f"tokens/s: {tokens / step_s:,.0f}")
  print(f"model FLOPs/step: {flops:.3e} (formula); XLA cost_analysis: {xla_flops:.3e} "
        f"(formula/XLA = {flops / xla_flops:.2f})")
  print(f"peak matmul: {peak / 1e9:.1f} GFLOP/s (float32 {_PEAK_SIZE.value}^3, measured now)")
  print(f"MFU: {flops / step_s / peak:.1%}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
