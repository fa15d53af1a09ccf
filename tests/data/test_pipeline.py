"""Tests of the input pipeline on small in-memory data (no files, no tokenizers)."""

import json
import logging

import numpy as np
import pytest

from transformer_research.data import pipeline

MAX = {"inputs": 12, "targets": 10}


def _records(n: int, seed: int = 0) -> list[dict]:
  """Token ids that encode (example, position), so any misplaced token is visible."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    ni, nt = rng.integers(1, MAX["inputs"] + 1), rng.integers(1, MAX["targets"] + 1)
    out.append({"inputs": [1000 * (i + 1) + k for k in range(ni)],
                "targets": [1000 * (i + 1) + 500 + k for k in range(nt)], "label": i})
  return out


def _data(n: int = 40) -> pipeline.TokenizedData:
  return pipeline.tokenize(_records(n), lambda r: r, MAX)


def _segments(batch: dict, field: str) -> list[np.ndarray]:
  """Splits packed rows into their segments, checking ids and positions on the way."""
  out = []
  for tokens, seg, pos in zip(batch[field], batch[field + "_segmentation"],
                              batch[field + "_position"]):
    used = seg > 0
    assert used[:used.sum()].all()  # Padding only at the end.
    assert (tokens[~used] == 0).all() and (pos[~used] == 0).all()
    ids = seg[used]
    assert ids[0] == 1 and set(np.diff(ids)) <= {0, 1}  # 1, 1, 2, 2, 2, 3...
    for s in np.unique(ids):
      np.testing.assert_array_equal(pos[seg == s], np.arange((seg == s).sum()))
      out.append(tokens[seg == s])
  return out


def test_packing_keeps_every_token_once_with_segments_and_positions():
  data = _data(40)
  it = pipeline.BatchIterator(data, batch_size=4, max_lengths=MAX, packing=True, seed=3,
                              process_index=0, process_count=1)
  seen = []
  while it.get_state()["epoch"] == 0:
    batch = next(it)
    assert batch["inputs"].shape == (4, 12) and batch["targets"].shape == (4, 10)
    inputs, targets = _segments(batch, "inputs"), _segments(batch, "targets")
    assert len(inputs) == len(targets)
    for x, y in zip(inputs, targets):
      i = x[0] // 1000 - 1
      assert y[0] // 1000 - 1 == i  # Same example on both sides of a segment.
      np.testing.assert_array_equal(x, data.get("inputs", i))
      np.testing.assert_array_equal(y, data.get("targets", i))
      seen.append(i)
  # Epoch 0 in full plus the start of epoch 1 that filled the last batch.
  epoch1 = np.random.default_rng([3, 1]).permutation(40)[:it.get_state()["position"]]
  expected = 1 + np.bincount(epoch1, minlength=40)
  np.testing.assert_array_equal(np.bincount(seen, minlength=40), expected)


def test_packing_fills_rows():
  """Short examples fill rows almost completely (first fit over open rows)."""
  records = [{"targets": [1] * n} for n in np.random.default_rng(0).integers(1, 16, 2000)]
  data = pipeline.tokenize(records, lambda r: r, {"targets": 64})
  it = pipeline.BatchIterator(data, batch_size=32, max_lengths={"targets": 64}, packing=True,
                              process_index=0, process_count=1)
  fill = [(next(it)["targets_segmentation"] > 0).mean() for _ in range(10)]
  assert np.mean(fill) > 0.95


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("count", [2, 4])
def test_process_shards_concatenate_to_the_single_process_batch(packing, count):
  data = _data(30)
  kwargs = dict(batch_size=8, max_lengths=MAX, packing=packing, seed=1)
  whole = pipeline.BatchIterator(data, process_index=0, process_count=1, **kwargs)
  shards = [pipeline.BatchIterator(data, process_index=i, process_count=count, **kwargs)
            for i in range(count)]
  for _ in range(5):
    want, parts = next(whole), [next(s) for s in shards]
    assert all(p["inputs"].shape[0] == 8 // count for p in parts)
    for key in want:
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), want[key])
  assert len({json.dumps(s.get_state()) for s in shards + [whole]}) == 1


def test_padded_epoch_covers_each_example_once_across_processes():
  data = _data(24)
  seen = []
  for i in range(3):
    it = pipeline.BatchIterator(data, batch_size=6, max_lengths=MAX, packing=False,
                                process_index=i, process_count=3)
    for _ in range(24 // 6):
      seen.extend(next(it)["label"])
  assert sorted(seen) == list(range(24))


def test_eval_batches_cover_each_example_once_across_processes():
  data = _data(23)
  seen, shapes = [], set()
  for i in range(2):
    batches = list(pipeline.eval_batches(data, batch_size=4, max_lengths=MAX,
                                         process_index=i, process_count=2))
    assert len(batches) == 6  # ceil(23 / 4) on every process.
    for b in batches:
      shapes.add((b["inputs"].shape, b["targets"].shape))
      seen.extend(b["label"][b["example_mask"] == 1])
      assert (b["targets"][b["example_mask"] == 0] == 0).all()
  assert shapes == {((2, 12), (2, 10))}
  assert sorted(seen) == list(range(23))


@pytest.mark.parametrize("packing", [True, False])
def test_restored_state_gives_identical_next_batches(packing):
  data = _data(30)
  kwargs = dict(batch_size=4, max_lengths=MAX, packing=packing, seed=7,
                process_index=0, process_count=1)
  it = pipeline.BatchIterator(data, **kwargs)
  for _ in range(9):  # Crosses an epoch boundary when padded.
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  want = [next(it) for _ in range(6)]
  resumed = pipeline.BatchIterator(data, **kwargs)
  resumed.set_state(state)
  for w in want:
    got = next(resumed)
    assert got.keys() == w.keys()
    for key in w:
      np.testing.assert_array_equal(got[key], w[key])


def test_state_for_other_data_is_refused():
  """Other data of another size, or of the same size (by the examples' digest);
  the same examples built again fit, and a state saved before the digest was
  recorded is still read."""
  iterator = lambda data: pipeline.BatchIterator(data, batch_size=4, max_lengths=MAX,
                                                 packing=True, process_index=0, process_count=1)
  state = iterator(_data(30)).get_state()
  with pytest.raises(ValueError, match="num_examples=30, expected 31"):
    iterator(_data(31)).set_state(state)
  same_size = pipeline.tokenize(_records(30, seed=1), lambda r: r, MAX)
  with pytest.raises(ValueError, match=f"data_sha256='{state['data_sha256']}', expected"):
    iterator(same_size).set_state(state)
  iterator(_data(30)).set_state(state)
  older = {k: v for k, v in state.items() if k != "data_sha256"}
  iterator(same_size).set_state(older)


def test_padded_batches_use_bucket_lengths():
  it = pipeline.BatchIterator(_data(50), batch_size=2, max_lengths=MAX, packing=False,
                              num_buckets=2, process_index=0, process_count=1)
  for _ in range(20):
    batch = next(it)
    assert batch["inputs"].shape[1] in (6, 12) and batch["targets"].shape[1] in (5, 10)
    assert "inputs_segmentation" not in batch


class _Source:
  """A source whose record 2 cannot be decoded, as a corrupt file line would."""

  def __init__(self, records):
    self._records = records

  def __len__(self):
    return len(self._records)

  def __getitem__(self, i):
    if i == 2:
      raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    return self._records[i]


def test_bad_records_are_skipped_and_counted_in_one_line(caplog):
  good = {"inputs": [5, 6], "targets": [7]}
  records = [good, {"inputs": [], "targets": [7]}, good, {"inputs": [1] * 13, "targets": [7]},
             {"inputs": [5]}, good]
  with caplog.at_level(logging.INFO):
    data = pipeline.tokenize(_Source(records), lambda r: {k: r[k] for k in MAX}, MAX, "toy")
  assert len(data) == 2
  assert data.skipped == {"malformed": 2, "empty": 1, "too_long": 1}
  lines = [r.getMessage() for r in caplog.records if "toy" in r.getMessage()]
  assert lines == ["toy: kept 2 examples from 6 records; skipped 4 "
                   "(malformed=2, empty=1, too_long=1)"]


@pytest.mark.parametrize("labels, level, said", [
    ([1, 0, 1, 1], logging.INFO, "; examples per label 0: 1, 1: 3"),
    ([2, 2, 2], logging.WARNING, "; examples per label 2: 3 (every example has the same label: "
     "is the data sorted by label and cut?)")])
def test_a_classifiers_labels_are_counted_and_one_label_is_a_warning(caplog, labels, level,
                                                                     said):
  """A file sorted by label and cut short (max_train_examples, `head`) holds one class."""
  records = [{"inputs": [5, 6], "label": label} for label in labels]
  with caplog.at_level(logging.INFO):
    pipeline.tokenize(records, lambda r: r, {"inputs": 4}, "reviews")
  (record,) = [r for r in caplog.records if r.getMessage().startswith("reviews:")]
  assert record.levelno == level and record.getMessage() == (
      f"reviews: kept {len(labels)} examples from {len(labels)} records; skipped 0 "
      f"(malformed=0, empty=0, too_long=0){said}")


def test_lm_packing_targets_only():
  records = [{"targets": list(range(1, n + 1))} for n in (3, 5, 2, 7, 1)]
  data = pipeline.tokenize(records, lambda r: r, {"targets": 8})
  batch = next(pipeline.BatchIterator(data, batch_size=2, max_lengths={"targets": 8},
                                      packing=True, process_index=0, process_count=1))
  assert set(batch) == {"targets", "targets_segmentation", "targets_position"}
  assert all(s.size for s in _segments(batch, "targets"))


def test_bad_arguments_name_the_value():
  with pytest.raises(ValueError, match="batch_size=5"):
    pipeline.BatchIterator(_data(5), batch_size=5, max_lengths=MAX, packing=True,
                           process_index=0, process_count=2)
  with pytest.raises(ValueError, match="process_index=2"):
    pipeline.BatchIterator(_data(5), batch_size=4, max_lengths=MAX, packing=True,
                           process_index=2, process_count=2)
  empty = pipeline.tokenize([], lambda r: r, MAX)
  with pytest.raises(ValueError, match="no examples"):
    pipeline.BatchIterator(empty, batch_size=4, max_lengths=MAX, packing=True,
                           process_index=0, process_count=1)


def _iterator(seed: int = 3) -> pipeline.BatchIterator:
  return pipeline.BatchIterator(_data(40), batch_size=4, max_lengths=MAX, packing=True,
                                seed=seed, process_index=0, process_count=1)


def _same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_prefetch_keeps_the_order_and_its_state_is_the_consumed_position():
  """The background thread reads ahead, yet batches come in the wrapped
  iterator's order and the state resumes right after the last one handed out."""
  expected = list(_take(_iterator(), 30))  # Several epochs of the 40 examples.
  fetched = pipeline.Prefetch(_iterator(), depth=3)
  first = list(_take(fetched, 12))
  state = json.loads(json.dumps(fetched.get_state()))  # As a checkpoint stores it.
  rest = list(_take(fetched, 18))
  fetched.close()
  _same(first + rest, expected)
  resumed = pipeline.Prefetch(_iterator(), depth=2)
  resumed.set_state(state)
  _same(list(_take(resumed, 18)), expected[12:])
  resumed.close()
  # close() then next(): continues after the last handed-out batch, not after the read-ahead.
  again = pipeline.Prefetch(_iterator(), depth=4)
  _same(list(_take(again, 5)), expected[:5])
  again.close()
  _same(list(_take(again, 5)), expected[5:10])
  again.close()


def _take(iterator, n: int):
  for _ in range(n):
    yield next(iterator)


def test_prefetch_transforms_in_the_thread_and_raises_its_errors():
  class Failing:
    def __init__(self):
      self.n = 0
    def __next__(self):
      self.n += 1
      if self.n == 3:
        raise ValueError("bad record 3")
      return self.n
    def get_state(self):
      return {"n": self.n}
    def set_state(self, state):
      self.n = state["n"]

  fetched = pipeline.Prefetch(Failing(), depth=2, transform=lambda x: x * 10)
  assert [next(fetched), next(fetched)] == [10, 20]
  assert fetched.get_state() == {"n": 2}
  with pytest.raises(ValueError, match="bad record 3"):
    next(fetched)


@pytest.mark.parametrize("depth", [0, -1, 1.5])
def test_prefetch_depth_below_one_is_refused(depth):
  with pytest.raises(ValueError, match=r"config.data.prefetch=.*expected an int >= 1"):
    pipeline.Prefetch(_iterator(), depth=depth)
