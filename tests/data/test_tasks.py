"""Tests of the task registry on synthetic tasks and on small in-memory text data."""

import gzip
import json
import re
import shutil

import numpy as np
import pytest

from transformer_research import configs
from transformer_research import models
from transformer_research.data import sources
from transformer_research.data import tasks


def _config(name: str):
  return configs.load_config(f"{name}:tiny,smoke")


def _build(config, workdir="/nonexistent"):
  return tasks.build(config, str(workdir), process_index=0, process_count=1)


def test_registry_declares_kind_and_metrics():
  for name, spec in tasks.REGISTRY.items():
    assert spec.kind in models.KINDS, name
    assert "loss" in spec.metric_names, name


def test_unknown_task_is_an_error_naming_it():
  config = _config("reverse")
  config.data.task = "reverse_typo"
  with pytest.raises(ValueError, match="reverse_typo"):
    _build(config)


def test_reverse_batches_follow_the_contract():
  task = _build(_config("reverse"))
  assert (task.kind, task.num_classes) == ("seq2seq", None)
  assert task.input_vocab_size == task.target_vocab_size == 13
  eos = task.target_tokenizer.eos_id
  batch = next(task.train_iterator(8, process_index=0, process_count=1))
  assert set(batch) == {"inputs", "targets"} and batch["targets"].dtype == np.int32
  ends = (batch["targets"] > 0).sum(axis=1) - 1
  assert (batch["targets"][np.arange(8), ends] == eos).all()  # EOS, then only padding.
  lengths = set()
  for batch in task.eval_batches("test", 8, process_index=0, process_count=1):
    assert batch["inputs"].shape == (8, 20) and batch["targets"].shape == (8, 21)
    real = batch["example_mask"] == 1
    np.testing.assert_array_equal((batch["inputs"][real] > 0).sum(axis=1), batch["length"][real])
    lengths.update(batch["length"][real].tolist())
  assert lengths == set(range(1, 21))


def test_eval_examples_match_eval_batches_and_are_not_trained_on():
  task = _build(_config("sort"))
  examples = task.eval_examples("test")
  batch = next(task.eval_batches("test", 4, process_index=0, process_count=1))
  first = examples[0]
  assert task.target_tokenizer.decode(batch["targets"][0]) in first["references"]
  assert task.encode_inputs(first["source"]) == [t for t in batch["inputs"][0] if t]
  assert first["length"] == batch["length"][0]
  train = {task._raw("train")[i]["inputs"] for i in range(len(task._raw("train")))}
  assert not train & {e["source"] for e in examples}


def test_difference_is_a_classifier_tested_on_trained_and_longer_numbers():
  task = _build(_config("difference"))
  assert (task.kind, task.num_classes, task.target_tokenizer) == ("classify", 2, None)
  batch = next(task.train_iterator(8, process_index=0, process_count=1))
  assert set(batch) == {"inputs", "label"} and set(batch["label"]) <= {0, 1}
  lengths = {e["length"] for e in task.eval_examples("test")}
  assert lengths == set(range(1, 16))  # Trained on 1-10: 11-15 test generalisation.


def test_unknown_split_is_an_error():
  with pytest.raises(ValueError, match="split='dev'"):
    _build(_config("addition")).eval_examples("dev")


def test_a_split_with_no_usable_example_is_an_error_naming_the_limits():
  """Eval lengths past data.max_input_len leave nothing to score: the eval stopped
  with "KeyError: 'index'" (or an empty split scored 0 / 0)."""
  config = _config("reverse")
  config.data.eval_min_len, config.data.eval_max_len = 22, 24
  task = _build(config)
  with pytest.raises(ValueError, match=re.escape(
      "reverse/validation: no example is usable (skipped: {'malformed': 0, 'empty': 0, "
      "'too_long': 12}); too_long is longer than data.max_input_len=20, "
      "data.max_target_len=21")):
    task.eval_examples("validation")


_PAIRS = [("Hello.", "Hola."), ("Hello.", "¡Hola!"), ("I am here.", "Estoy aquí."),
          ("Thank you.", "Gracias."), ("Where is the station?", "¿Dónde está la estación?")]


def _fake_spa_eng(split, **kwargs):
  """In-memory stand-in for the TFDS source, with one empty and one huge pair."""
  del kwargs
  pairs = [{"inputs": e, "targets": s} for e, s in _PAIRS * 20]
  if split != "train":
    pairs = pairs[:5] + [{"inputs": "", "targets": "Nada."}, {"inputs": "Nothing.", "targets": ""},
                         {"inputs": "word " * 100, "targets": "palabra"}]
  return pairs


def test_translation_task_trains_sentencepiece_and_groups_references(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "spa_eng", _fake_spa_eng)
  config = _config("wmt_spa")
  config.data.vocab_size = 40
  task = _build(config, tmp_path)
  assert list(tmp_path.glob("spm_joint_40*.model"))
  assert task.input_tokenizer is task.target_tokenizer and task.input_vocab_size == 40
  batch = next(task.train_iterator(4, process_index=0, process_count=1))
  assert "inputs_segmentation" in batch and batch["inputs"].shape == (4, 64)
  examples = task.eval_examples("test")
  assert examples[0]["source"] == "Hello." and examples[0]["references"] == ["Hola.", "¡Hola!"]
  assert len(examples) == 4  # The two half-empty and the over-long pair were skipped.
  assert sum(b["example_mask"].sum() for b in task.eval_batches("test", 4, 0, 1)) == 5


def test_translation_reads_local_pairs_and_holds_out_whole_source_sentences(tmp_path):
  """data.train_path of spa_eng: source<TAB>target lines as manythings.org
  writes them (an attribution column, a BOM, CRLF), gzipped or not. Every
  translation of a held-out source is held out with it: a validation source
  seen in training would score its memorised references."""
  rng = np.random.default_rng(0)
  words = "the cat dog eats sees a big small house red".split()
  lines = []
  for i in range(120):
    source = " ".join(rng.choice(words, 4)) + f" {i}."
    lines += [f"{source}\t{source.upper()}\tCC-BY 2.0 (France) #{i}"] * (1 + i % 3)
  lines.insert(7, "a line with no tab")
  with gzip.open(tmp_path / "pairs.tsv.gz", "wt", newline="") as f:
    f.write("\ufeff" + "\r\n".join(lines) + "\r\n")
  (tmp_path / "test.txt").write_text("Hello.\tHola.\nHello.\t¡Hola!\nBye.\tAdiós.\n")
  config = _config("wmt_spa")
  config.data.train_path = str(tmp_path / "pairs.tsv.gz")
  config.data.eval_path = str(tmp_path / "test.txt")
  config.data.vocab_size = 60
  task = _build(config, tmp_path)
  train, validation = task._raw("train"), task._raw("validation")
  assert len(train) + len(validation) == 240  # 120 sources, 1-3 translations each.
  assert {r["inputs"] for r in train}.isdisjoint(r["inputs"] for r in validation)
  held_out = {e["source"]: e["references"] for e in task.eval_examples("validation")}
  assert len(held_out) == 12  # A tenth of the sources, with all their translations.
  assert all(refs == [source.upper()] * (1 + int(source.split()[-1][:-1]) % 3)
             for source, refs in held_out.items())
  assert [e["references"] for e in task.eval_examples("test")] == [["Hola.", "¡Hola!"],
                                                                  ["Adiós."]]
  assert next(task.train_iterator(4, process_index=0, process_count=1))["inputs"].shape == (4, 64)


def _write_jsonl(path, records):
  with gzip.open(path, "wt") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)


@pytest.mark.parametrize("name", ["imdb", "lm_imdb"])
def test_text_tasks_read_local_files(tmp_path, name):
  words = "good bad movie film plot actor great awful story fun".split()
  rng = np.random.default_rng(0)
  # Sorted by label, as the IMDB files are.
  records = [{"text": " ".join(rng.choice(words, 30)), "label": int(i >= 30)} for i in range(60)]
  _write_jsonl(tmp_path / "train.jsonl.gz", records)
  _write_jsonl(tmp_path / "test.jsonl.gz", records[:7])
  config = _config(name)
  config.data.train_path = str(tmp_path / "train.jsonl.gz")
  config.data.eval_path = str(tmp_path / "test.jsonl.gz")
  config.data.vocab_size = 30
  config.data.max_input_len = config.data.max_target_len = 16
  task = _build(config, tmp_path)
  iterator = task.train_iterator(4, process_index=0, process_count=1)
  batch = next(iterator)
  assert task.encode_inputs("good movie")
  if name == "imdb":
    assert batch["inputs"].shape[1] <= 16 and task.num_classes == 2
  else:
    assert task.input_tokenizer is None and task.target_vocab_size == 30
    assert batch["targets"].shape == (4, 16) and "targets_segmentation" in batch
    # 54 training reviews of 30 words, cut into 16-token chunks, the last with EOS.
    assert iterator.get_state()["num_examples"] > 54
    eos = sum(int((b["targets"] == task.target_tokenizer.eos_id).sum())
              for b in task.eval_batches("validation", 4, process_index=0, process_count=1))
    assert eos == 6  # One EOS per document, at the end of its last chunk.
  assert len(task.eval_examples("test")) == 7
  validation = task.eval_examples("validation")
  assert len(validation) == 6  # A fixed random tenth of train.
  if name == "imdb":
    assert {e["label"] for e in validation} == {0, 1}


@pytest.mark.parametrize("name,train_split", [("imdb", "train"), ("lm_imdb", "unsupervised"),
                                               ("imdb_mlm", "unsupervised")])
def test_imdb_tasks_learn_text_from_the_unlabelled_reviews_and_labels_from_train(
    tmp_path, monkeypatch, name, train_split):
  """The TFDS source: both language models use the 50,000 unlabelled reviews (train and
  validation carved from them), the classifier the labelled train split; all test on test."""
  asked = []
  words = "good bad movie film plot actor great awful story fun".split()
  rng = np.random.default_rng(0)

  def fake_imdb(split, data_dir=None, *, with_label=True):
    del data_dir
    asked.append(split)
    assert with_label == (name == "imdb"), split
    return [{"text": " ".join(rng.choice(words, 30)), **({"label": i % 2} if with_label else {})}
            for i in range(50)]

  monkeypatch.setattr(sources, "imdb", fake_imdb)
  config = _config(name)
  config.data.vocab_size = 30
  task = _build(config, tmp_path)
  next(task.train_iterator(4, process_index=0, process_count=1))
  task.eval_examples("validation")
  task.eval_examples("test")
  assert set(asked) == {f"{train_split}[:90%]", f"{train_split}[90%:]", "test"}


def test_a_classifier_of_class_folders_takes_its_classes_from_the_config(tmp_path):
  words = {"neg": "bad awful dull", "neutral": "fine okay plain", "pos": "good great fun"}
  rng = np.random.default_rng(0)
  for split, n in (("train", 20), ("test", 3)):
    for name, vocab in words.items():
      (tmp_path / split / name).mkdir(parents=True)
      for i in range(n):
        (tmp_path / split / name / f"{i}.txt").write_text(" ".join(rng.choice(vocab.split(), 8)))
  overrides = {"data.train_path": str(tmp_path / "train"), "data.eval_path": str(tmp_path / "test"),
               "data.vocab_size": 30}
  config = configs.load_config("imdb:tiny,smoke", overrides)
  with pytest.raises(ValueError, match=r"3 classes \['neg', 'neutral', 'pos'\], but the task has 2"):
    _build(config, tmp_path)._tokenize("train")
  config = configs.load_config("imdb:tiny,smoke", {
      **overrides, "data.class_names": ("neg", "neutral", "pos")})
  assert tasks.vocab_sizes(config).num_classes == 3  # From the config alone: no data read.
  task = _build(config, tmp_path)
  assert task.num_classes == 3
  test = task.eval_examples("test")
  assert sorted(e["label"] for e in test) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert all(set(e["source"].split()) <= set(words[["neg", "neutral", "pos"][e["label"]]].split())
             for e in test)


def test_head_tail_truncation_keeps_a_long_reviews_first_quarter_and_last_three_quarters(
    tmp_path):
  assert tasks.cut(list(range(10)), 8, "head_tail") == [0, 1, 4, 5, 6, 7, 8, 9]
  assert tasks.cut(list(range(10)), 8, "head") == list(range(8))
  assert tasks.cut(list(range(5)), 8, "head_tail") == list(range(5))
  config = _imdb_files(tmp_path)
  config.data.truncation = "head_tail"
  task = _build(config, tmp_path)
  text = task.eval_examples("test")[0]["source"]
  ids = task.encode_inputs(text)
  assert len(ids) > 16
  batch = next(task.eval_batches("test", 7, process_index=0, process_count=1))
  assert batch["inputs"][0].tolist() == ids[:4] + ids[-12:]


def test_bad_truncation_or_validation_share_is_an_error_naming_it(tmp_path):
  config = _imdb_files(tmp_path)
  config.data.truncation = "tail"
  with pytest.raises(ValueError, match=r"config.data.truncation='tail'; expected one of "
                                       r"\('head', 'head_tail'\)"):
    _build(config, tmp_path)
  config = _imdb_files(tmp_path)
  config.data.validation_fraction = 1.0
  with pytest.raises(ValueError, match=r"config.data.validation_fraction=1.0; expected"):
    _build(config, tmp_path)


@pytest.mark.parametrize("share,held_out", [(0.1, 6), (0.05, 3)])
def test_validation_fraction_is_the_share_of_train_held_out(tmp_path, monkeypatch, share,
                                                             held_out):
  config = _imdb_files(tmp_path)  # 60 training records.
  config.data.validation_fraction = share
  task = _build(config, tmp_path)
  validation = {e["source"] for e in task.eval_examples("validation")}
  train = task._raw("train")
  assert len(validation) == held_out and len(train) == 60 - held_out
  assert not validation & {r["text"] for r in train}
  asked = []
  monkeypatch.setattr(sources, "imdb", lambda split, data_dir=None, with_label=True:
                      asked.append(split) or [])
  config = _config("imdb")
  config.data.validation_fraction = share
  tasks._text_raw("imdb", config.data)("validation")
  assert asked == [f"train[{100 - 100 * share:g}%:]"]


def _imdb_files(tmp_path, n: int = 60):
  words = "good bad movie film plot actor great awful story fun".split()
  rng = np.random.default_rng(0)
  records = [{"text": " ".join(rng.choice(words, 30)), "label": i % 2} for i in range(n)]
  _write_jsonl(tmp_path / "train.jsonl.gz", records)
  _write_jsonl(tmp_path / "test.jsonl.gz", records[:7])
  config = configs.load_config("imdb:tiny,smoke", {
      "data.train_path": str(tmp_path / "train.jsonl.gz"),
      "data.eval_path": str(tmp_path / "test.jsonl.gz"), "data.vocab_size": 30,
      "data.max_input_len": 16})
  return config


def _first_batches(config, workdir, n=3):
  iterator = _build(config, workdir).train_iterator(4, process_index=0, process_count=1)
  return [next(iterator) for _ in range(n)]


def test_tokenized_cache_is_reused_only_with_the_same_tokenizer_and_data(tmp_path, monkeypatch,
                                                                          caplog):
  """A restart loads the tokenized split instead of re-tokenizing; a changed
  data file, length limit or tokenizer, or a corrupt cache, rebuilds it with
  one warning saying why; the same bytes at other paths or times do not."""
  caplog.set_level("INFO")
  workdir = tmp_path / "run"
  config = _imdb_files(tmp_path)
  first = _first_batches(config, workdir)
  cache_file = workdir / "tokenized" / "train.npz"
  assert cache_file.exists()

  real_tokenize = tasks.pipeline.tokenize
  def no_tokenize(*args, **kwargs):
    raise AssertionError("re-tokenized although the cache matches")
  monkeypatch.setattr(tasks.pipeline, "tokenize", no_tokenize)
  again = _first_batches(config, workdir)
  for a, b in zip(first, again):
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
  assert "made with the same tokenizers and data" in caplog.text
  monkeypatch.setattr(tasks.pipeline, "tokenize", real_tokenize)

  def rebuilt_because(config, why):
    caplog.clear()
    _first_batches(config, workdir)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and "tokenized cache" in r.getMessage()]
    assert len(warnings) == 1 and why in warnings[0], warnings

  _imdb_files(tmp_path, n=61)  # One more record: the file's size and mtime change.
  rebuilt_because(config, f'data.files[0] changed (cached ["{config.data.eval_path}", ')
  rebuilt_because(configs.load_config("imdb:tiny,smoke", {
      **{f"data.{k}": config.data[k] for k in ("train_path", "eval_path", "vocab_size")},
      "data.max_input_len": 12}), "max_lengths.inputs changed (cached 16, now 12)")
  rebuilt_because(configs.load_config("imdb:tiny,smoke", {
      **{f"data.{k}": config.data[k] for k in ("train_path", "eval_path")},
      "data.max_input_len": 12, "data.vocab_size": 32}), "tokenizers changed")
  rebuilt_because(configs.load_config("imdb:tiny,smoke", {
      **{f"data.{k}": config.data[k] for k in ("train_path", "eval_path")},
      "data.max_input_len": 12, "data.vocab_size": 32, "data.truncation": "head_tail"}),
      "truncation changed")
  rebuilt_because(configs.load_config("imdb:tiny,smoke", {
      **{f"data.{k}": config.data[k] for k in ("train_path", "eval_path")},
      "data.max_input_len": 12, "data.vocab_size": 32, "data.truncation": "head_tail",
      "data.validation_fraction": 0.2}), "data.validation_fraction changed (cached 0.1, now 0.2)")
  cache_file.write_bytes(cache_file.read_bytes()[:100])  # Torn write / corrupt file.
  rebuilt_because(config, "unreadable")

  # The same files copied elsewhere (other paths, new times, as a host's start-up
  # script copies them): the stamps differ, the bytes do not, so the cache is used,
  # and under the new stamps the next start matches at once.
  copies = tmp_path / "copies"
  copies.mkdir()
  for name in ("train.jsonl.gz", "test.jsonl.gz"):
    shutil.copy(tmp_path / name, copies / name)
  copied = configs.load_config("imdb:tiny,smoke", {
      "data.train_path": str(copies / "train.jsonl.gz"),
      "data.eval_path": str(copies / "test.jsonl.gz"), "data.vocab_size": 30,
      "data.max_input_len": 16})
  first = _first_batches(config, workdir)
  monkeypatch.setattr(tasks.pipeline, "tokenize", no_tokenize)
  caplog.clear()
  for a, b in zip(first, _first_batches(copied, workdir)):
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
  assert (f'data.files[0] changed (cached ["{config.data.eval_path}", ' in caplog.text and
          "but the files hold the bytes it was made from; using it" in caplog.text), caplog.text
  caplog.clear()
  _first_batches(copied, workdir)
  assert "made with the same tokenizers and data" in caplog.text
