"""experiment.py: every shipped config assembles its model and state from the
config alone, each part once."""

import jax
import pytest

from transformer_research import configs
from transformer_research import experiment
from transformer_research.data import sources
from transformer_research.data import tasks
from transformer_research.data import text_files


@pytest.fixture
def no_data(monkeypatch, tmp_path):
  """Any attempt to open a dataset or train a tokenizer fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"data was opened: {args} {kwargs}")

  for name in ("spa_eng", "wmt13_es_en", "imdb"):
    monkeypatch.setattr(sources, name, refuse)
  for name in ("text_files", "sentence_pairs"):
    monkeypatch.setattr(text_files, name, refuse)
  monkeypatch.setattr(tasks, "build", refuse)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  yield
  assert not (tmp_path / "tfds").exists() and not (tmp_path / "home").exists()


@pytest.mark.parametrize("name", configs.NAMES)
@pytest.mark.parametrize("arg", ["", "tiny"])
def test_every_config_builds_its_model_and_state_without_data(no_data, name, arg):
  exp = experiment.Experiment(configs.load_config(f"{name}:{arg}" if arg else name))
  state = exp.abstract_state
  params = jax.tree.leaves(state.params)
  assert params and all(isinstance(p, jax.ShapeDtypeStruct) for p in params)
  assert all(p.sharding.mesh.shape == exp.mesh.shape for p in params)
  assert jax.tree.structure(state.opt_state) == jax.tree.structure(
      jax.tree.map(lambda x: x.sharding, state.opt_state))
  assert exp.model.sizes.d_model > 0 and exp.model.kind == exp.kind == exp.spec.kind


def test_each_part_is_built_once():
  exp = experiment.Experiment(configs.load_config("reverse:tiny,smoke"))
  assert exp.model is exp.model and exp.mesh is exp.mesh and exp.task is exp.task
  assert exp.abstract_state is exp.abstract_state
  settings = dict(eos_id=1, max_len=4, beam_size=2)
  assert exp.generate_fn(**settings) is exp.generate_fn(**dict(reversed(settings.items())))
  assert exp.generate_fn(**settings) is not exp.generate_fn(eos_id=1, max_len=4)


def test_init_state_has_the_abstract_layout():
  exp = experiment.Experiment(configs.load_config("reverse:tiny,smoke"))
  state = exp.init_state()
  for real, abstract in zip(jax.tree.leaves(state), jax.tree.leaves(exp.abstract_state)):
    assert (real.shape, real.dtype, real.sharding) == (abstract.shape, abstract.dtype,
                                                       abstract.sharding)


def test_a_trained_tokenizer_needs_a_workdir():
  exp = experiment.Experiment(configs.load_config("wmt_spa:tiny,smoke"))
  with pytest.raises(ValueError, match="run directory: expected a workdir"):
    exp.task


def test_tokenizers_of_other_sizes_are_refused():
  exp = experiment.Experiment(configs.load_config("reverse:tiny,smoke"))
  wrong = tasks.VocabSizes(input=99, target=exp.vocab.target, num_classes=None)
  with pytest.raises(ValueError, match=r"tokenizers give VocabSizes\(input=13.*input=99"):
    tasks.check_vocab_sizes(exp.task, wrong)
