"""PNG plots of one run or several overlaid, drawn from `WORKDIR/metrics.jsonl` alone.

The metrics file is the run's one record (training loop and standalone
evaluation both append to it), so plots need no TensorBoard and no checkpoint,
and can be redrawn while a run is going. Records are one JSON object per
(step, split); a resumed run may repeat a step, and the last record wins.
`launch/evaluate.py` records say how they were made (`decoding`,
`averaged_steps`), and each such setting is its own line, `test (greedy)` next
to `test (beam 4)`: scores of one step decoded two ways are two points.

Every figure has a title (the metric and the runs), labelled axes and
thousands-separated step ticks; with several runs each line's legend entry
names its run, so `launch/plot.py --workdir=A --workdir=B` compares them.
Files go through `etils.epath`, so the workdirs and out_dir may be buckets.
"""

import collections
import json
import logging
import os
import re
from typing import Any, Sequence

from etils import epath
import matplotlib

matplotlib.use("Agg")  # Files only: no display on servers and CI.
import matplotlib.pyplot as plt  # noqa: E402  (after use("Agg"))
from matplotlib import ticker  # noqa: E402

from transformer_research import configs  # noqa: E402
from transformer_research import storage  # noqa: E402

# Metric groups -> one figure each: (file name, title, metric names, y label, log-scale y).
FIGURES = (
    ("loss.png", "Loss", ("loss",), "loss (log scale)", True),
    ("perplexity.png", "Perplexity", ("perplexity",), "perplexity (log scale)", True),
    ("accuracy.png", "Accuracy", ("accuracy", "sequence_accuracy"), "accuracy", False),
    ("bleu.png", "BLEU and chrF", ("bleu", "chrf"), "score (0-100)", False),
    ("learning_rate.png", "Learning rate", ("learning_rate",), "learning rate", False),
)
LENGTH_KEY = re.compile(r"^sequence_accuracy_len_(\d+)$")


def read_metrics(path: str) -> list[dict[str, Any]]:
  """Parses metrics.jsonl. A line a kill cut short is skipped with a warning:
  it stays a line of its own, at the end or (once another record was
  appended after it) in the middle, until a resume of the run drops it."""
  records = []
  for number, line in enumerate(epath.Path(path).read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      logging.warning("%s:%d is not a record (cut short by a kill?); skipped: %r", path,
                      number, line[:80])
  return records


def series(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[int, float]]:
  """(line, metric) -> {step: value}; later records of a line overwrite earlier ones.

  A line is a split (`train`, `validation`), qualified by the settings an
  evaluate.py record names (`test (beam 4)`, `test (greedy, mean of 3
  checkpoints)`); the search only for the metrics of decoded outputs (a
  greedy and a beam-4 record of one step share their loss).
  """
  out = collections.defaultdict(dict)
  for r in records:
    if "step" not in r:
      continue
    for key, value in r.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
        out[(_line(r, key), key)][int(r["step"])] = float(value)
  return out


# Metrics of decoded outputs (evaluation.score_outputs): they depend on the search.
_DECODED = re.compile(r"^(bleu|chrf|sequence_accuracy.*|decoded_examples)$")


def _line(record: dict[str, Any], metric: str) -> str:
  settings = [record["decoding"]] if "decoding" in record and _DECODED.match(metric) else []
  if "averaged_steps" in record:
    settings.append(f"mean of {len(str(record['averaged_steps']).split(','))} checkpoints")
  split = record.get("split", "train")
  return f"{split} ({', '.join(settings)})" if settings else split


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
  ax.set_title(title)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=6, integer=True))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:,.0f}"))
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")


def plot_curves(runs: dict[str, list[dict[str, Any]]], out_dir: str) -> list[str]:
  """One PNG per metric group that has data, every run's lines overlaid.

  Args:
    runs: run name -> its records (in the order the legend shows them).
    out_dir: where the PNGs go.
  """
  series_of = {name: series(records) for name, records in runs.items()}
  several = len(runs) > 1
  written = []
  for file_name, title, metrics, ylabel, log_y in FIGURES:
    # A line is a run's metric on one `series` name ("train", "test (greedy)").
    lines = [(run, line, metric, points) for run, by_key in series_of.items()
             for (line, metric), points in sorted(by_key.items()) if metric in metrics and points]
    if not lines:
      continue
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # Overlays: a colour per run, a line style per series name, so a run's
    # train and eval curves read as one run.
    colours = {run: f"C{i % 10}" for i, run in enumerate(runs)}
    styles = {line: ("-", "--", ":", "-.")[i % 4] for i, line in
              enumerate(sorted({line for _, line, *_ in lines}, key=lambda s: s != "train"))}
    for run, line, metric, points in lines:
      steps = sorted(points)
      label = f"{run}: {line} {metric}" if several else f"{line} {metric}"
      ax.plot(steps, [points[s] for s in steps], marker="." if len(steps) < 50 else None,
              label=label, color=colours[run] if several else None,
              linestyle=styles[line] if several else "-")
    if log_y and all(v > 0 for *_, points in lines for v in points.values()):
      ax.set_yscale("log")
    names = ", ".join(runs)
    _style(ax, f"{title}: {names if len(names) <= 60 else f'{len(runs)} runs'}", "step", ylabel)
    written.append(_save(fig, epath.Path(out_dir) / file_name))
  return written


def plot_per_length(runs: dict[str, list[dict[str, Any]]], out_dir: str,
                    train_max_len: dict[str, int | None], max_curves: int = 4) -> str | None:
  """Sequence accuracy against length at the last few eval steps of each run.

  This is the length-generalisation picture of the synthetic tasks: training
  covers short lengths only (a dashed line marks the longest), so the curve's
  fall-off past them is the result.
  """
  fig, ax, drawn = None, None, False
  for run, records in runs.items():
    curves = {}  # (split, step) -> {length: accuracy}
    for r in records:
      lengths = {int(m.group(1)): float(v) for k, v in r.items() if (m := LENGTH_KEY.match(k))}
      if lengths and "step" in r:
        curves[(r.get("split", "eval"), int(r["step"]))] = lengths
    if not curves:
      continue
    if fig is None:
      fig, ax = plt.subplots(figsize=(7, 4.5))
    for (split, step), acc in sorted(curves.items(), key=lambda kv: kv[0][1])[-max_curves:]:
      xs = sorted(acc)
      prefix = f"{run}: " if len(runs) > 1 else ""
      ax.plot(xs, [acc[x] for x in xs], marker="o", label=f"{prefix}{split} step {step:,}")
    if train_max_len.get(run):
      ax.axvline(train_max_len[run] + 0.5, color="gray", linestyle="--",
                 label=f"{run + ': ' if len(runs) > 1 else ''}longest training length "
                       f"({train_max_len[run]})")
    drawn = True
  if not drawn:
    return None
  ax.set_ylim(-0.02, 1.02)
  _style(ax, f"Sequence accuracy by length: {', '.join(runs)}", "length", "sequence accuracy")
  ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
  return _save(fig, epath.Path(out_dir) / "per_length_accuracy.png")


def _save(fig, path: epath.Path) -> str:
  fig.tight_layout()
  with path.open("wb") as f:
    fig.savefig(f, dpi=100, format="png")
  plt.close(fig)  # Figures otherwise pile up in pyplot's global registry.
  return str(path)


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Short, distinct legend names: each run directory's last path parts."""
  parts = [_path_parts(w) for w in workdirs]
  for depth in range(1, max(len(p) for p in parts) + 1):
    names = ["/".join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  raise ValueError(f"workdirs={list(workdirs)}: the same run directory is given twice")


def _path_parts(workdir: str) -> list[str]:
  if workdir.startswith("gs://"):
    return workdir.rstrip("/").split("/")
  return os.path.normpath(os.path.abspath(workdir)).split(os.sep)


def _train_max_len(workdir: str) -> int | None:
  """The longest training length of a synthetic task (config.json), if any.

  Only a mark on the per-length plots: a damaged config.json costs the mark
  (with a warning naming it), not the plots of the records beside it.
  """
  path = epath.Path(workdir) / "config.json"
  if not path.exists():
    return None
  try:
    data = configs.saved_config(path).data
  except ValueError as e:
    logging.warning("no training-length mark for %s: %s", workdir, e)
    return None
  return data.train_max_len if data.num_train_examples else None


def plot_workdirs(workdirs: Sequence[str], out_dir: str | None = None) -> list[str]:
  """Writes every plot the runs' metrics support; returns the PNG paths.

  Args:
    workdirs: one run directory, or several to overlay.
    out_dir: where the PNGs go; default WORKDIR/plots (one run only).

  Raises:
    ValueError: a workdir has no metrics.jsonl or no records, or several
      runs without `out_dir`.
    NotADirectoryError: `out_dir` is a file.
  """
  if not workdirs:
    raise ValueError("workdirs=[]: expected at least one run directory")
  if out_dir is not None and epath.Path(out_dir).is_file():
    raise NotADirectoryError(f"out_dir={out_dir!r} is a file: expected a directory for the "
                             "PNGs (new or existing)")
  if len(workdirs) > 1 and out_dir is None:
    raise ValueError(f"{len(workdirs)} run directories: expected --out_dir for the overlaid "
                     "plots (they belong to none of the runs)")
  runs, max_lens = {}, {}
  for name, workdir in zip(run_names(workdirs), workdirs):
    storage.check_workdir(workdir)
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
      raise ValueError(f"workdir={workdir!r} has no metrics.jsonl: expected the workdir of a "
                       "training run.")
    records = read_metrics(path)
    if not records:
      raise ValueError(f"{path} is empty: expected at least one metrics record.")
    runs[name], max_lens[name] = records, _train_max_len(workdir)
  out_dir = epath.Path(out_dir or epath.Path(workdirs[0]) / "plots")
  out_dir.mkdir(parents=True, exist_ok=True)
  written = plot_curves(runs, out_dir)
  per_length = plot_per_length(runs, out_dir, max_lens)
  return written + ([per_length] if per_length else [])
