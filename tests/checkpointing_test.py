"""Orbax checkpoints (checkpointing.py): resharding, resume order, guardrails."""

import functools
import logging
import os

import jax
import numpy as np
import pytest

import tiny_setup
from transformer_research import checkpointing
from transformer_research import optim
from transformer_research import sharding
from transformer_research import training


@functools.lru_cache(maxsize=None)
def _state(shape=(8, 1, 1), num_devices=8, d_ff=-1, stepped=False):
  """A fresh state on `shape` and its shardings; `stepped`: after one train
  step (non-zero optimizer slots). Cached because compiling dominates here."""
  c = tiny_setup.config()
  c.mesh.shape = shape
  c.model.d_ff = d_ff
  mesh = sharding.make_mesh(c.mesh, jax.devices()[:num_devices])
  m = tiny_setup.model(c)
  optimizer, schedule = optim.make_optimizer(c.train)
  batch = tiny_setup.batches(1)[0]
  state, shardings = training.init_train_state(
      m, optimizer, {k: v[:1] for k, v in batch.items()}, mesh, sharding.PARAM_RULES, 0)
  if stepped:
    step = jax.jit(training.make_train_step(c, m, optimizer, schedule, "seq2seq"),
                   out_shardings=(shardings, None))
    state = step(state, sharding.global_batch(batch, mesh))[0]
  return state, shardings


def _ckpt_config(**kw):
  c = tiny_setup.config().checkpoint
  c.async_save = False
  for k, v in kw.items():
    setattr(c, k, v)
  return c


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A workdir with a checkpoint at step 1, saved on mesh (8, 1, 1)."""
  workdir = str(tmp_path_factory.mktemp("saved"))
  state, _ = _state((8, 1, 1), stepped=True)
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  ckpt.save(state, {"epoch": 0, "position": 3})
  ckpt.wait()
  ckpt.close()
  return workdir, jax.device_get(state)


@pytest.mark.parametrize("shape,num_devices", [((2, 2, 2), 8), ((1, 1, 1), 1)])
def test_restore_onto_a_different_mesh(saved, shape, num_devices):
  workdir, expected = saved
  fresh, shardings = _state(shape, num_devices)
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  state, data_state, origin = ckpt.resume(fresh, shardings)
  ckpt.close()
  assert "step 1" in origin and data_state == {"epoch": 0, "position": 3}
  _assert_same(state, expected)
  w = state.params["decoder/layer_00/mlp/linear_0"]["w"]
  assert w.sharding == shardings.params["decoder/layer_00/mlp/linear_0"]["w"]
  assert len(w.sharding.device_set) == num_devices


def test_corrupt_latest_checkpoint_is_skipped(tmp_path, caplog):
  state, shardings = _state()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config())
  ckpt.save(state._replace(step=state.step * 0 + 1), {"n": 1})
  ckpt.save(state._replace(step=state.step * 0 + 2), {"n": 2})
  ckpt.wait()
  ckpt.close()
  for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "params"):
    for name in files:  # Truncate every data file of the latest checkpoint.
      open(os.path.join(root, name), "w").close()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config())
  with caplog.at_level(logging.WARNING):
    restored, data_state, origin = ckpt.resume(state, shardings)
  ckpt.close()
  assert "step 1" in origin and data_state == {"n": 1}
  assert "checkpoint step 2" in caplog.text
  _assert_same(restored.params, state.params)


def test_incompatible_workdir_is_refused_naming_the_parameter(saved):
  workdir, _ = saved
  fresh, shardings = _state(d_ff=48)
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  with pytest.raises(ValueError, match=r"decoder/layer_00/mlp/linear_0/b .*\(64,\).*\(48,\)"):
    ckpt.resume(fresh, shardings)
  ckpt.close()


def test_init_from_loads_params_only(saved, tmp_path):
  workdir, expected = saved
  fresh, shardings = _state()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(init_from=workdir))
  state, data_state, origin = ckpt.resume(fresh._replace(step=fresh.step * 0), shardings)
  ckpt.close()
  assert origin == f"params from {workdir}" and data_state is None
  assert int(state.step) == 0
  _assert_same(state.params, expected.params)
  _assert_same(state.opt_state, jax.device_get(fresh.opt_state))  # Fresh optimizer.


def test_scratch_when_nothing_to_resume(tmp_path):
  fresh, shardings = _state()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config())
  state, data_state, origin = ckpt.resume(fresh, shardings)
  ckpt.close()
  assert origin == "from scratch" and data_state is None and state is fresh


def test_keep_best_keeps_the_best_and_the_latest(tmp_path):
  state, _ = _state()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(
      max_to_keep=1, best_metric="bleu", best_mode="max"))
  for step, bleu in [(1, 10.0), (2, 30.0), (3, 20.0), (4, 5.0)]:
    ckpt.save(state._replace(step=state.step * 0 + step), {}, {"bleu": bleu, "loss": 1.0})
  ckpt.wait()
  ckpt.close()
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [2, 4]
