"""Mesh construction and parameter rules (sharding.py)."""

import logging
import re

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import tiny_setup
from transformer_research import optim
from transformer_research import sharding
from transformer_research import training


def _mesh(shape, devices=None):
  return sharding.make_mesh(ml_collections.ConfigDict({"shape": shape, "dcn_shape": ()}), devices)


@pytest.mark.parametrize("shape,expected", [((-1, 1, 1), (8, 1, 1)), ((2, -1, 2), (2, 2, 2)),
                                            ((1, 1, -1), (1, 1, 8))])
def test_mesh_resolves_minus_one(shape, expected):
  mesh = _mesh(shape)
  assert mesh.axis_names == sharding.AXES
  assert tuple(mesh.shape.values()) == expected
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("shape", [(3, -1, 1), (-1, -1, 1), (2, 2, 1), (8, 1)])
def test_bad_mesh_shape_is_an_error_naming_it(shape):
  with pytest.raises(ValueError, match=re.escape(f"config.mesh.shape={shape}")):
    _mesh(shape)


def test_hybrid_mesh_needs_one_dcn_entry_per_axis():
  # The hybrid layout itself needs several processes: see multihost_test.py.
  config = ml_collections.ConfigDict({"shape": (2, 2, 1), "dcn_shape": (2, 1)})
  with pytest.raises(ValueError, match=re.escape("config.mesh.dcn_shape=(2, 1)")):
    sharding.make_mesh(config)


def _abstract_params(kind="seq2seq", **model):
  c = tiny_setup.config()
  for k, v in model.items():
    setattr(c.model, k, v)
  m = tiny_setup.model(c) if kind == "seq2seq" else tiny_setup.models.build(
      c.model, kind, target_vocab_size=tiny_setup.VOCAB)
  batch = tiny_setup.batches(1, 2)[0]
  if kind == "lm":
    batch = {"targets": batch["targets"]}
  return jax.eval_shape(m.init, jax.random.PRNGKey(0), batch)


def test_every_rule_matches_and_every_param_resolves():
  names = set()
  for params in (_abstract_params(), _abstract_params(fused_qkv=True, tie_output=False),
                 _abstract_params("lm")):
    names |= {sharding.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  for pattern, _ in sharding.PARAM_RULES:
    assert any(re.search(pattern, n) for n in names), f"rule {pattern!r} matches no parameter"
  mesh = _mesh((2, 2, 2))
  shardings = sharding.param_shardings(_abstract_params(), mesh)
  assert all(isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(shardings))


def test_megatron_and_fsdp_specs():
  mesh = _mesh((2, 2, 2))
  rules = sharding.PARAM_RULES
  assert sharding.spec_for("encoder/layer_00/attn/query/w", (32, 32), mesh, rules) == P("fsdp", "tensor")
  assert sharding.spec_for("decoder/layer_01/cross_attn/linear/w", (32, 32), mesh, rules) == P("tensor", "fsdp")
  assert sharding.spec_for("decoder/layer_00/mlp/linear_0/w", (32, 64), mesh, rules) == P("fsdp", "tensor")
  assert sharding.spec_for("decoder/layer_00/mlp/linear_1/w", (64, 32), mesh, rules) == P("tensor", "fsdp")
  assert sharding.spec_for("target_embed/embeddings", (24, 32), mesh, rules) == P("tensor", "fsdp")
  # Not a token table: plain FSDP over the largest dimension.
  assert sharding.spec_for("decoder/pos_embed/embeddings", (16, 64), mesh, rules) == P(None, "fsdp")


def test_non_divisible_dimension_replicates_with_warning(caplog):
  mesh = _mesh((1, 2, 4))
  with caplog.at_level(logging.WARNING):
    spec = sharding.spec_for("decoder/layer_00/mlp/linear_0/w", (32, 6), mesh, sharding.PARAM_RULES)
  assert spec == P("fsdp", None)
  message = caplog.text
  assert "decoder/layer_00/mlp/linear_0/w" in message and "(32, 6)" in message and "tensor" in message


def test_rule_longer_than_rank_is_an_error():
  with pytest.raises(ValueError, match="attn/query/b"):
    sharding.spec_for("attn/query/b", (32,), _mesh((1, 1, 8)), ((r"query/b$", ("fsdp", "tensor")),))


def test_params_and_optimizer_state_are_really_sharded():
  c = tiny_setup.config()
  mesh = _mesh((2, 2, 2))
  optimizer, _ = optim.make_optimizer(c.train)
  batch = {k: v[:1] for k, v in tiny_setup.batches(1)[0].items()}
  state, _ = training.init_train_state(tiny_setup.model(c), optimizer, batch, mesh,
                                       sharding.PARAM_RULES, 0)
  w = state.params["decoder/layer_00/mlp/linear_0"]["w"]  # [32, 64] over (fsdp, tensor)
  assert w.shape == (32, 64)
  assert w.addressable_shards[0].data.shape == (16, 32)
  mu = state.opt_state[1][0].mu["decoder/layer_00/mlp/linear_0"]["w"]  # clip, then adamw
  assert mu.sharding == w.sharding


def test_batch_not_divisible_names_both_numbers():
  with pytest.raises(ValueError, match=r"batch_size=12 .* 8 batch shards"):
    sharding.check_batch_size(12, _mesh((4, 2, 1)))
  sharding.check_batch_size(12, _mesh((2, 2, 2)))


def test_global_batch_is_split_over_batch_axes():
  mesh = _mesh((2, 2, 2))
  batch = sharding.global_batch({"targets": np.arange(32, dtype=np.int32).reshape(8, 4)}, mesh)
  assert batch["targets"].shape == (8, 4)
  assert batch["targets"].addressable_shards[0].data.shape == (2, 4)


def test_optimizer_state_of_parameter_groups_follows_the_parameters():
  """multi_transform nests moments under its group labels (`lr_x1.0/...`)."""
  c = tiny_setup.config(frozen=("^encoder/",), lr_multipliers=(("^decoder/", 0.5),))
  c.mesh.shape = (1, 8, 1)
  mesh = sharding.make_mesh(c.mesh, jax.devices())
  optimizer, _ = optim.make_optimizer(c.train)
  state, shardings = training.init_train_state(
      tiny_setup.model(c), optimizer, {k: v[:1] for k, v in tiny_setup.batches(1)[0].items()},
      mesh, sharding.PARAM_RULES, 0)
  by_param = {sharding.path_str(p): s.spec for p, s in
              jax.tree_util.tree_leaves_with_path(shardings.params)}
  followed = 0
  for path, s in jax.tree_util.tree_leaves_with_path(shardings.opt_state):
    name = sharding.path_str(path).split("/", 1)[-1]
    if name in by_param and by_param[name] != jax.sharding.PartitionSpec():
      assert s.spec == by_param[name], name
      followed += 1
  assert followed > 0
def _collectives(fused_qkv: bool) -> dict[str, int]:
  """Collective ops in the compiled train step on a (data 4, tensor 2) mesh."""
  c = tiny_setup.config()
  c.model.fused_qkv = fused_qkv
  c.mesh.shape = (4, 1, 2)
  hlo = tiny_setup.train_step_hlo(c)
  kinds = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
  return {k: len(re.findall(rf"= \S+ {k}(-start)?\(", hlo)) for k in kinds}


def test_head_major_fused_qkv_needs_no_extra_collective():
  """Splitting the fused [D, 3D] projection over `tensor` gives each device
  whole heads, so the compiled step has no more collectives than with three
  separate projections."""
  fused, separate = _collectives(True), _collectives(False)
  assert sum(separate.values()) > 0  # The count sees the Megatron all-reduces.
  for kind in fused:
    assert fused[kind] <= separate[kind], (fused, separate)


def test_scanned_parameters_keep_the_layer_dimension_whole():
  c = tiny_setup.config()
  c.model.scan_layers = True
  c.mesh.shape = (1, 4, 2)
  params = jax.eval_shape(lambda: tiny_setup.model(c).init(
      jax.random.key(0), {k: v[:1] for k, v in tiny_setup.batches(1)[0].items()}))
  mesh = sharding.make_mesh(c.mesh)
  specs = {sharding.path_str(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(
      sharding.param_shardings(params, mesh))}
  assert specs["encoder/layers/layer/attn/query/w"] == P(None, "fsdp", "tensor")
  assert specs["decoder/layers/layer/mlp/linear_1/w"] == P(None, "tensor", "fsdp")
