"""The one metrics writer: `WORKDIR/metrics.jsonl` plus TensorBoard.

One JSON object per (step, split) record, appended and flushed at once, so a
killed run loses nothing it reported and `jq`/pandas read the file directly.
The same scalars go to TensorBoard through tensorboardX under
`WORKDIR/tensorboard/`. Only process 0 writes; other processes get a writer
that does nothing, so callers never branch on the process index.
"""

import json
import math
import os
from typing import Any

import jax


class MetricsWriter:
  """Appends records to metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # Imported here: only process 0 needs it.
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=10)

  def write(self, step: int, split: str, scalars: dict[str, Any]) -> dict[str, Any]:
    """Writes one record `{"step", "split", **scalars}` and returns it."""
    record = {"step": int(step), "split": split}
    record.update({k: _plain(v) for k, v in scalars.items()})
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")
      for name, value in record.items():
        if name not in ("step", "split") and isinstance(value, float) and math.isfinite(value):
          self._tb.add_scalar(f"{split}/{name}", value, int(step))
    return record

  def truncate_after(self, step: int) -> None:
    """Drops records newer than `step` (written after the checkpoint resumed
    from), so a resumed run's metrics.jsonl equals an uninterrupted run's."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    kept = []
    for line in lines:
      try:
        if json.loads(line)["step"] <= step:
          kept.append(line)
      except (json.JSONDecodeError, KeyError):  # A line cut by a kill.
        continue
    with open(self.path + ".tmp", "w") as f:
      f.writelines(kept)
    os.replace(self.path + ".tmp", self.path)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def write_config(config: Any, workdir: str) -> None:
  """WORKDIR/config.json: the resolved config of the run (process 0)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def _plain(value: Any) -> Any:
  """JSON-friendly Python scalars from numpy/JAX scalars."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, bool) or isinstance(value, str) or value is None:
    return value
  if isinstance(value, int):
    return value
  return float(value)
