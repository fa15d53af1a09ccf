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


def _abstract(state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def _resume(ckpt, fresh, shardings):
  """`ckpt.resume` against `fresh`'s layout, falling back to `fresh` itself."""
  return ckpt.resume(_abstract(fresh, shardings), lambda: fresh)


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A workdir with a checkpoint at step 1, saved on mesh (8, 1, 1)."""
  workdir = str(tmp_path_factory.mktemp("saved"))
  state, _ = _state((8, 1, 1), stepped=True)
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  ckpt.save(state, {"epoch": 0, "position": 3}, {"start_step": 0, "loss_sum": 1.5})
  ckpt.wait()
  ckpt.close()
  return workdir, jax.device_get(state)


@pytest.mark.parametrize("shape,num_devices", [((2, 2, 2), 8), ((1, 1, 1), 1)])
def test_restore_onto_a_different_mesh(saved, shape, num_devices):
  workdir, expected = saved
  fresh, shardings = _state(shape, num_devices)
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  resumed = _resume(ckpt, fresh, shardings)
  ckpt.close()
  assert "step 1" in resumed.origin and resumed.data_state == {"epoch": 0, "position": 3}
  assert resumed.window == {"start_step": 0, "loss_sum": 1.5}
  state = resumed.state
  _assert_same(state, expected)
  w = state.params["decoder/layer_00/mlp/linear_0"]["w"]
  assert w.sharding == shardings.params["decoder/layer_00/mlp/linear_0"]["w"]
  assert len(w.sharding.device_set) == num_devices


def test_corrupt_latest_checkpoint_is_moved_aside(tmp_path, caplog):
  state, shardings = _state()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config())
  ckpt.save(state._replace(step=state.step * 0 + 1), {"n": 1}, None)
  ckpt.save(state._replace(step=state.step * 0 + 2), {"n": 2}, None)
  ckpt.wait()
  ckpt.close()
  for root, _, files in os.walk(tmp_path / "checkpoints" / "2" / "params"):
    for name in files:  # Truncate every data file of the latest checkpoint.
      open(os.path.join(root, name), "w").close()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config())
  with caplog.at_level(logging.WARNING):
    resumed = _resume(ckpt, state, shardings)
  assert "step 1" in resumed.origin and resumed.data_state == {"n": 1}
  assert "checkpoint step 2" in caplog.text and "corrupt-2" in caplog.text
  _assert_same(resumed.state.params, state.params)
  assert _steps(tmp_path) == [1] and (tmp_path / "checkpoints" / "corrupt-2").is_dir()
  ckpt.save(state._replace(step=state.step * 0 + 2), {"n": 2}, None)  # Step 2 can be saved again.
  ckpt.wait()
  ckpt.close()
  assert _steps(tmp_path) == [1, 2]


def test_incompatible_workdir_is_refused_naming_the_parameter(saved):
  workdir, _ = saved
  fresh, shardings = _state(d_ff=48)
  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  with pytest.raises(ValueError, match=r"decoder/layer_00/mlp/linear_0/b .*\(64,\).*\(48,\)"):
    _resume(ckpt, fresh, shardings)
  ckpt.close()


def test_init_from_loads_params_only(saved, tmp_path):
  workdir, expected = saved
  fresh, shardings = _state()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(init_from=workdir))
  resumed = _resume(ckpt, fresh._replace(step=fresh.step * 0), shardings)
  ckpt.close()
  state = resumed.state
  assert resumed.origin == f"params from {workdir}/checkpoints step 1" and resumed.data_state is None
  assert int(state.step) == 0
  _assert_same(state.params, expected.params)
  _assert_same(state.opt_state, jax.device_get(fresh.opt_state))  # Fresh optimizer.


def test_scratch_when_nothing_to_resume(tmp_path):
  fresh, shardings = _state()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config())
  resumed = _resume(ckpt, fresh, shardings)
  ckpt.close()
  assert resumed.origin == "from scratch" and resumed.data_state is None
  assert resumed.state is fresh


def test_keep_best_keeps_the_best_and_the_latest(tmp_path):
  state, _ = _state()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(
      max_to_keep=1, best_metric="bleu", best_mode="max"))
  for step, bleu in [(1, 10.0), (2, 30.0), (3, 20.0), (4, 5.0)]:
    ckpt.save(state._replace(step=state.step * 0 + step), {}, None, {"bleu": bleu, "loss": 1.0})
  ckpt.wait()
  ckpt.close()
  assert _steps(tmp_path) == [2, 4]


def test_the_best_checkpoint_survives_restarts(tmp_path):
  """Best-N reads each checkpoint's metric back from disk after a restart;
  checkpoints saved without an eval never compete."""
  state, _ = _state()
  config = _ckpt_config(max_to_keep=1, best_metric="bleu", best_mode="max")
  saves = [[(1, 10.0), (2, 30.0), (3, None)], [(4, 20.0), (5, None), (6, 5.0)], [(7, None)]]
  for run in saves:  # Three processes, one after another.
    ckpt = checkpointing.Checkpointer(str(tmp_path), config)
    for step, bleu in run:
      ckpt.save(state._replace(step=state.step * 0 + step), {}, None,
                None if bleu is None else {"bleu": bleu})
    ckpt.wait()
    ckpt.close()
  assert _steps(tmp_path) == [2, 7]
  assert (tmp_path / "checkpoints" / "2" / "metrics").is_dir()
  assert not (tmp_path / "checkpoints" / "7" / "metrics").exists()


def test_a_restore_never_initialises_the_state(saved):
  """With a checkpoint present only the abstract state is needed: a model
  that fills its device memory can still resume."""
  workdir, expected = saved
  fresh, shardings = _state()

  def init():
    raise AssertionError("initialised although a checkpoint was there")

  ckpt = checkpointing.Checkpointer(workdir, _ckpt_config())
  resumed = ckpt.resume(_abstract(fresh, shardings), init)
  ckpt.close()
  _assert_same(resumed.state, expected)


def test_a_best_metric_missing_from_the_eval_is_named(tmp_path):
  state, _ = _state()
  ckpt = checkpointing.Checkpointer(str(tmp_path), _ckpt_config(best_metric="bleu"))
  with pytest.raises(ValueError, match=r"best_metric='bleu': the eval at step 0 reports \['loss'\]"):
    ckpt.save(state, {}, None, {"loss": 1.0})
  ckpt.close()
