"""PNG plots of a run, drawn from `WORKDIR/metrics.jsonl` alone.

The metrics file is the run's one record (training loop and standalone
evaluation both append to it), so plots need no TensorBoard and no checkpoint,
and can be redrawn while a run is going. Records are one JSON object per
(step, split); a resumed run may repeat a step, and the last record wins.
Files go through `etils.epath`, so the workdir and out_dir may be buckets.
"""

import collections
import json
import re
from typing import Any

from etils import epath
import matplotlib

matplotlib.use("Agg")  # Files only: no display on servers and CI.
import matplotlib.pyplot as plt  # noqa: E402  (after use("Agg"))

from transformer_research import storage  # noqa: E402

# Metric groups -> one figure each: (file name, metric names, log-scale y).
FIGURES = (
    ("loss.png", ("loss",), True),
    ("perplexity.png", ("perplexity",), True),
    ("accuracy.png", ("accuracy", "sequence_accuracy"), False),
    ("bleu.png", ("bleu", "chrf"), False),
    ("learning_rate.png", ("learning_rate",), False),
)
LENGTH_KEY = re.compile(r"^sequence_accuracy_len_(\d+)$")


def read_metrics(path: str) -> list[dict[str, Any]]:
  """Parses metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
  records = []
  lines = epath.Path(path).read_text().splitlines()
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i != len(lines) - 1:
        raise ValueError(f"{path}:{i + 1}: not a JSON object: {line[:80]!r}")
  return records


def _series(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, float]]:
  """(split, metric) -> {step: value}; later records overwrite earlier ones."""
  out = collections.defaultdict(dict)
  for r in records:
    if "step" not in r:
      continue
    for key, value in r.items():
      if isinstance(value, (int, float)) and key != "step":
        out[(r.get("split", "train"), key)][int(r["step"])] = float(value)
  return out


def plot_curves(records: list[dict[str, Any]], out_dir: str) -> list[str]:
  """One PNG per metric group that has data; returns the paths written."""
  series = _series(records)
  written = []
  for name, metrics, log_y in FIGURES:
    lines = [(s, m, pts) for (s, m), pts in sorted(series.items())
             if m in metrics and pts]
    if not lines:
      continue
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, metric, pts in lines:
      steps = sorted(pts)
      ax.plot(steps, [pts[s] for s in steps], marker="." if len(steps) < 50 else None,
              label=f"{split} {metric}")
    if log_y and all(v > 0 for _, _, pts in lines for v in pts.values()):
      ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(_save(fig, epath.Path(out_dir) / name))
  return written


def plot_per_length(records: list[dict[str, Any]], out_dir: str,
                    max_curves: int = 4) -> str | None:
  """Sequence accuracy against length at the last few eval steps.

  This is the length-generalisation picture of the synthetic tasks: training
  covers short lengths only, so the curve's fall-off past them is the result.
  """
  curves = {}  # (split, step) -> {length: accuracy}
  for r in records:
    lengths = {int(m.group(1)): float(v) for k, v in r.items()
               if (m := LENGTH_KEY.match(k))}
    if lengths and "step" in r:
      curves[(r.get("split", "eval"), int(r["step"]))] = lengths
  if not curves:
    return None
  fig, ax = plt.subplots(figsize=(6, 4))
  for (split, step), acc in sorted(curves.items(), key=lambda kv: kv[0][1])[-max_curves:]:
    xs = sorted(acc)
    ax.plot(xs, [acc[x] for x in xs], marker="o", label=f"{split} step {step}")
  ax.set_xlabel("length")
  ax.set_ylabel("sequence accuracy")
  ax.set_ylim(-0.02, 1.02)
  ax.legend()
  ax.grid(alpha=0.3)
  return _save(fig, epath.Path(out_dir) / "per_length_accuracy.png")


def _save(fig, path: epath.Path) -> str:
  fig.tight_layout()
  with path.open("wb") as f:
    fig.savefig(f, dpi=100, format="png")
  plt.close(fig)  # Figures otherwise pile up in pyplot's global registry.
  return str(path)


def plot_workdir(workdir: str, out_dir: str | None = None) -> list[str]:
  """Writes every plot the run's metrics support; returns the PNG paths.

  Raises:
    ValueError: the workdir has no metrics.jsonl, or it holds no records.
  """
  storage.check_workdir(workdir)
  path = epath.Path(workdir) / "metrics.jsonl"
  if not path.exists():
    raise ValueError(f"workdir={workdir!r} has no metrics.jsonl: expected the "
                     "workdir of a training run.")
  records = read_metrics(path)
  if not records:
    raise ValueError(f"{path} is empty: expected at least one metrics record.")
  out_dir = epath.Path(out_dir or epath.Path(workdir) / "plots")
  out_dir.mkdir(parents=True, exist_ok=True)
  written = plot_curves(records, out_dir)
  per_length = plot_per_length(records, out_dir)
  return written + ([per_length] if per_length else [])
