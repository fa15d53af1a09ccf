"""Ahead-of-time compilation for a target topology: does a layout fit in HBM?

`launch/compile_check.py` uses this to lower and compile the real train step
and decode step of a config for a TPU topology from any machine, the way
MaxText's train_compile does: `jax.experimental.topologies` describes the
chips (libtpu, from the `[tpu]` extra, compiles for them without a TPU), and
`experiment.Experiment(config, devices=...)` builds the mesh, the sharded
abstract state and the jitted steps exactly as a run on those chips would.
Nothing is executed and no data is read: batches are `ShapeDtypeStruct`s of
the shapes the input pipeline produces.

Without libtpu the same programs compile for as many fake CPU devices; their
memory figures are CPU-layout estimates (no TPU padding or fusion), and
`Topology.exact` says so.
"""

import dataclasses
import importlib.util
import re
import time
from typing import Any, Callable

import jax
import numpy as np

from transformer_research import experiment
from transformer_research import runtime
from transformer_research import sharding
from transformer_research.data import masking

GiB = 1024**3
# HBM per chip, by the generation name a topology starts with.
HBM_BYTES = {"v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB, "v6e": 32 * GiB}
# Token ids the decode step is compiled with; any id gives the same program.
_EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str  # e.g. "v5e:4x4"
  devices: list  # What Experiment(config, devices=...) lays the mesh over.
  hbm_bytes: int  # Per chip.
  exact: bool  # False: compiled for fake CPU devices (estimates).


def num_chips(name: str) -> int:
  """Chips of a topology name such as "v5e:4x4" or "v4:2x2x2".

  Raises:
    ValueError: an unknown generation (listing the known ones) or a shape
      that is not NxM[xK].
  """
  generation, _, shape = name.partition(":")
  if generation not in HBM_BYTES:
    raise ValueError(f"--topology={name!r}: unknown TPU generation {generation!r}; expected "
                     f"one of {sorted(HBM_BYTES)} followed by a chip grid, e.g. 'v5e:4x4', "
                     "'v5p:2x2x2'")
  if not re.fullmatch(r"\d+(x\d+){1,2}", shape):
    raise ValueError(f"--topology={name!r}: expected a chip grid after the colon, e.g. "
                     f"'{generation}:2x2'")
  return int(np.prod([int(n) for n in shape.split("x")]))


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def topology(name: str, cpu_devices: list | None = None) -> Topology:
  """The devices of TPU topology `name`.

  Args:
    name: "<generation>:<grid>", e.g. "v5e:4x4" (16 chips).
    cpu_devices: given (the fallback), compile for these CPU devices instead;
      there must be one per chip.

  Raises:
    ValueError: an unknown or malformed name, one libtpu rejects, or a CPU
      fallback with the wrong number of devices.
  """
  chips = num_chips(name)
  hbm = HBM_BYTES[name.partition(":")[0]]
  if cpu_devices is not None:
    if len(cpu_devices) != chips:
      raise ValueError(f"--topology={name} has {chips} chips but {len(cpu_devices)} CPU devices "
                       "are available for the estimate")
    return Topology(name, list(cpu_devices), hbm, exact=False)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  grid = tuple(int(n) for n in name.partition(":")[2].split("x"))
  try:
    try:
      desc = topologies.get_topology_desc(platform="tpu", topology_name=name)
    except Exception as e:  # pylint: disable=broad-except
      if "chips_per_host_bounds" not in str(e):
        raise
      # A grid smaller than one host's chips (v5e:1x1, a single chip): one host holds all.
      desc = topologies.get_topology_desc(platform="tpu", topology_name=name,
                                          chips_per_host_bounds=(grid + (1,))[:3])
  except Exception as e:  # libtpu reports a bad grid as a runtime error.
    raise ValueError(f"--topology={name!r}: libtpu does not know this topology "
                     f"({str(e).strip().splitlines()[0][:200]}); expected e.g. 'v5e:4x4', "
                     "'v5e:2x2', 'v4:2x2x1'") from None
  return Topology(name, list(desc.devices), hbm, exact=True)


def abstract_batch(config: Any, kind: str, mesh: jax.sharding.Mesh, batch_size: int
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The global train batch the pipeline would feed, as sharded shapes.

  Fields per kind as in `data/pipeline.py`: token fields [B, max_len] int32,
  plus `<field>_segmentation` and `<field>_position` when packed, plus the
  class `label` [B] for classifiers and, for the masked LM, `mlm_positions`
  and `targets` [B, P] (data/masking.py).
  """
  d = config.data
  fields = {"seq2seq": {"inputs": d.max_input_len, "targets": d.max_target_len},
            "lm": {"targets": d.max_target_len},
            "classify": {"inputs": d.max_input_len},
            "mlm": {"inputs": d.max_input_len}}[kind]
  packed = d.packing and kind != "classify"
  spec = sharding.batch_sharding(mesh)
  batch = {}
  for field, length in fields.items():
    names = [field] + ([f"{field}_segmentation", f"{field}_position"] if packed else [])
    for key in names:
      batch[key] = jax.ShapeDtypeStruct((batch_size, length), np.int32, sharding=spec)
  if kind == "classify":
    batch["label"] = jax.ShapeDtypeStruct((batch_size,), np.int32, sharding=spec)
  if kind == "mlm":
    predicted = (batch_size, masking.predictions(d.mask_rate, d.max_input_len))
    for key in ("mlm_positions", "targets"):
      batch[key] = jax.ShapeDtypeStruct(predicted, np.int32, sharding=spec)
  return batch


@dataclasses.dataclass(frozen=True)
class Memory:
  """Per-device bytes of one compiled program (the largest device's share)."""
  params: int  # Parameters resident on the device.
  opt_state: int  # Optimizer state resident on the device (train step only).
  arguments: int  # Everything passed in (state + batch), from memory_analysis().
  outputs: int  # Outputs not aliased to donated arguments.
  temporary: int  # XLA's scratch: activations, gradients, collectives buffers.
  compile_seconds: float  # Lowering + compiling: what a run waits for before step 0.

  @property
  def peak(self) -> int:
    """Arguments + new outputs + temporaries: what must fit at once."""
    return self.arguments + self.outputs + self.temporary


def per_device_bytes(tree: Any) -> int:
  """Bytes of the largest per-device shard set of a tree of sharded shapes."""
  total = 0
  for leaf in jax.tree.leaves(tree):
    shard = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
  return total


class DoesNotFit(Exception):
  """The TPU compiler itself refused the program: it needs more HBM than a chip has.

  Attributes:
    params, opt_state: per-device bytes of the resident state (known from the
      shardings without compiling).
  """

  def __init__(self, message: str, params: int, opt_state: int):
    super().__init__(message)
    self.params, self.opt_state = params, opt_state


def _compile(lower: Callable[[], Any], params: Any, opt_state: Any) -> Memory:
  """Lowers and compiles, timed, and reads the memory figures; raises DoesNotFit on
  XLA's out-of-HBM error."""
  start = time.perf_counter()
  try:
    compiled = lower().compile()
  except Exception as e:  # pylint: disable=broad-except  (JaxRuntimeError)
    message = runtime.out_of_memory(e)
    if message is None:
      raise
    raise DoesNotFit(message, per_device_bytes(params), per_device_bytes(opt_state)) from None
  seconds = time.perf_counter() - start
  ma = compiled.memory_analysis()
  outputs = max(int(ma.output_size_in_bytes) - int(ma.alias_size_in_bytes), 0)
  return Memory(params=per_device_bytes(params), opt_state=per_device_bytes(opt_state),
                arguments=int(ma.argument_size_in_bytes), outputs=outputs,
                temporary=int(ma.temp_size_in_bytes), compile_seconds=seconds)


def train_step_memory(exp: experiment.Experiment) -> Memory:
  """Compiles `exp.train_step` for its mesh and reads its memory use.

  Raises:
    DoesNotFit: the TPU compiler ran out of HBM (CPU compiles never do).
  """
  state = exp.abstract_state
  batch = abstract_batch(exp.config, exp.kind, exp.mesh, exp.config.train.batch_size)
  return _compile(lambda: exp.train_step.lower(state, batch), state.params, state.opt_state)


def decode_memory(exp: experiment.Experiment, batch_size: int) -> Memory | None:
  """Compiles the eval decoder (beam search with the KV cache, `config.eval`)
  for a batch of sources; None for classifiers, which do not decode."""
  if exp.kind not in ("seq2seq", "lm"):
    return None
  c = exp.config
  max_len = c.eval.max_decode_len if c.eval.max_decode_len > 0 else c.data.max_target_len
  generate = exp.generate_fn(eos_id=_EOS_ID, max_len=max_len, beam_size=c.eval.beam_size,
                             alpha=c.eval.length_penalty)
  length = c.data.max_input_len if exp.kind == "seq2seq" else max_len
  inputs = jax.ShapeDtypeStruct((batch_size, length), np.int32,
                                sharding=sharding.batch_sharding(exp.mesh))
  params = exp.abstract_state.params
  return _compile(lambda: generate.lower(params, inputs), params, {})


def parameter_count(exp: experiment.Experiment) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(exp.abstract_state.params))

