"""Tests of the synthetic task generators: determinism, correctness, disjoint splits."""

import re

import pytest

from transformer_research import configs
from transformer_research.data import synthetic


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_same_seed_same_examples_other_seed_other_examples(task):
  kwargs = dict(num_examples=50, min_len=1, max_len=10)
  first = synthetic.generate(task, "train", seed=3, **kwargs)
  assert first == synthetic.generate(task, "train", seed=3, **kwargs)
  assert first != synthetic.generate(task, "train", seed=4, **kwargs)
  assert len(first) == 50 and all(1 <= r["length"] <= 10 for r in first)


@pytest.mark.parametrize("task", synthetic.TASKS)
def test_train_and_eval_inputs_are_disjoint(task):
  key = "text" if task == "difference" else "inputs"
  train = {r[key] for r in synthetic.generate(task, "train", num_examples=3000, min_len=1,
                                              max_len=3, seed=0)}
  for split in ("validation", "test"):
    held_out = {r[key] for r in synthetic.generate(task, split, num_examples=30, min_len=1,
                                                   max_len=4, seed=0)}
    assert held_out and not train & held_out
    assert all(synthetic.split_of(k) == split for k in held_out)


def test_eval_split_covers_every_length():
  records = synthetic.generate("addition", "test", num_examples=5, min_len=11, max_len=20, seed=0)
  assert sorted({r["length"] for r in records}) == list(range(11, 21))
  assert len(records) == 50


def test_answers_are_right():
  for r in synthetic.generate("addition", "train", num_examples=200, min_len=1, max_len=12,
                              seed=0):
    a, b = (int(x[::-1]) for x in r["inputs"].split("+"))
    assert int(r["targets"][::-1]) == a + b
    assert r["length"] == max(len(x) for x in r["inputs"].split("+"))
  for r in synthetic.generate("difference", "train", num_examples=200, min_len=1, max_len=12,
                              seed=0):
    a, b = map(int, r["text"].split("-"))
    assert r["label"] == int(a > b)
  for task, fn in (("reverse", lambda s: s[::-1]), ("sort", lambda s: "".join(sorted(s)))):
    for r in synthetic.generate(task, "test", num_examples=3, min_len=1, max_len=8, seed=0,
                                num_symbols=16):
      assert r["targets"] == fn(r["inputs"]) and len(r["inputs"]) == r["length"]


def test_bad_arguments_name_the_value():
  with pytest.raises(ValueError, match="task='copy'"):
    synthetic.generate("copy", "train", num_examples=1, min_len=1, max_len=2, seed=0)
  with pytest.raises(ValueError, match="split='dev'"):
    synthetic.generate("sort", "dev", num_examples=1, min_len=1, max_len=2, seed=0)
  with pytest.raises(ValueError, match="min_len=3, max_len=2"):
    synthetic.generate("sort", "train", num_examples=1, min_len=3, max_len=2, seed=0)


@pytest.mark.parametrize("field, value, message", [
    ("num_train_examples", 0, "config.data.num_train_examples=0: expected a positive number"),
    ("num_eval_per_length", 0, "config.data.num_eval_per_length=0: expected a positive number"),
    ("min_len", 0, "config.data.min_len=0, config.data.train_max_len=10: expected 1 <= min_len"),
    ("eval_max_len", 0, "config.data.eval_min_len=1, config.data.eval_max_len=0: expected"),
    ("num_symbols", 1, "config.data.num_symbols=1: expected 2..36")])
def test_bad_task_fields_are_named_as_config_fields(field, value, message):
  data = configs.load_config("reverse").data
  data[field] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    synthetic.check_config(data)
