"""data/masking.py: BERT's 15% selection and 80/10/10 corruption, exact on resume and
identical across process counts; the mlm_imdb task's batches."""

import gzip
import json

import numpy as np
import pytest

from transformer_research import configs
from transformer_research import losses
from transformer_research.data import masking
from transformer_research.data import pipeline
from transformer_research.data import tasks

VOCAB, MASK, EOS = 50, 3, 1
SPECIAL = (0, EOS, MASK)


def _masker(rate=0.15):
  return masking.Masker(rate=rate, mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIAL)


def _inputs(rows=400, length=64, seed=0):
  """Token rows with ordinary ids only and some padding at the ends."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(4, VOCAB, (rows, length))
  lengths = rng.integers(length // 4, length + 1, (rows, 1))
  return np.where(np.arange(length) < lengths, tokens, 0).astype(np.int32)


def test_selection_and_corruption_follow_bert():
  inputs = _inputs()
  out = _masker()(inputs, np.random.default_rng(1), len(inputs), 0)
  p = masking.predictions(0.15, 64)
  assert p == 10 and out["mlm_positions"].shape == out["targets"].shape == (400, p)
  selected = out["targets"] > 0
  # round(15% of the real tokens) per row, never padding, targets the original ids.
  real = (inputs > 0).sum(1)
  np.testing.assert_array_equal(selected.sum(1), np.rint(0.15 * real))
  rows = np.broadcast_to(np.arange(400)[:, None], selected.shape)
  positions = out["mlm_positions"][selected]
  assert (inputs[rows[selected], positions] > 0).all()
  np.testing.assert_array_equal(out["targets"][selected], inputs[rows[selected], positions])
  assert len(set(zip(rows[selected], positions))) == selected.sum()  # Distinct positions.
  # Only selected positions change; 80% become the mask, 10% a random ordinary id.
  changed = out["inputs"] != inputs
  assert changed.sum() <= selected.sum() and not changed[inputs == 0].any()
  unselected = np.ones_like(changed)
  unselected[rows[selected], positions] = False
  assert not changed[unselected].any()
  now = out["inputs"][rows[selected], positions]
  was = out["targets"][selected]
  n = selected.sum()
  assert abs((now == MASK).mean() - 0.8) < 0.03, n
  replaced = (now != MASK) & (now != was)
  assert abs(replaced.mean() - 0.1 * (1 - 1 / (VOCAB - 3))) < 0.02
  assert not np.isin(now[replaced], SPECIAL).any()
  # The loss counts exactly the selected tokens.
  assert float(losses.weights_for(out, "mlm").sum()) == n


def test_bad_rate_is_an_error_naming_the_field():
  with pytest.raises(ValueError, match=r"config.data.mask_rate=0.0"):
    _masker(0.0)


def _data(n=120, seed=0):
  rng = np.random.default_rng(seed)
  records = [{"inputs": rng.integers(4, VOCAB, rng.integers(3, 20)).tolist()} for _ in range(n)]
  return pipeline.tokenize(records, lambda r: r, {"inputs": 32})


@pytest.mark.parametrize("count", [2, 4])
def test_processes_mask_the_global_batch_of_one_process(count):
  data = _data()

  def batches(index, processes):
    it = pipeline.BatchIterator(data, batch_size=8, max_lengths={"inputs": 32}, packing=True,
                                seed=3, process_index=index, process_count=processes)
    masked = masking.MaskedBatches(it, _masker(), seed=3, process_index=index,
                                   process_count=processes)
    return [next(masked) for _ in range(3)]

  alone = batches(0, 1)
  shards = [batches(i, count) for i in range(count)]
  for step, batch in enumerate(alone):
    for key in ("inputs", "targets", "mlm_positions", "inputs_segmentation"):
      np.testing.assert_array_equal(
          np.concatenate([shard[step][key] for shard in shards]), batch[key], err_msg=key)


def test_a_restored_state_masks_the_next_batches_identically():
  data = _data()
  make = lambda: masking.MaskedBatches(
      pipeline.BatchIterator(data, batch_size=8, max_lengths={"inputs": 32}, packing=True,
                             seed=0, process_index=0, process_count=1),
      _masker(), seed=0, process_index=0, process_count=1)
  first = make()
  next(first)
  state = first.get_state()
  want = [next(first) for _ in range(2)]
  second = make()
  second.set_state(state)
  for a, b in zip(want, [next(second) for _ in range(2)]):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # Different batches are masked differently.
  assert not np.array_equal(want[0]["mlm_positions"], want[1]["mlm_positions"])


def _write_jsonl(path, texts):
  with gzip.open(path, "wt") as f:
    f.writelines(json.dumps({"text": t}) + "\n" for t in texts)


def test_mlm_task_masks_packed_chunks_and_every_eval_the_same(tmp_path):
  words = "good bad movie film plot actor great awful story fun".split()
  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(words, 40)) for _ in range(60)]
  _write_jsonl(tmp_path / "unsup.jsonl.gz", texts)
  _write_jsonl(tmp_path / "test.jsonl.gz", texts[:8])
  config = configs.load_config("imdb_mlm:tiny,smoke", {
      "data.train_path": str(tmp_path / "unsup.jsonl.gz"),
      "data.eval_path": str(tmp_path / "test.jsonl.gz"), "data.vocab_size": 30,
      "data.max_input_len": 16})
  task = tasks.build(config, str(tmp_path), process_index=0, process_count=1)
  assert (task.kind, task.input_vocab_size, task.target_vocab_size) == ("mlm", 30, 30)
  assert tasks.vocab_sizes(config) == tasks.VocabSizes(30, 30, None)
  batch = next(task.train_iterator(4, process_index=0, process_count=1))
  assert set(batch) == {"inputs", "inputs_segmentation", "inputs_position", "mlm_positions",
                        "targets"}
  assert batch["inputs"].shape == (4, 16) and batch["targets"].shape == (4, 3)  # ceil(.15*16)
  assert (batch["inputs"] == task.input_tokenizer.bos_id).any()  # The mask id.
  assert not (batch["inputs"] == task.input_tokenizer.eos_id).any()  # Inputs carry no EOS.
  # Documents are cut into 16-token chunks: more examples than documents.
  assert task.train_iterator(4, 0, 1).get_state()["num_examples"] > 54
  evals = [list(task.eval_batches("test", 4, 0, 1)) for _ in range(2)]
  for a, b in zip(*evals):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])
