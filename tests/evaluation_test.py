"""Metric functions against sacreBLEU itself, and the eval entry point the
training loop calls, on the tiny synthetic `reverse` / `difference` tasks."""


import jax
import numpy as np
import pytest
import sacrebleu

from transformer_research import configs
from transformer_research import evaluation
from transformer_research import experiment

HYPS = ["the cat sat on the mat", "where is the station ?", "hello"]
REFS = [["the cat sat on a mat", "a cat sat on the mat"],
        ["where is the train station ?"],
        ["hello", "hi", "hey there"]]


def test_bleu_and_chrf_equal_sacrebleu_with_uneven_references():
  got = evaluation.bleu_and_chrf(HYPS, REFS)
  streams = [[r[0] for r in REFS], ["a cat sat on the mat", None, "hi"],
             [None, None, "hey there"]]
  assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, streams).score)
  assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, streams).score)
  one_ref = evaluation.bleu_and_chrf(HYPS[:1], [REFS[0][:1]])["bleu"]
  assert one_ref == pytest.approx(sacrebleu.corpus_bleu(HYPS[:1], [[REFS[0][0]]]).score)
  assert got["bleu"] > one_ref  # The second reference matches exactly.


def test_perfect_output_scores_100():
  got = evaluation.bleu_and_chrf(["a b c d e", "f g h i"], [["a b c d e"], ["f g h i"]])
  assert got == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}


def test_exact_match_and_per_length_table():
  correct = evaluation.exact_match(HYPS, REFS)
  np.testing.assert_array_equal(correct, [False, False, True])
  table = evaluation.by_length([True, False, True, True], [3, 3, 12, 5], "sequence_accuracy")
  assert table == {"sequence_accuracy_len_03": 0.5, "sequence_accuracy_len_05": 1.0,
                   "sequence_accuracy_len_12": 1.0}
  # Split at the longest training length: the in-distribution score and the
  # generalisation score, over examples (not an average of the lengths' rows).
  split = evaluation.by_length([True, False, True, True, False], [3, 3, 12, 5, 11], "acc",
                               trained_max_len=10)
  assert split["acc_trained_lengths"] == pytest.approx(2 / 3)
  assert split["acc_longer_lengths"] == 0.5
  only_short = evaluation.by_length([True], [3], "acc", trained_max_len=10)
  assert "acc_longer_lengths" not in only_short and only_short["acc_trained_lengths"] == 1.0


def test_bleu_by_source_length_buckets_sentences_by_their_words():
  examples = [{"source": " ".join("w" * n), "references": ["a b c d"]} for n in (2, 3, 7, 30)]
  rows = evaluation.bleu_by_source_length(examples, ["a b c d", "x y z", "a b c d", "a b c d"])
  assert [(name, n) for name, n, _, _ in rows] == [("1-5", 2), ("6-10", 1), ("21+", 1)]
  assert rows[1][2] == pytest.approx(100.0) and rows[0][2] < 100.0


def test_bad_metric_inputs_raise():
  with pytest.raises(ValueError, match="2 hypotheses for 1 reference lists"):
    evaluation.bleu_and_chrf(["a", "b"], [["a"]])
  with pytest.raises(ValueError, match=r"references\[0\]=\[\]"):
    evaluation.exact_match(["a"], [[]])
  with pytest.raises(ValueError, match=r"references\[0\]='a'"):
    evaluation.bleu_and_chrf(["a"], ["a"])


def test_decode_subset_keeps_every_length_for_per_length_tables():
  examples = [{"length": n, "i": i} for n in range(1, 11) for i in range(5)]
  subset = evaluation.decode_subset(examples, 12, by_length=True)
  assert len(subset) == 12
  assert {ex["length"] for ex in subset} == set(range(1, 11))
  assert subset == sorted(subset, key=examples.index)  # Original order kept.
  assert evaluation.decode_subset(examples, -1) is examples


def test_decode_subset_is_a_fixed_sample_with_the_splits_lengths():
  """Translation: 10% long sentences in the split, about 10% in the subset
  (round-robin over lengths would give 50%), the same subset every eval."""
  examples = [{"length": n, "i": i} for i, n in enumerate([5] * 900 + [30] * 100)]
  subset = evaluation.decode_subset(examples, 100)
  assert len(subset) == 100 and subset == evaluation.decode_subset(examples, 100)
  assert subset == sorted(subset, key=lambda ex: ex["i"])  # Split order kept.
  assert 5 <= sum(ex["length"] == 30 for ex in subset) <= 15
  round_robin = evaluation.decode_subset(examples, 100, by_length=True)
  assert sum(ex["length"] == 30 for ex in round_robin) == 50


def tiny_experiment(name: str, tmp_path):
  """A `name:tiny,smoke` experiment and random parameters of its model."""
  c = configs.load_config(f"{name}:tiny,smoke", {
      "eval.batch_size": 8, "eval.decode_examples": 16, "eval.beam_size": 2})
  exp = experiment.Experiment(c, str(tmp_path))
  batch = next(iter(exp.task.eval_batches("validation", 8)))
  return exp, exp.model.init(jax.random.key(0), batch)


def test_evaluate_seq2seq_on_a_mesh(tmp_path):
  """The loop's call: global batches over 8 devices, per-length table filled."""
  exp, params = tiny_experiment("reverse", tmp_path)
  assert exp.mesh.devices.size == 8
  got, _, _ = evaluation.evaluate(exp, params, "validation")
  c = exp.config
  lengths = range(c.data.eval_min_len, c.data.eval_max_len + 1)
  assert got["decoded_examples"] == 16
  assert 0.0 <= got["sequence_accuracy"] <= 1.0
  assert {f"sequence_accuracy_len_{n:02d}" for n in lengths[:16]} <= set(got)
  assert "bleu" not in got  # Not a metric of this task.
  one_device = experiment.Experiment(c, exp.workdir, devices=jax.devices()[:1])
  alone, _, _ = evaluation.evaluate(one_device, params, "validation")
  # The loss is a sum over 8 shards or 1: equal up to float summation order.
  assert alone.pop("loss") == pytest.approx(got.pop("loss"), rel=1e-6)
  assert got == alone


def test_evaluate_classifier_reports_accuracy_per_length(tmp_path):
  exp, params = tiny_experiment("difference", tmp_path)
  got, _, _ = evaluation.evaluate(exp, params, "test")
  c = exp.config.data  # Trained on lengths up to 10, evaluated up to 15.
  assert set(got) == {"loss", "accuracy", "accuracy_trained_lengths", "accuracy_longer_lengths",
                      *(f"accuracy_len_{n:02d}" for n in range(c.eval_min_len, c.eval_max_len + 1))}
  full = evaluation.teacher_forced(exp, params, "test")
  assert 0.0 <= full["accuracy"] <= 1.0 and full["loss"] > 0
