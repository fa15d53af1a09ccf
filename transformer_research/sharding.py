"""The one place that decides how devices form a mesh and how arrays lay out.

Axes are `("data", "fsdp", "tensor")`:

* `data`   - pure data parallelism: every device holds whole parameters.
* `fsdp`   - data parallelism whose devices also split each weight (ZeRO-3),
             so a model never has to fit on one device.
* `tensor` - Megatron tensor parallelism: column-parallel Q/K/V and first
             feed-forward weight, row-parallel attention output and second
             feed-forward weight, vocabulary-parallel embedding and logits.

Batches are split over `("data", "fsdp")`. Parameters get a `PartitionSpec`
from an ordered tuple of `(regex over the Haiku path "module/param", spec)`
rules; the first rule that matches wins. A spec is a tuple with one entry per
leading dimension (an axis name, a tuple of axis names, or None), or the string
"fsdp", which shards the largest dimension divisible by the `fsdp` axis. A rule
that cannot apply because a dimension is not divisible by its axis size falls
back to replicating that dimension with a logged warning naming the parameter,
its shape and the axis: a layout is never silently different from the rules.
"""

import logging
import math
import re
from typing import Any, Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Haiku Linear weights are [in, out] and embeddings [vocab, d_model].
PARAM_RULES = (
    (r"attn/(query|key|value|qkv)/w$", ("fsdp", "tensor")),  # column-parallel
    (r"attn/(query|key|value|qkv)/b$", ("tensor",)),
    (r"attn/linear/w$", ("tensor", "fsdp")),  # row-parallel
    (r"mlp/linear_0/w$", ("fsdp", "tensor")),  # column-parallel
    (r"mlp/linear_0/b$", ("tensor",)),
    (r"mlp/linear_1/w$", ("tensor", "fsdp")),  # row-parallel
    # Token tables (embed, source_embed, target_embed), not pos_embed.
    (r"(^|/|source_|target_)embed/embeddings$", ("tensor", "fsdp")),  # vocab-parallel
    (r"(logits|output)/w$", ("fsdp", "tensor")),  # vocabulary-parallel logits
    (r"(logits|output)/b$", ("tensor",)),
    (r".*", "fsdp"),  # everything else: plain FSDP
)


def make_mesh(mesh_config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the `("data", "fsdp", "tensor")` mesh described by `config.mesh`.

  Args:
    mesh_config: `config.mesh`; `shape` is (data, fsdp, tensor) with at most
      one -1 meaning "all remaining devices". With a non-empty `dcn_shape` the
      mesh is hybrid: `shape` is per slice (ICI) and `dcn_shape` across slices,
      so only the slow axis crosses the data-centre network. Either way the
      devices are laid out by `jax.experimental.mesh_utils` from their
      physical topology, not in `jax.devices()` order.
    devices: defaults to `jax.devices()`.

  Returns:
    A mesh whose axes are all `AxisType.Auto` (Explicit axes break hk.Embed).
  """
  devices = list(jax.devices() if devices is None else devices)
  dcn_shape = tuple(getattr(mesh_config, "dcn_shape", ()) or ())
  num_slices = int(np.prod(dcn_shape)) if dcn_shape else 1
  if dcn_shape and len(dcn_shape) != len(AXES):
    raise ValueError(f"config.mesh.dcn_shape={dcn_shape}: expected {len(AXES)} entries {AXES}")
  ici_shape = resolve_shape(tuple(mesh_config.shape), len(devices) // num_slices)
  if dcn_shape:
    # Multi-slice TPUs number their slices; elsewhere (GPU/CPU hosts, where
    # every device reports one slice) each process is a granule connected to
    # the others by the slower network.
    slices = {getattr(d, "slice_index", None) for d in devices}
    device_array = mesh_utils.create_hybrid_device_mesh(
        ici_shape, dcn_shape, devices, allow_split_physical_axes=True,
        process_is_granule=len(slices) != num_slices)
  else:
    # Topology-aware: on TPUs neighbouring mesh positions are neighbouring
    # chips on the interconnect (elsewhere this is the devices in order).
    device_array = mesh_utils.create_device_mesh(ici_shape, devices,
                                                 allow_split_physical_axes=True)
  return Mesh(device_array, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES))


def resolve_shape(shape: tuple[int, ...], num_devices: int) -> tuple[int, ...]:
  """Replaces a single -1 in `shape` so that the product is `num_devices`."""
  if len(shape) != len(AXES):
    raise ValueError(f"config.mesh.shape={shape}: expected {len(AXES)} entries {AXES}")
  if list(shape).count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh.shape={shape}: expected positive sizes and at most one -1")
  known = int(np.prod([s for s in shape if s != -1]))
  if num_devices % known:
    raise ValueError(f"config.mesh.shape={shape} does not divide the {num_devices} devices")
  resolved = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(resolved)) != num_devices:
    raise ValueError(f"config.mesh.shape={shape} uses {int(np.prod(resolved))} devices, "
                     f"but {num_devices} are available")
  return resolved


def path_str(path: Sequence[Any]) -> str:
  """'module/param' from a pytree key path, keeping only dict keys.

  Optimizer states nest the parameter tree under attribute and index keys
  (`[0].mu['encoder/layer_00/attn/query']['w']`); keeping only dict keys makes
  their leaves carry the same name as the parameter they follow.
  """
  return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def spec_for(name: str, shape: Sequence[int], mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> P:
  """The `PartitionSpec` of one parameter: first matching rule, made valid.

  A parameter of a scanned stack (`.../layers/layer/...`, model.scan_layers)
  has a leading [num_layers] dimension; the rule applies to the dimensions
  after it, and the layer dimension stays whole (the scan slices it).
  """
  if re.search(r"(^|/)layers/layer/", name) and len(shape) > 0:
    return P(None, *spec_for(name.replace("layers/layer/", ""), shape[1:], mesh, rules))
  for pattern, spec in rules:
    if re.search(pattern, name):
      break
  else:
    return P()
  if spec == "fsdp":
    return _largest_divisible(name, shape, mesh)
  spec = tuple(spec)
  if len(spec) > len(shape):
    raise ValueError(f"sharding rule {pattern!r} gives spec {spec} for parameter {name} of "
                     f"shape {tuple(shape)}: expected at most {len(shape)} entries")
  entries = []
  for dim, axes in zip(shape, spec):
    axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = int(np.prod([mesh.shape[a] for a in axes_tuple]))
    if size > 1 and dim % size:
      logging.warning("sharding: %s shape %s: dimension %d not divisible by mesh axis %s "
                      "(size %d); replicating that dimension", name, tuple(shape), dim,
                      axes, size)
      entries.append(None)
    else:
      entries.append(axes if size > 1 else None)
  return P(*entries)


def _largest_divisible(name: str, shape: Sequence[int], mesh: Mesh) -> P:
  """FSDP: shard the largest dimension the `fsdp` axis divides."""
  size = mesh.shape["fsdp"]
  if size == 1 or not shape:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % size == 0:
      return P(*(["fsdp" if d == dim else None for d in range(len(shape))]))
  logging.warning("sharding: %s shape %s: no dimension divisible by mesh axis fsdp (size %d); "
                  "replicating", name, tuple(shape), size)
  return P()


def param_rules(mesh_config: Any) -> tuple[tuple[str, Any], ...]:
  """`config.mesh.param_rules`, or PARAM_RULES when it is empty.

  Specs come back as tuples, also from a config.json (where they are lists).
  """
  rules = tuple(mesh_config.param_rules)
  if not rules:
    return PARAM_RULES
  return tuple((pattern, spec if isinstance(spec, str) else tuple(spec)) for pattern, spec in rules)


def param_shardings(params: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = PARAM_RULES) -> Any:
  """A pytree of `NamedSharding`s for a (possibly abstract) parameter tree."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, spec_for(path_str(path), x.shape, mesh, rules)), params)


def follow_params(tree: Any, params: Any, shardings: Any, mesh: Mesh) -> Any:
  """Shardings for `tree` (e.g. an optimizer state) that follow the parameters.

  A leaf whose dict-key path and shape equal a parameter's (Adam moments,
  momentum) gets that parameter's sharding; everything else (step counts,
  Adafactor's factored row/column statistics) is small and replicated. A path
  may start with dict keys of the optimizer's own (`optax.multi_transform`'s
  group labels, `lr_x1.0/encoder/...`): those are dropped until a parameter's
  name is left.
  """
  by_name = {}
  for (path, p), s in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree_util.tree_leaves(shardings)):
    by_name[path_str(path)] = (tuple(p.shape), s)

  def one(path, x):
    name = path_str(path)
    while name and name not in by_name:
      name = name.partition("/")[2]
    shape, sharding = by_name.get(name, (None, None))
    return sharding if shape == tuple(x.shape) else NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over `("data", "fsdp")`, the rest whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def batch_multiple(mesh: Mesh) -> int:
  """What a global batch's rows must be a multiple of: its batch shards and
  the processes that each load a share."""
  return math.lcm(batch_shards(mesh), jax.process_count())


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "config.train.batch_size") -> None:
  """Fails before compiling when the global batch cannot split evenly."""
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"{name}={batch_size!r}: expected a positive number of rows")
  shards = batch_shards(mesh)
  if batch_size % batch_multiple(mesh):
    raise ValueError(
        f"{name}={batch_size} is not divisible by the {shards} batch shards "
        f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}) and the "
        f"{jax.process_count()} processes")


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from this process's rows of the batch.

  Each process loads only its share; `make_array_from_process_local_data`
  assembles the global array without any host ever holding all of it.
  """
  sharding = batch_sharding(mesh)
  n = jax.process_count()
  return {k: jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * n,) + v.shape[1:])
          for k, v in local.items()}
