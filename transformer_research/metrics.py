"""The one metrics writer: `WORKDIR/metrics.jsonl` plus TensorBoard.

One JSON object per (step, split) record, appended and flushed at once, so a
killed run loses nothing it reported and `jq`/pandas read the file directly.
The same scalars go to TensorBoard through tensorboardX under
`WORKDIR/tensorboard/`, with what a record cannot hold: the config (as text,
and flattened as hyper-parameters for the HParams tab), the parameter count,
and a few source / reference / output triples per eval. Only process 0
writes; other processes get a writer that does nothing, so callers never
branch on the process index.

Every file goes through `etils.epath`, so WORKDIR may be a bucket
(`gs://bucket/run`). Object stores cannot append: there a record is added by
rewriting the whole object (metrics files stay small: one line per logged step),
and TensorBoard event files are uploaded whole at each flush.
"""

import io
import json
import logging
import math
from typing import Any

from etils import epath
import jax

from transformer_research import configs
from transformer_research import storage


class MetricsWriter:
  """Appends records to metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool | None = None, *,
               resumed_step: int | None = None):
    """Args:
      workdir: the run directory.
      enabled: whether this process writes; default: process 0 only.
      resumed_step: the training loop's start step. TensorBoard events of
        later steps (written by a run that was then killed before its next
        checkpoint) are purged, as `truncate_after` drops such records, so
        both logs show what the resumed run computed. None: no purge (a
        writer that only appends, such as launch/evaluate.py's).
    """
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    workdir = epath.Path(workdir)
    self.path = workdir / "metrics.jsonl"
    self._tb = None
    if self.enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      from tensorboardX import SummaryWriter  # Imported here: only process 0 needs it.
      _register_remote_event_files()
      purge = None if resumed_step is None else resumed_step + 1
      self._tb = SummaryWriter(logdir=str(workdir / "tensorboard"), flush_secs=10,
                               purge_step=purge)

  def write(self, step: int, split: str, scalars: dict[str, Any]) -> dict[str, Any]:
    """Writes one record `{"step", "split", **scalars}` and returns it."""
    record = {"step": int(step), "split": split}
    record.update({k: _plain(v) for k, v in scalars.items()})
    if self.enabled:
      storage.append_line(self.path, json.dumps(record))
      for name, value in record.items():
        if name not in ("step", "split") and isinstance(value, float) and math.isfinite(value):
          self._tb.add_scalar(f"{split}/{name}", value, int(step))
    return record

  def write_run_info(self, config: Any, param_count: int, summary: str) -> None:
    """TensorBoard: the config as text and as hyper-parameters, the run's size."""
    if not self.enabled:
      return
    from tensorboardX.summary import hparams  # pylint: disable=g-import-not-at-top
    self._tb.add_text("run/summary", summary, 0)
    self._tb.add_text("run/config", "```\n" + config.to_json_best_effort(indent=2) + "\n```", 0)
    values = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
              for k, v in configs.flatten(config).items()}
    values["parameters"] = int(param_count)
    # The HParams tab shows these eval scalars next to the values.
    metrics = {f"{config.eval.split}/{name}": 0.0 for name in ("loss", "accuracy")}
    for summary_proto in hparams(values, metrics):
      self._tb.file_writer.add_summary(summary_proto)

  def write_samples(self, step: int, split: str, examples: list[dict[str, Any]],
                    outputs: list[str] | None, count: int) -> None:
    """TensorBoard: the first `count` decoded examples of an eval, as a table."""
    if not self.enabled or not outputs or count <= 0:
      return
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    rows = ["| source | reference | output |", "| --- | --- | --- |"]
    rows += [f"| {cell(ex['source'])} | {cell(ex['references'][0])} | {cell(out)} |"
             for ex, out in list(zip(examples, outputs))[:count]]
    self._tb.add_text(f"{split}/samples", "\n".join(rows), int(step))

  def truncate_after(self, step: int) -> None:
    """Drops the training loop's records newer than `step` (written after the
    checkpoint resumed from), so a resumed run's metrics.jsonl equals an
    uninterrupted run's. Records that `launch/evaluate.py` wrote (they carry
    `"writer"`) are kept: they name the checkpoint step they evaluated."""
    if not self.enabled or not self.path.exists():
      return
    lines = [line + "\n" for line in self.path.read_text().splitlines() if line.strip()]
    kept = []
    for number, line in enumerate(lines, 1):
      try:
        record = json.loads(line)
        if record["step"] <= step or "writer" in record:
          kept.append(line)
      except (json.JSONDecodeError, KeyError, TypeError):  # A line cut by a kill.
        logging.warning("%s:%d is not a record (cut short by a kill?); dropped: %r",
                        self.path, number, line[:80])
    if kept == lines:
      return  # Nothing to drop: leave the file as it is.
    storage.replace_text(self.path, "".join(kept))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


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
