"""storage.py: writes that readers never see half done."""

import os

from etils import epath
import pytest

from transformer_research import storage


def test_a_failed_replace_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, monkeypatch):
  path = tmp_path / "metrics.jsonl"
  storage.replace_text(path, "old\n")
  epath_type = type(epath.Path(path))  # What storage writes through.
  real_write = epath_type.write_bytes

  def half_then_full_disk(self, data):
    real_write(self, data[:2])
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(epath_type, "write_bytes", half_then_full_disk)
  with pytest.raises(OSError, match="No space"):
    storage.replace_text(path, "new, longer\n")
  monkeypatch.undo()
  assert path.read_text() == "old\n"
  assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_a_line_appended_after_a_cut_one_starts_a_line_of_its_own(tmp_path):
  path = tmp_path / "runs.jsonl"
  storage.append_line(path, "first")
  storage.append_line(path, "second")
  with open(path, "a") as f:
    f.write('{"cut sh')  # A kill mid-write.
  storage.append_line(path, "third")
  assert path.read_text().splitlines() == ["first", "second", '{"cut sh', "third"]
