"""The one metrics writer: `WORKDIR/metrics.jsonl` plus TensorBoard.

One JSON object per (step, split) record, appended and flushed at once, so a
killed run loses nothing it reported and `jq`/pandas read the file directly.
The same scalars go to TensorBoard through tensorboardX under
`WORKDIR/tensorboard/`. Only process 0 writes; other processes get a writer
that does nothing, so callers never branch on the process index.

Every file goes through `etils.epath`, so WORKDIR may be a bucket
(`gs://bucket/run`). Object stores cannot append: there a record is added by
rewriting the whole object (metrics files stay small: one line per logged step),
and TensorBoard event files are uploaded whole at each flush.
"""

import io
import json
import math
from typing import Any

from etils import epath
import jax

from transformer_research import storage


class MetricsWriter:
  """Appends records to metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    workdir = epath.Path(workdir)
    self.path = workdir / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      from tensorboardX import SummaryWriter  # Imported here: only process 0 needs it.
      _register_remote_event_files()
      self._tb = SummaryWriter(logdir=str(workdir / "tensorboard"), flush_secs=10)

  def write(self, step: int, split: str, scalars: dict[str, Any]) -> dict[str, Any]:
    """Writes one record `{"step", "split", **scalars}` and returns it."""
    record = {"step": int(step), "split": split}
    record.update({k: _plain(v) for k, v in scalars.items()})
    if self.enabled:
      append_line(self.path, json.dumps(record))
      for name, value in record.items():
        if name not in ("step", "split") and isinstance(value, float) and math.isfinite(value):
          self._tb.add_scalar(f"{split}/{name}", value, int(step))
    return record

  def truncate_after(self, step: int) -> None:
    """Drops records newer than `step` (written after the checkpoint resumed
    from), so a resumed run's metrics.jsonl equals an uninterrupted run's."""
    if not self.enabled or not self.path.exists():
      return
    lines = [line + "\n" for line in self.path.read_text().splitlines() if line.strip()]
    kept = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (json.JSONDecodeError, KeyError):  # A line cut by a kill.
        continue
    tmp = self.path.parent / (self.path.name + ".tmp")
    tmp.write_text("".join(kept))
    tmp.replace(self.path)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def write_config(config: Any, workdir: str) -> None:
  """WORKDIR/config.json: the resolved config of the run (process 0)."""
  if jax.process_index() != 0:
    return
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def append_line(path: epath.Path, line: str) -> None:
  """Appends `line` + newline to `path` (created if missing).

  Local files are opened for appending, so a kill loses at most the line being
  written. Object stores (gs://) have no append: the object is rewritten whole.
  """
  path = epath.Path(path)
  if not storage.is_remote(path):
    with path.open("a") as f:
      f.write(line + "\n")
    return
  old = path.read_text() if path.exists() else ""
  path.write_text(old + line + "\n")


class _RemoteEventFile:
  """A TensorBoard event file on an object store, uploaded whole at each flush
  (tensorboardX's own gs:// writer needs google-cloud-storage; this needs only epath)."""

  def __init__(self, path: str):
    self.path, self.buffer = epath.Path(path), io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    self.path.write_bytes(self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _RemoteEventFiles:
  """tensorboardX writer factory for gs:// log dirs (objects need no directories)."""

  def open(self, path: str) -> _RemoteEventFile:
    return _RemoteEventFile(path)

  def directory_check(self, path: str) -> None:
    del path


def _register_remote_event_files() -> None:
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  record_writer.register_writer_factory("gs", _RemoteEventFiles())


def _plain(value: Any) -> Any:
  """JSON-friendly Python scalars from numpy/JAX scalars."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, bool) or isinstance(value, str) or value is None:
    return value
  if isinstance(value, int):
    return value
  return float(value)
