"""Checks that a config fits a TPU topology, from a machine without a TPU.

    python launch/compile_check.py --config=configs/wmt_spa.py:big --topology=v5e:4x4 \
        --config.mesh.shape="(1,16,1)" [--compare_mesh="(16,1,1)"] [--find_max_batch]

Lowers and compiles the real train step and decode step (`experiment.Experiment`
on the topology's devices, see `transformer_research/aot.py`) and prints, per
device: parameter, optimizer-state and temporary bytes (XLA's
`memory_analysis()`), the seconds lowering and compiling took (the TPU
compiler's own time, e.g. to compare `model.scan_layers`), the chip's HBM, and
"fits" or "does not fit" (exit 1).
Needs libtpu (`pip install -e '.[tpu]'`); without it (or with `--cpu`) the
programs compile for one fake CPU device per chip and the figures are
CPU-layout estimates. `--compare_mesh` compiles a second mesh and prints the
ratio of per-device parameter + optimizer bytes; `--find_max_batch` doubles
`train.batch_size` until the train step no longer fits.
"""

import ast
import copy
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from transformer_research import aot
from transformer_research import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<task>.py[:variant]).",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:4x4, v5e:1x1, v4:2x2x2.")
_CPU = flags.DEFINE_bool("cpu", False, "Compile for fake CPU devices even if libtpu is installed.")
_DECODE_BATCH = flags.DEFINE_integer("decode_batch", None, "Sources per decode batch; default "
                                     "config.eval.batch_size.")
_COMPARE = flags.DEFINE_string("compare_mesh", None, "A second config.mesh.shape, e.g. "
                               "'(16,1,1)': prints both and the ratio of parameter + optimizer bytes.")
_FIND_MAX_BATCH = flags.DEFINE_bool("find_max_batch", False, "Double train.batch_size until the "
                                    "train step does not fit; print the largest that fits.")


def _gib(n: int) -> str:
  return f"{n / aot.GiB:.2f} GiB" if n >= aot.GiB else f"{n / 2**20:.1f} MiB"


def _line(what: str, memory: aot.Memory, hbm: int) -> bool:
  fits = memory.peak <= hbm
  print(f"  {what}: params {_gib(memory.params)} | optimizer state {_gib(memory.opt_state)} | "
        f"arguments {_gib(memory.arguments)} | outputs {_gib(memory.outputs)} | temporaries "
        f"{_gib(memory.temporary)} | compiled in {memory.compile_seconds:.1f} s | peak "
        f"{_gib(memory.peak)} of {_gib(hbm)} HBM: {'fits' if fits else 'DOES NOT FIT'}")
  return fits


def _measure(what: str, measure, hbm: int) -> tuple[bool, aot.Memory | None]:
  """Runs one `aot.*_memory` call and prints its line; (fits, memory or None if refused)."""
  try:
    memory = measure()
  except aot.DoesNotFit as e:
    print(f"  {what}: params {_gib(e.params)} | optimizer state {_gib(e.opt_state)} | the TPU "
          f"compiler refused it ({e}): DOES NOT FIT")
    return False, None
  if memory is None:
    return True, None
  return _line(what, memory, hbm), memory


def _check(config, topo: aot.Topology, decode_batch: int | None,
           decode: bool = True) -> tuple[bool, aot.Memory]:
  """Prints the figures of one config on `topo`; returns (fits, train memory)."""
  from transformer_research import experiment  # pylint: disable=g-import-not-at-top
  from transformer_research import sharding  # pylint: disable=g-import-not-at-top
  exp = experiment.Experiment(config, devices=topo.devices)
  mesh = exp.mesh  # Raises on a mesh that does not match the chip count.
  batch = decode_batch or config.eval.batch_size
  # A batch that does not split over the mesh's batch shards: one line, not XLA's.
  sharding.check_batch_size(config.train.batch_size, mesh)
  sharding.check_batch_size(batch, mesh, "--decode_batch" if decode_batch else
                            "config.eval.batch_size")
  print(f"{config.data.task} {config.model.variant}: {exp.kind}, "
        f"{aot.parameter_count(exp) / 1e6:.1f}M parameters, compute "
        f"{exp.model.options.compute_dtype.__name__}, optimizer {config.train.optimizer}; mesh "
        f"{dict(mesh.shape)} on {topo.name} ({len(topo.devices)} x {topo.devices[0].device_kind})")
  fits, train = _measure(f"train step, batch {config.train.batch_size}",
                         lambda: aot.train_step_memory(exp), topo.hbm_bytes)
  if decode and exp.kind in ("seq2seq", "lm"):
    decode_fits, _ = _measure(f"decode, batch {batch}, beam {config.eval.beam_size}",
                              lambda: aot.decode_memory(exp, batch), topo.hbm_bytes)
    fits &= decode_fits
  return fits, train


def _with(config, **fields):
  """A copy of `config` with dotted fields replaced (the parsed config stays as it is)."""
  c = copy.deepcopy(config)
  for key, value in fields.items():
    section, name = key.split(".")
    c[section][name] = value
  return c


def _compare_shape(text: str | None, chips: int) -> tuple[int, ...] | None:
  """--compare_mesh as a mesh shape of the topology's chips (None when not given).

  Raises:
    ValueError: not a tuple of ints, or not a mesh of `chips` devices, naming the flag
      (it was found after the first compile, as Python's `malformed node or string`).
  """
  if text is None:
    return None
  try:
    shape = tuple(ast.literal_eval(text))
    if not all(isinstance(size, int) and not isinstance(size, bool) for size in shape):
      raise TypeError
  except (ValueError, SyntaxError, TypeError):
    raise ValueError(f"--compare_mesh={text!r}: expected a mesh shape (data, fsdp, tensor) "
                     "such as (16,1,1)") from None
  from transformer_research import sharding  # pylint: disable=g-import-not-at-top  (imports jax)
  try:
    sharding.resolve_shape(shape, chips)
  except ValueError as e:
    raise ValueError(f"--compare_mesh={text!r}: {e}") from None
  return shape


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  chips = aot.num_chips(_TOPOLOGY.value)
  compare = _compare_shape(_COMPARE.value, chips)  # Before the first compile: minutes on big.
  exact = aot.libtpu_available() and not _CPU.value
  # This tool never runs a computation: the host's CPU backend is all JAX needs to start
  # (TPU programs compile through the topology description).
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # libtpu takes a machine-wide lock file meant for processes that drive TPU chips; a
  # compile-only process drives none, so several checks may run at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if not exact:  # One CPU device per chip; must be set before JAX starts its CPU backend.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={chips}")
  import jax  # pylint: disable=g-import-not-at-top
  topo = aot.topology(_TOPOLOGY.value, None if exact else jax.devices("cpu"))
  if not exact:
    print(f"note: {'--cpu given' if _CPU.value else 'libtpu is not installed'}: compiling for "
          f"{chips} CPU devices; the figures are CPU-layout estimates, not TPU figures "
          "(pip install -e '.[tpu]' for those)")
  config = _CONFIG.value
  fits, train = _check(config, topo, _DECODE_BATCH.value)
  if _COMPARE.value:
    other = _with(config, **{"mesh.shape": compare})
    _, other_train = _check(other, topo, _DECODE_BATCH.value)
    if train is None or other_train is None:
      raise ValueError("--compare_mesh: a train step that does not compile has no figures")
    ratio = (train.params + train.opt_state) / max(other_train.params + other_train.opt_state, 1)
    print(f"parameter + optimizer bytes per device: {_gib(train.params + train.opt_state)} "
          f"(mesh {tuple(config.mesh.shape)}) / {_gib(other_train.params + other_train.opt_state)}"
          f" (mesh {tuple(other.mesh.shape)}) = {ratio:.4f} (1/{1 / ratio:.2f})")
  if _FIND_MAX_BATCH.value:
    batch, largest = config.train.batch_size * 2, config.train.batch_size if fits else None
    while largest:  # Only the train step depends on train.batch_size.
      ok, _ = _check(_with(config, **{"train.batch_size": batch}), topo, None, decode=False)
      if not ok:
        break
      largest, batch = batch, batch * 2
    print(f"largest train.batch_size that fits {topo.name}: {largest}" if largest else
          f"train.batch_size={config.train.batch_size} already does not fit {topo.name}")
  if not fits:
    sys.exit(1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "topology"])
  cli.run(main)
