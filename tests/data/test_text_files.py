"""Tests for data/text_files.py: JSON lines / TSV (optionally gzipped), bad lines counted."""

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
  path = tmp_path / "sentiment.tsv"  # A common public layout: other column names.
  path.write_text("label\tsentence\n1\tGreat.\n0\tBad.\n")
  with pytest.raises(ValueError, match=r"sentiment.tsv: no usable example \(text field 'text', "
                     r"label field 'label'; columns found: \['label', 'sentence'\]; skipped "
                     r"lines: no_text=2 \(first at line 2\)\)"):
    text_files.read_text_file(path)


def test_text_files_globs_in_sorted_order_and_rejects_bad_paths(tmp_path):
  for name, text in [("b.jsonl", "second"), ("a.jsonl", "first")]:
    (tmp_path / name).write_text(json.dumps({"text": text, "label": 0}) + "\n")
  assert [e["text"] for e in text_files.text_files(str(tmp_path / "*.jsonl"))] == ["first", "second"]
  assert len(text_files.text_files([tmp_path / "b.jsonl", tmp_path / "a.jsonl"])) == 2
  with pytest.raises(FileNotFoundError, match="no such file"):
    text_files.text_files(str(tmp_path / "missing-*.jsonl"))
  (tmp_path / "a.csv").write_text("text,label\n")
  with pytest.raises(ValueError, match="expected a .jsonl, .json or .tsv"):
    text_files.text_files(tmp_path / "a.csv")
  with pytest.raises(ValueError, match="paths=\\[\\]"):
    text_files.text_files([])


@pytest.mark.skipif(not IMDB_TEST.exists(), reason=f"{IMDB_TEST} absent (set IMDB_JSONL)")
def test_real_imdb_jsonl():
  examples = text_files.text_files(IMDB_TEST)
  assert len(examples) == 25_000
  assert sum(e["label"] for e in examples) == 12_500
