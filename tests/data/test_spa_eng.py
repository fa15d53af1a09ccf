"""Tests for the spa_eng TFDS builder and the TFDS sources (sources.py), on dummy_data.

`tfds.testing.DatasetBuilderTestCase` needs TensorFlow (it subclasses
`tf.test.TestCase` and reads through `as_dataset`), which this project does
not install. These tests make the same checks in the same way: the shipped
archive is replaced by the fixture (and its checksum recorded), the split
sizes are pinned, a reloaded builder sees the same splits, and the splits must
not overlap (here: by English sentence). The real shipped archive is checked
against its recorded size and checksum, and its pair counts pinned.
"""

import collections
import hashlib
import importlib.util
import logging
import os
import pathlib
import tempfile
import zipfile
from unittest import mock

import pytest
import tensorflow_datasets as tfds

from transformer_research.data import sources
from transformer_research.data.builders import spa_eng as spa_eng_lib
from transformer_research.data.builders.spa_eng import spa_eng as spa_eng_module

FIXTURE = pathlib.Path(spa_eng_lib.__file__).parent / "dummy_data" / "spa.txt"
SPLITS = {"train": 27, "validation": 5, "test": 10}  # Fixed by the sha256 split of the fixture.


def _write_archive(directory: pathlib.Path) -> pathlib.Path:
  """The fixture packed like the real archive (member `spa-eng/spa.txt`)."""
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / "spa-eng.zip"
  with zipfile.ZipFile(path, "w") as z:
    z.write(FIXTURE, "spa-eng/spa.txt")
  return path


@pytest.fixture
def fixture_is_recorded(monkeypatch):
  """Archives must match the recorded checksum: record the fixture's."""
  digest = hashlib.sha256(_write_archive(pathlib.Path(tempfile.mkdtemp())).read_bytes())
  monkeypatch.setattr(spa_eng_module, "recorded_sha256", lambda: digest.hexdigest())


def _prepare(data_dir, *, manual_dir=None):
  """download_and_prepare, with any download failing the test."""
  def no_download(self, url):
    raise AssertionError(f"downloaded {url}: the archive ships with the package")

  builder = spa_eng_lib.SpaEng(data_dir=os.fspath(data_dir))
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir) if manual_dir else None)
  with mock.patch.object(tfds.download.DownloadManager, "download", autospec=True,
                         side_effect=no_download):
    builder.download_and_prepare(download_config=config)
  return builder


def _examples(builder) -> dict[str, list[tuple[str, str]]]:
  out = {}
  for split in SPLITS:
    ds = builder.as_data_source(split=split)
    out[split] = [(ds[i]["en"].decode(), ds[i]["es"].decode()) for i in range(len(ds))]
  return out


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
  """The builder prepared from the 'shipped' archive, here the fixture; (builder, data_dir)."""
  tmp = tmp_path_factory.mktemp("spa_eng")
  archive = _write_archive(tmp / "package")
  with mock.patch.object(spa_eng_module, "SHIPPED_ARCHIVE", archive), mock.patch.object(
      spa_eng_module, "recorded_sha256", lambda: hashlib.sha256(archive.read_bytes()).hexdigest()):
    return _prepare(tmp / "data"), tmp / "data"


def test_split_sizes_and_reload(shipped):
  builder, data_dir = shipped
  assert {s: builder.info.splits[s].num_examples for s in SPLITS} == SPLITS
  assert {s: len(v) for s, v in _examples(builder).items()} == SPLITS
  reloaded = spa_eng_lib.SpaEng(data_dir=os.fspath(data_dir))
  assert reloaded.is_prepared()
  assert _examples(reloaded) == _examples(builder)


def test_the_shipped_archive_is_the_recorded_one():
  archive = pathlib.Path(spa_eng_module.SHIPPED_ARCHIVE)
  info = spa_eng_lib.SpaEng.url_infos[spa_eng_lib.URL]
  assert archive.stat().st_size == info.size == 2_638_744
  assert hashlib.sha256(archive.read_bytes()).hexdigest() == info.checksum == (
      "0c4fd7825d3d872488d38c157f784e035edab4f2ff0df25a2a208790ecb5b58f")
  assert (archive.parent / "SPA_ENG_LICENSE.md").read_text().count("CC BY 2.0") >= 1


def test_no_english_sentence_in_two_splits(shipped):
  builder, _ = shipped
  english = {split: {en for en, _ in exs} for split, exs in _examples(builder).items()}
  assert not english["train"] & english["validation"]
  assert not english["train"] & english["test"]
  assert not english["validation"] & english["test"]
  # All three translations of "Go." stay together (a multi-reference group).
  go = [split for split, exs in _examples(builder).items() for en, _ in exs if en == "Go."]
  assert len(go) == 3 and len(set(go)) == 1


def test_splits_are_deterministic_and_independent_of_line_order():
  lines = FIXTURE.read_bytes().splitlines()
  pairs, _ = spa_eng_lib.parse_pairs(lines)
  reversed_pairs, _ = spa_eng_lib.parse_pairs(lines[::-1])
  first = {en: spa_eng_lib.split_of(en) for _, en, _ in pairs}
  assert first == {en: spa_eng_lib.split_of(en) for _, en, _ in reversed_pairs}
  assert collections.Counter(first[en] for _, en, _ in pairs) == SPLITS
  # Pinned values: a change of hash or of the percentages must be deliberate.
  assert [spa_eng_lib.split_of(s) for s in ("Go.", "Help!", "Wait!")] == ["train", "test", "validation"]


def test_bad_lines_are_skipped_and_counted_in_one_log_line(tmp_path, caplog, fixture_is_recorded):
  archive = _write_archive(tmp_path / "manual")
  with caplog.at_level(logging.INFO):
    _prepare(tmp_path / "data", manual_dir=archive.parent)
  lines = [r.getMessage() for r in caplog.records if "skipped bad lines" in r.getMessage()]
  assert len(lines) == 1
  assert "{'no_tab': 1, 'empty_side': 2, 'not_utf8': 1}" in lines[0]
  assert "42 pairs" in lines[0]


def test_a_manual_dir_archive_is_used_instead_of_the_shipped_one(tmp_path, shipped,
                                                                fixture_is_recorded, monkeypatch):
  manual = tmp_path / "manual"
  _write_archive(manual)
  monkeypatch.setattr(spa_eng_module, "SHIPPED_ARCHIVE", tmp_path / "gone.zip")
  builder = _prepare(tmp_path / "data", manual_dir=manual)
  assert _examples(builder) == _examples(shipped[0])


def test_a_missing_manual_dir_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config.data.manual_dir='.*/nope': no such "
                     "directory"):
    sources.spa_eng("train", data_dir=tmp_path / "data", manual_dir=tmp_path / "nope")


@pytest.mark.parametrize("archive,message", [
    ("other", r"spa-eng.zip: sha256 [0-9a-f]{64} differs from the recorded 0c4fd78"),
    ("not_zip", r"spa-eng.zip is not a readable zip archive"),
    ("truncated", r"spa-eng.zip is not a readable zip archive"),
])
def test_a_wrong_manual_archive_is_named(tmp_path, monkeypatch, archive, message):
  manual = tmp_path / "manual"
  path = _write_archive(manual)
  if archive == "not_zip":
    path.write_text("<html>404 Not Found</html>")
  elif archive == "truncated":
    path.write_bytes(path.read_bytes()[:100])
  if archive != "other":  # Let the checksum pass, to reach the zip checks.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(spa_eng_module, "recorded_sha256", lambda: digest)
  with pytest.raises(ValueError, match=message):
    _prepare(tmp_path / "data", manual_dir=manual)


def test_an_oversized_pairs_file_is_refused(tmp_path, fixture_is_recorded, monkeypatch):
  monkeypatch.setattr(spa_eng_module, "MAX_MEMBER_BYTES", 100)
  with pytest.raises(ValueError, match=r"spa-eng/spa.txt is [\d,]+ bytes, over the 100"):
    _prepare(tmp_path / "data", manual_dir=_write_archive(tmp_path / "m").parent)


def test_source_yields_translation_examples_and_groups_references(tmp_path, fixture_is_recorded):
  manual = tmp_path / "manual"
  _write_archive(manual)
  train = sources.spa_eng("train", data_dir=tmp_path / "data", manual_dir=manual)
  assert len(train) == SPLITS["train"]
  assert all(set(ex) == {"inputs", "targets"} and isinstance(ex["targets"], str) for ex in train)
  groups = {g["inputs"]: g["references"] for g in sources.group_references(train)}
  assert sorted(groups["Go."]) == ["Vaya.", "Ve.", "Vete."]
  assert sum(len(r) for r in groups.values()) == len(train)
  with pytest.raises(ValueError, match="split='dev'"):
    sources.spa_eng("dev", data_dir=tmp_path / "data", manual_dir=manual)


def test_real_archive_pair_counts(tmp_path):
  """The shipped archive, prepared as a fresh machine does (no manual dir)."""
  counts = {s: len(sources.spa_eng(s, data_dir=tmp_path / "data")) for s in SPLITS}
  assert counts == {"train": 83394, "validation": 17861, "test": 17709}
  assert sum(counts.values()) == 118_964  # Every line of spa.txt is a good pair.


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_stock_tfds_sources_fail_fast_without_tensorflow(tmp_path):
  """imdb_reviews / wmt13 need TensorFlow to extract; the error comes before any download."""
  with pytest.raises(ModuleNotFoundError, match="tensorflow-cpu"):
    sources.wmt13_es_en("train", data_dir=tmp_path)
  with pytest.raises(ModuleNotFoundError, match="--config.data.train_path=FILE"):
    sources.imdb("test", data_dir=tmp_path)
  with pytest.raises(ValueError, match="split='unsupervised': has no labels"):
    sources.imdb("unsupervised", data_dir=tmp_path)
