"""Tests for data/text_files.py: JSON lines / TSV (optionally gzipped), .txt files per class,
class folders; detected fields; bad lines counted."""

import gzip
import json
import logging
import os
import pathlib

import pytest

from transformer_research.data import text_files

IMDB_TEST = pathlib.Path(os.environ.get(
    "IMDB_JSONL", pathlib.Path(__file__).parents[3] / "shared/data/sentiment/imdb/imdb_test.jsonl.gz"))


def _jsonl_lines() -> list[bytes]:
  good = [{"id": 1, "text": "Great film.", "label": 1}, {"text": "Dull.", "label": "0", "rating": 2}]
  bad = [
      b"{not json",                          # not_json_object
      b"[1, 2]",                             # not_json_object
      b'{"text": "", "label": 1}',           # no_text
      b'{"label": 1}',                       # no_text
      b'{"text": "No label."}',              # no_label
      b'{"text": "Empty label.", "label": ""}',  # no_label
      b'{"text": "Caf\xe9", "label": 1}',    # not_utf8
  ]
  return [json.dumps(good[0]).encode(), *bad[:4], b"", json.dumps(good[1]).encode(), *bad[4:]]


def test_jsonl_and_gzip_give_the_same_examples(tmp_path):
  (tmp_path / "a.jsonl").write_bytes(b"\n".join(_jsonl_lines()) + b"\n")
  (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b"\n".join(_jsonl_lines())))
  expected = [{"text": "Great film.", "label": 1}, {"text": "Dull.", "label": 0}]
  assert text_files.read_text_file(tmp_path / "a.jsonl") == expected
  assert text_files.read_text_file(tmp_path / "a.jsonl.gz") == expected


def test_bad_lines_are_skipped_and_counted_in_one_log_line(tmp_path, caplog):
  path = tmp_path / "a.jsonl"
  path.write_bytes(b"\n".join(_jsonl_lines()))
  with caplog.at_level(logging.INFO):
    text_files.read_text_file(path)
  (message,) = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
  assert "2 examples" in message
  first = {"not_json_object": 2, "no_text": 4, "no_label": 8, "not_utf8": 10}  # Line numbers.
  for reason, count in {"not_json_object": 2, "no_text": 2, "no_label": 2, "not_utf8": 1}.items():
    assert f"{reason}={count} (first at line {first[reason]})" in message
  assert caplog.records[-1].levelno == logging.WARNING


def test_text_only_for_language_modelling(tmp_path):
  path = tmp_path / "a.jsonl"
  path.write_bytes(b"\n".join(_jsonl_lines()))
  texts = text_files.read_text_file(path, with_label=False)
  assert texts == [{"text": t} for t in ["Great film.", "Dull.", "No label.", "Empty label."]]


def test_tsv_with_header_and_label_names(tmp_path):
  path = tmp_path / "reviews.tsv"
  path.write_text("id\tlabel\ttext\n1\tpos\tLoved it.\n2\tneg\tHated it.\n4\tpos\n")
  examples = text_files.read_text_file(path, label_names=["neg", "pos"])
  assert examples == [{"text": "Loved it.", "label": 1}, {"text": "Hated it.", "label": 0}]


@pytest.mark.parametrize("line,kwargs,value", [
    ('{"text": "Meh.", "label": "meh"}', dict(label_names=["neg", "pos"]), "'meh'"),
    ('{"text": "Five stars.", "label": 5}', dict(num_labels=2), "5"),
    ('{"text": "Bool.", "label": true}', {}, "True"),
])
def test_a_label_outside_the_labels_is_an_error_naming_file_line_and_value(
    tmp_path, line, kwargs, value):
  path = tmp_path / "a.jsonl"
  path.write_text('{"text": "Fine.", "label": 1}\n' + line + "\n")
  with pytest.raises(ValueError, match=rf"{path}:2: label {value} \(field 'label'\) is not one of"):
    text_files.read_text_file(path, **kwargs)


def test_a_file_with_no_usable_example_names_its_columns_and_skips(tmp_path):
  path = tmp_path / "sentiment.tsv"
  path.write_text("label\tsentence\n1\t \n0\t\n")
  with pytest.raises(ValueError, match=r"sentiment.tsv: no usable example \(text field "
                     r"'sentence', label field 'label'; columns found: \['label', 'sentence'\]; "
                     r"skipped lines: no_text=2 \(first at line 2\)\)"):
    text_files.read_text_file(path)


def test_other_column_names_are_detected_from_the_header_and_logged(tmp_path, caplog):
  path = tmp_path / "sentiment.tsv"  # A common public layout (SST-2): label first, "sentence".
  path.write_text("label\tsentence\n1\tGreat.\n0\tBad.\n")
  with caplog.at_level(logging.INFO):
    examples = text_files.read_text_file(path, num_labels=2)
  assert examples == [{"text": "Great.", "label": 1}, {"text": "Bad.", "label": 0}]
  (message,) = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
  assert "2 examples (text field 'sentence', label field 'label', detected from the TSV " \
         "header ['label', 'sentence'])" in message
  json_path = tmp_path / "reviews.jsonl"  # JSON keys: the first object's.
  json_path.write_text('{"review": "Fine.", "sentiment": 1, "id": 3}\n')
  assert text_files.read_text_file(json_path) == [{"text": "Fine.", "label": 1}]


def test_configured_fields_win_and_ambiguous_or_missing_ones_are_errors(tmp_path):
  path = tmp_path / "a.tsv"
  path.write_text("sentence\treview\tstars\nShort.\tA long review.\t1\n")
  with pytest.raises(ValueError, match=r"a.tsv: cannot tell the text field: \['sentence', "
                     r"'review'\] could each be it .*set data.text_field"):
    text_files.read_text_file(path)
  with pytest.raises(ValueError, match=r"a.tsv: no label field among the columns found: "
                     r"\['review', 'sentence', 'stars'\] .*set data.label_field"):
    text_files.read_text_file(path, text_field="review")
  assert text_files.read_text_file(path, text_field="review", label_field="stars") == [
      {"text": "A long review.", "label": 1}]


def test_crlf_line_endings_and_a_byte_order_mark_are_read(tmp_path):
  path = tmp_path / "windows.tsv"
  path.write_bytes(b"\xef\xbb\xbftext\tlabel\r\nGood.\t1\r\nBad.\t0\r\n")
  assert text_files.read_text_file(path) == [{"text": "Good.", "label": 1},
                                             {"text": "Bad.", "label": 0}]
  lines = tmp_path / "corpus.txt"
  lines.write_bytes(b"First line.\r\n\r\nSecond line.\r\n")
  assert text_files.text_files(lines, with_label=False) == [{"text": "First line."},
                                                            {"text": "Second line."}]


def test_one_plain_text_file_per_class(tmp_path):
  (tmp_path / "pos.txt").write_text("Loved it.\nGreat.\n")
  (tmp_path / "neg.txt").write_text("Hated it.\n")
  assert text_files.class_names(str(tmp_path / "*.txt")) == ["neg", "pos"]
  examples = text_files.text_files(str(tmp_path / "*.txt"), num_labels=2)
  assert examples == [{"text": "Hated it.", "label": 0}, {"text": "Loved it.", "label": 1},
                      {"text": "Great.", "label": 1}]
  with pytest.raises(ValueError, match=r"2 classes \['neg', 'pos'\], but the task has 3"):
    text_files.text_files(str(tmp_path / "*.txt"), num_labels=3)


def _acl_imdb(root):
  """The aclImdb layout: train/{neg,pos,unsup}/<id>_<rating>.txt plus loose files."""
  for folder, texts in {"neg": ["Bad.", "Awful.\r\nReally."], "pos": ["Good."],
                        "unsup": ["Who knows."]}.items():
    (root / folder).mkdir(parents=True)
    for i, text in enumerate(texts):
      (root / folder / f"{i}_5.txt").write_text(text)
  (root / "urls_pos.txt").write_text("http://example.com\n")  # Not in a class folder.
  (root / "neg" / "empty_1.txt").write_text("  \n")


def test_a_directory_with_one_folder_per_class(tmp_path, caplog):
  _acl_imdb(tmp_path / "train")
  assert text_files.class_names(tmp_path / "train") == ["neg", "pos", "unsup"]
  with pytest.raises(ValueError, match=r"3 classes \['neg', 'pos', 'unsup'\], but the task has "
                     r"2; set data.class_names"):
    text_files.text_files(tmp_path / "train", num_labels=2)
  with caplog.at_level(logging.INFO):
    examples = text_files.text_files(tmp_path / "train", label_names=["neg", "pos"], num_labels=2)
  assert examples == [{"text": "Bad.", "label": 0}, {"text": "Awful.\nReally.", "label": 0},
                      {"text": "Good.", "label": 1}]
  assert any("no_text=1 (first in" in r.getMessage() and "empty_1.txt" in r.getMessage()
             for r in caplog.records)
  texts = text_files.text_files(tmp_path / "train", with_label=False)  # Every file: unlabelled.
  assert len(texts) == 5 and {"text": "Who knows."} in texts
  with pytest.raises(ValueError, match=r"no folder for the classes \['positive'\]"):
    text_files.text_files(tmp_path / "train", label_names=["neg", "positive"], num_labels=2)
  (tmp_path / "empty" / "pos").mkdir(parents=True)
  (tmp_path / "empty" / "pos" / "1.txt").write_text("")
  with pytest.raises(ValueError, match=r"empty/pos: no usable example \(one per \.txt file under "
                     r"it; files found: 1; skipped files: no_text=1"):
    text_files.text_files(tmp_path / "empty", label_names=["pos"], num_labels=1)


def test_text_files_globs_in_sorted_order_and_rejects_bad_paths(tmp_path):
  for name, text in [("b.jsonl", "second"), ("a.jsonl", "first")]:
    (tmp_path / name).write_text(json.dumps({"text": text, "label": 0}) + "\n")
  assert [e["text"] for e in text_files.text_files(str(tmp_path / "*.jsonl"))] == ["first", "second"]
  assert len(text_files.text_files([tmp_path / "b.jsonl", tmp_path / "a.jsonl"])) == 2
  with pytest.raises(FileNotFoundError, match="no such file"):
    text_files.text_files(str(tmp_path / "missing-*.jsonl"))
  (tmp_path / "a.csv").write_text("text,label\n")
  with pytest.raises(ValueError, match="expected a .jsonl, .json, .tsv or .txt"):
    text_files.text_files(tmp_path / "a.csv")
  with pytest.raises(ValueError, match="paths=\\[\\]"):
    text_files.text_files([])


@pytest.mark.skipif(not IMDB_TEST.exists(), reason=f"{IMDB_TEST} absent (set IMDB_JSONL)")
def test_real_imdb_jsonl():
  examples = text_files.text_files(IMDB_TEST)
  assert len(examples) == 25_000
  assert sum(e["label"] for e in examples) == 12_500
