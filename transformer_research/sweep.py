"""One config over several sets of overrides, one `launch/train.py` run each, and their summary.

A sweep is a list of runs, each a name and its overrides (`key=value` of
dotted config fields), built from two kinds of flag of `launch/sweep.py`:

- `--sweep='model.positions=learned,sinusoidal,rope'`: one field and its
  values; several make the grid (their cartesian product, the first flag
  outermost). A value may hold commas inside brackets or quotes
  (`data.lengths=(1,2),(3,4)` is two values). Runs are named from the values:
  `positions-rope_learning_rate-0.003` (each field by the last part of its
  name, more parts when two fields end alike).
- `--run='NAME: key=value key=value'`: one named run, its overrides separated
  by spaces (shell-style quotes keep a value with spaces whole; commas are
  part of a value). For build-ups that are no grid: `--run='attn: model.d_ff=0'
  --run='attn+ff:'`. With `--sweep` as well, every named run is crossed with
  the grid (`attn_seed-0`, `attn_seed-1`, ...).

The same field twice in one run, or a name twice, is an error before
anything runs; so is a shared `--config.FIELD` of a swept field (it would
change no run, without a word) and two runs of the same config. Every run's
command is parsed by config_flags up front (in `launch/sweep.py`) and its
config checked as train.py checks it before it writes anything, so a misspelt
field or a value train.py would refuse fails before the first run trains; what
depends on the devices or the data (the mesh, the data paths, a warm start's
source) fails in that run.

Each run trains in `SWEEPDIR/<name>/` (its log: `SWEEPDIR/<name>/train.log`);
`SWEEPDIR/sweep.jsonl` records every attempt (command, exit status, wall
time). A run is skipped when it is finished: its `config.json` is the config
the sweep would train (fields added to the configs since it started read at
their defaults) and its latest complete checkpoint is of step
`train.num_steps` or used up the `train.max_minutes` budget. Anything else is
started again, and `launch/train.py` resumes it from its latest checkpoint.
"""

import dataclasses
import datetime
import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

from absl import flags
from etils import epath
from ml_collections import config_flags

from transformer_research import checkpointing
from transformer_research import cli
from transformer_research import configs
from transformer_research import plots
from transformer_research import rundir
from transformer_research import storage
from transformer_research import train_loop

_KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_BRACKETS = {"(": ")", "[": "]", "{": "}"}
# The final-metrics table's columns, in this order, where any run has them;
# per-length metrics (`*_len_NN`) get a table of their own.
# `*_trained_lengths` / `*_longer_lengths`: the synthetic tasks' in- and beyond-training figures.
TABLE_METRICS = ("loss", "perplexity", "accuracy", "accuracy_trained_lengths",
                 "accuracy_longer_lengths", "sequence_accuracy",
                 "sequence_accuracy_trained_lengths", "sequence_accuracy_longer_lengths", "bleu",
                 "chrf")
# A config override flag, as config_flags matches them: --config.a.b=v, --noconfig.a.
OVERRIDE = re.compile(r"^--?(no)?config\.")
LENGTH_KEY = re.compile(r"^(\w+)_len_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: `SWEEPDIR/<name>`, trained with `overrides` after the shared ones."""
  name: str
  overrides: tuple[tuple[str, str], ...]  # (dotted field, value as typed on a command line)

  def flags(self) -> list[str]:
    return [f"--config.{key}={value}" for key, value in self.overrides]

  def describe(self) -> str:
    return " ".join(f"{key}={value}" for key, value in self.overrides)


def split_values(text: str) -> list[str]:
  """`a,(1,2),'x,y'` -> `["a", "(1,2)", "'x,y'"]`: commas inside brackets or quotes stay."""
  values, current, closers, quote = [], [], [], None
  for char in text:
    if quote:
      quote = None if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in _BRACKETS:
      closers.append(_BRACKETS[char])
    elif closers and char == closers[-1]:
      closers.pop()
    elif char == "," and not closers:
      values.append("".join(current))
      current = []
      continue
    current.append(char)
  if quote or closers:
    raise ValueError(f"{text!r}: unbalanced {'quote' if quote else 'bracket'}")
  return values + ["".join(current)]


def _check_key(key: str, where: str) -> str:
  if not _KEY.match(key):
    raise ValueError(f"{where}: {key!r} is not a config field: expected a dotted name such as "
                     "model.positions (without --config.)")
  return key


def parse_sweep(text: str) -> tuple[str, list[str]]:
  """`--sweep='model.positions=learned,rope'` -> `("model.positions", ["learned", "rope"])`."""
  where = f"--sweep={text!r}"
  key, sep, values = text.partition("=")
  if not sep:
    raise ValueError(f"{where}: expected FIELD=VALUE,VALUE,... (no '=')")
  _check_key(key.strip(), where)
  try:
    values = [v.strip() for v in split_values(values)]
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  if not any(values):
    raise ValueError(f"{where}: no values: expected FIELD=VALUE,VALUE,...")
  if not all(values):
    raise ValueError(f"{where}: an empty value (two commas in a row, or one at an end)")
  if len(set(values)) != len(values):
    raise ValueError(f"{where}: a value is given twice")
  return key.strip(), values


def parse_run(text: str) -> Run:
  """`--run='NAME: key=value key=value'` -> `Run(NAME, ((key, value), ...))`."""
  where = f"--run={text!r}"
  name, sep, rest = text.partition(":")
  name = name.strip()
  if not sep:
    raise ValueError(f"{where}: expected 'NAME: key=value key=value ...' (no ':')")
  _check_name(name, where)
  try:
    words = shlex.split(rest)
  except ValueError as e:
    raise ValueError(f"{where}: {e}") from None
  overrides = []
  for word in words:
    key, sep, value = word.partition("=")
    if not sep or not value:
      raise ValueError(f"{where}: {word!r}: expected key=value")
    overrides.append((_check_key(key, where), value))
  return Run(name, _no_repeats(tuple(overrides), where))


def _check_name(name: str, where: str) -> None:
  if not _NAME.match(name):
    raise ValueError(f"{where}: run name {name!r}: expected letters, digits and . _ + - "
                     "(it names a directory), starting with a letter or digit")


def _no_repeats(overrides: tuple[tuple[str, str], ...], where: str) -> tuple:
  keys = [key for key, _ in overrides]
  repeated = sorted({key for key in keys if keys.count(key) > 1})
  if repeated:
    raise ValueError(f"{where}: {repeated[0]} is set twice")
  return overrides


def value_name(value: str) -> str:
  """A value as a file-name-safe word: `1e-3` stays, `(1, 2)` -> `1-2`, `'rope'` -> `rope`."""
  return re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9.+-]", "-", value)).strip("-.") or "empty"


def _field_names(keys: Sequence[str]) -> list[str]:
  """The shortest distinct dotted suffixes, dots made dashes: model.positions -> positions."""
  parts = [key.split(".") for key in keys]
  for depth in range(1, max((len(p) for p in parts), default=1) + 1):
    names = ["-".join(p[-depth:]) for p in parts]
    if len(set(names)) == len(names):
      return names
  raise ValueError(f"--sweep: {keys}: the same field is swept twice")


def plan(sweeps: Sequence[str], runs: Sequence[str]) -> list[Run]:
  """The runs of `--sweep` and `--run` flags (see the module docstring), in order.

  Raises:
    ValueError: a malformed flag, no flag at all, a field set twice in a run,
      or two runs of the same name.
  """
  if not sweeps and not runs:
    raise ValueError("nothing to run: expected --sweep=FIELD=VALUE,VALUE,... and/or "
                     "--run='NAME: key=value ...'")
  axes = [parse_sweep(text) for text in sweeps]
  fields = _field_names([key for key, _ in axes])
  grid = [Run("_".join(f"{field}-{value_name(v)}" for field, v in zip(fields, values)),
              tuple(zip([key for key, _ in axes], values)))
          for values in itertools.product(*[values for _, values in axes])]
  bases = [parse_run(text) for text in runs] or [Run("", ())]
  planned = []
  for base, point in itertools.product(bases, grid or [Run("", ())]):
    name = "_".join(filter(None, (base.name, point.name)))
    planned.append(Run(name, _no_repeats(base.overrides + point.overrides,
                                         f"run {name!r} (--run and --sweep)")))
  names = [run.name for run in planned]
  for name in names:
    if names.count(name) > 1:
      raise ValueError(f"run name {name!r} twice: each run needs its own directory (name the "
                       "runs with --run='NAME: key=value ...')")
  return planned


def train_command(train_script: str, config: str, sweep_dir: str, shared: Sequence[str],
                  run: Run) -> list[str]:
  """The `launch/train.py` command of a run: the shared overrides, then the run's."""
  return [sys.executable, train_script, f"--config={config}",
          f"--workdir={os.path.join(sweep_dir, run.name)}", *shared, *run.flags()]


def parse_config(run: Run, command: Sequence[str]) -> Any:
  """`train_command_config(command)`, its error naming the run."""
  try:
    return train_command_config(command)
  except ValueError as e:
    raise ValueError(f"run {run.name!r}: {e}") from None


def train_command_config(command: Sequence[str]) -> Any:
  """The config a `launch/train.py` command will train, parsed by config_flags
  as train.py parses it, and checked as train.py checks it before it writes
  anything (the checks that need neither devices nor data:
  `train_loop.check_settings`), so a bad value stops a sweep before its first
  run, not when its turn comes (and a pod's start before it is sent).

  Raises:
    ValueError: config_flags' message (an unknown field, a value of the wrong
      type, a config file that does not load) or the value train.py would refuse.
  """
  argv = [command[1]] + [arg for arg in command[2:] if OVERRIDE.match(arg) or
                         arg.startswith("--config=")]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True,
                                           sys_argv=argv)
  try:
    values(argv)
    # A config file that failed to load is kept as a value that raises on first use.
    getattr(holder.value, "is_locked", None)
  except Exception as e:  # pylint: disable=broad-except  (flags, config files, config values)
    raise ValueError(cli.flag_error(e, argv)) from None  # The line train.py would print.
  train_loop.check_settings(holder.value)
  return holder.value


def check_distinct(runs: Sequence[Run], sweeps: Sequence[str], shared: Sequence[str],
                   parsed: Sequence[Any]) -> None:
  """Refuses a sweep whose runs are not what its flags say.

  A shared `--config.FIELD` of a field that `--sweep` varies was replaced by
  the swept values in every run without a word: the flag the user typed had
  no effect. (A named run may override a shared value: defaults and their
  exceptions.) Two runs whose configs are equal (`learning_rate=1e-3,0.001`)
  train one run twice.

  Raises:
    ValueError: naming the flag, or the two runs.
  """
  swept = {parse_sweep(text)[0] for text in sweeps}
  for arg in shared:
    field = OVERRIDE.sub("", arg).partition("=")[0]
    if field in swept:
      raise ValueError(f"{arg} is shared, but --sweep sets {field} in every run: the flag "
                       "changes no run; give the field once")
  seen = {}
  for run, config in zip(runs, parsed):
    same = seen.setdefault(json.dumps(configs.flatten(config), sort_keys=True, default=str),
                           run.name)
    if same != run.name:
      raise ValueError(f"runs {same!r} and {run.name!r} have the same config: the second "
                       "would repeat the first (vary the seed to repeat a run)")


def printable(command: Sequence[str]) -> str:
  """A command as one shell line, with `python` for this interpreter (to submit elsewhere)."""
  head = ["python"] if command[0] == sys.executable else [command[0]]
  return shlex.join(head + list(command[1:]))


def finished_step(run_dir: str, config: Any) -> int | None:
  """The last step of a finished run of exactly `config` in `run_dir`, else None (module docstring)."""
  try:
    previous = rundir.previous_config(run_dir)
  except ValueError:  # A damaged config.json: the run's train.py names it, the sweep goes on.
    return None
  if previous is None or configs.flatten(previous) != configs.flatten(config):
    return None
  steps = checkpointing.checkpoint_steps(run_dir)
  if not steps:
    return None
  last = steps[-1]
  if last >= config.train.num_steps or checkpointing.budget_used(
      checkpointing.time_used_s(run_dir, last), config.train.max_minutes):
    return last
  return None


@dataclasses.dataclass
class Outcome:
  """What became of a run in this invocation."""
  run: Run
  status: str  # "finished earlier", "done", "failed (exit N)"
  returncode: int
  log: str


def execute(runs: Sequence[Run], commands: Sequence[list[str]], parsed: Sequence[Any],
            sweep_dir: str, say: Callable[[str], None] = print) -> list[Outcome]:
  """Runs each unfinished run's command in turn, each to its log; a failure does not stop the rest.

  Args:
    runs, commands, parsed: each run, its train.py command and its parsed config.
    sweep_dir: SWEEPDIR (local): run directories, their train.log, sweep.jsonl.
    say: where the one line of progress per run goes.
  """
  outcomes = []
  for i, (run, command, config) in enumerate(zip(runs, commands, parsed), 1):
    run_dir = os.path.join(sweep_dir, run.name)
    log = os.path.join(run_dir, "train.log")
    prefix = f"[{i}/{len(runs)}] {run.name}"
    last = finished_step(run_dir, config)
    if last is not None:
      say(f"{prefix}: finished earlier (step {last}), not run again")
      outcomes.append(Outcome(run, "finished earlier", 0, log))
      continue
    say(f"{prefix}: training ({run.describe() or 'shared overrides only'}); log {log}")
    returncode = _attempt(run, command, sweep_dir, log)
    if returncode == 0:
      say(f"{prefix}: done in {format_seconds(wall_time(sweep_dir, run.name, last=True))}")
      status = "done"
    else:
      status = f"failed (exit {returncode})"
      say(f"{prefix}: FAILED with exit status {returncode}: {_error_line(log)} (log {log})")
    outcomes.append(Outcome(run, status, returncode, log))
  return outcomes


def _attempt(run: Run, command: list[str], sweep_dir: str, log: str) -> int:
  """One start of `command` (stdout and stderr appended to `log`), recorded in sweep.jsonl
  whatever ends it (a Ctrl-C included)."""
  os.makedirs(os.path.dirname(log), exist_ok=True)
  started = time.time()
  with open(log, "a") as f:
    f.write(f"==== {datetime.datetime.now().isoformat(timespec='seconds')} "
            f"launch/sweep.py: {printable(command)}\n")
    f.flush()
    child = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
    try:
      _wait_through_ctrl_c(child)
    finally:
      storage.append_line(os.path.join(sweep_dir, "sweep.jsonl"), json.dumps({
          "name": run.name, "command": command, "returncode": child.returncode,
          "wall_s": round(time.time() - started, 3),
          "time": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds")}))
  return child.returncode


def _wait_through_ctrl_c(child: subprocess.Popen) -> None:
  """Waits for train.py; on Ctrl-C, for it to checkpoint and stop, then stops the sweep.

  A terminal's Ctrl-C reaches train.py too; SIGTERM asks the same of it when
  only the sweep was interrupted. A second Ctrl-C kills it at once.
  """
  try:
    child.wait()
  except KeyboardInterrupt:
    child.send_signal(signal.SIGTERM)
    try:
      child.wait()
    except KeyboardInterrupt:
      child.kill()
      child.wait()
    raise


def _error_line(log: str) -> str:
  """The run's own one-line `error: ...`, else its log's last line."""
  with open(log, errors="replace") as f:
    lines = [line.strip() for line in f if line.strip()]
  errors = [line for line in lines if line.startswith("error: ")]
  return (errors or lines or ["(empty log)"])[-1][:300]


def wall_time(sweep_dir: str, name: str, last: bool = False) -> float | None:
  """Seconds the sweep ran `name` for, over all its attempts (or the `last` one)."""
  path = epath.Path(sweep_dir) / "sweep.jsonl"
  attempts = [a for a in plots.read_metrics(path) if a.get("name") == name] if path.exists() else []
  if not attempts:
    return None
  return attempts[-1]["wall_s"] if last else sum(a["wall_s"] for a in attempts)


def format_seconds(seconds: float | None) -> str:
  if seconds is None:
    return ""
  if seconds < 60:
    return f"{seconds:.1f} s"
  minutes, secs = divmod(round(seconds), 60)
  return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def final_records(run_dir: str) -> dict[str, dict[str, Any]]:
  """split -> the last record of each eval split (not "train") in the run's metrics.jsonl."""
  path = epath.Path(run_dir) / "metrics.jsonl"
  last = {}
  for record in plots.read_metrics(path) if path.exists() else []:
    if record.get("split", "train") != "train":
      last[record["split"]] = record
  return last


def final_step(run_dir: str) -> int | None:
  path = epath.Path(run_dir) / "metrics.jsonl"
  steps = [r["step"] for r in plots.read_metrics(path) if "step" in r] if path.exists() else []
  return max(steps, default=None)


def _number(value: Any) -> str:
  return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                            for row in rows])


def summarise(outcomes: Sequence[Outcome], sweep_dir: str, title: str) -> str:
  """`results.md`: one row per run (status, overrides, final step, wall time, the last
  eval record's main metrics per split), then per-length accuracy tables, if any."""
  finals = {o.run.name: final_records(os.path.join(sweep_dir, o.run.name)) for o in outcomes}
  splits = sorted({split for records in finals.values() for split in records})
  columns = [(split, metric) for split in splits for metric in TABLE_METRICS
             if any(metric in records.get(split, {}) for records in finals.values())]
  rows = []
  for o in outcomes:
    step, records = final_step(os.path.join(sweep_dir, o.run.name)), finals[o.run.name]
    rows.append([o.run.name, o.status, f"`{o.run.describe()}`" if o.run.overrides else "",
                 "" if step is None else f"{step:,}",
                 format_seconds(wall_time(sweep_dir, o.run.name))] +
                [_number(records.get(split, {}).get(metric)) for split, metric in columns])
  text = [f"# {title}", "",
          _table(["run", "status", "overrides", "step", "wall time"] +
                 [f"{split} {metric}" for split, metric in columns], rows)]
  for split in splits:
    by_length = sorted({(m.group(1), int(m.group(2))) for records in finals.values()
                        for key in records.get(split, {}) if (m := LENGTH_KEY.match(key))})
    for metric in sorted({metric for metric, _ in by_length}):
      lengths = [n for m, n in by_length if m == metric]
      rows = [[name] + [_number(records.get(split, {}).get(f"{metric}_len_{n:02d}"))
                        for n in lengths] for name, records in finals.items()]
      text += ["", f"`{split}` {metric} by length:", "",
               _table(["run"] + [str(n) for n in lengths], rows)]
  return "\n".join(text) + "\n"


def plot(outcomes: Sequence[Outcome], sweep_dir: str) -> list[str]:
  """The runs' curves overlaid (`plots.plot_workdirs`) in SWEEPDIR/plots/; runs without
  records are left out."""
  workdirs = [os.path.join(sweep_dir, o.run.name) for o in outcomes]
  workdirs = [w for w in workdirs if final_step(w) is not None]
  return plots.plot_workdirs(workdirs, os.path.join(sweep_dir, "plots")) if workdirs else []
