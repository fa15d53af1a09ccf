"""Trains one config over several sets of overrides, one run after another, and compares them.

    python launch/sweep.py --config=configs/difference.py --workdir=/tmp/sw \\
        --sweep='model.positions=learned,sinusoidal,rope' \\
        [--sweep='train.learning_rate=1e-3,3e-3'] [--config.train.num_steps=500]  # shared
    python launch/sweep.py --config=configs/difference.py --workdir=/tmp/build_up \\
        --run='attn: model.d_ff=0 model.positions=none' --run='attn+ff: model.positions=none'
    python launch/sweep.py ... --print      # only print the launch/train.py commands

`--sweep='FIELD=V1,V2,...'` (repeatable: the cartesian product, the first flag
outermost; commas inside brackets or quotes stay in a value) names its runs
from the values (`positions-rope_learning_rate-0.003`). `--run='NAME: k=v k=v'`
(repeatable) is one named run, its overrides separated by spaces, commas kept;
with `--sweep` too, each named run is crossed with the grid (`NAME_positions-rope`).
Shared overrides are written `--config.FIELD=VALUE`, as for train.py.

Each run is `launch/train.py --config=... --workdir=WORKDIR/<name>`, the
shared overrides, then the run's; its output goes to WORKDIR/<name>/train.log
and one line per run to the console. Every command is parsed before the first
run starts, and its config checked as train.py checks it before writing anything,
so a misspelt field or a value train.py would refuse stops the sweep before
anything trains.
Rerunning the same command skips finished runs and resumes the others. A
failed run is reported (name, exit status, its error line, log) and the sweep
goes on. At the end WORKDIR/results.md (printed too) has one row per run:
status, overrides, final step, wall time (summed over the sweep's attempts),
and the last eval record's loss / perplexity / accuracy / sequence accuracy /
BLEU / chrF per split, then per-length tables; WORKDIR/plots/ the overlaid
curves. Exit status 1 when any run failed (after the table), 2 for bad flags.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from transformer_research import cli
from transformer_research import rundir
from transformer_research import storage
from transformer_research import sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<task>.py"
                                          "[:variant]) of every run.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (local): one sub-directory "
                               "per run, results.md, plots/.")
_SWEEP = flags.DEFINE_multi_string("sweep", [], "FIELD=VALUE,VALUE,...: one axis of the grid.")
_RUN = flags.DEFINE_multi_string("run", [], "'NAME: key=value key=value ...': one named run.")
_PRINT = flags.DEFINE_bool("print", False, "Only print each run's launch/train.py command, one "
                           "a line; run nothing, write nothing.")


def _train_script() -> str:
  """launch/train.py, relative to the current directory when it is below it (shorter to read)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train.py")
  relative = os.path.relpath(path)
  return path if relative.startswith("..") else relative


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]} (overrides: --config.FIELD=VALUE)")
  workdir = _WORKDIR.value
  if not workdir:
    raise ValueError("--workdir='': expected a sweep directory")
  if storage.is_remote(workdir):
    raise ValueError(f"--workdir={workdir}: a sweep directory must be local (each run's log is "
                     "written there as it runs); the runs of --print may use a bucket")
  storage.check_workdir(workdir)
  runs = sweep.plan(_SWEEP.value, _RUN.value)
  config = config_flags.get_config_filename(flags.FLAGS["config"])
  shared = [arg for arg in sys.argv[1:] if sweep.OVERRIDE.match(arg)]
  commands = [sweep.train_command(_train_script(), config, workdir, shared, run) for run in runs]
  parsed = [sweep.parse_config(run, command) for run, command in zip(runs, commands)]
  sweep.check_distinct(runs, _SWEEP.value, shared, parsed)
  if _PRINT.value:
    for command in commands:
      print(sweep.printable(command))
    return
  # One sweep per directory, as one run per run directory: a second one would
  # find each run the first is training in use and report it failed.
  with rundir.RunLock(workdir):
    outcomes = sweep.execute(runs, commands, parsed, workdir)
    results = sweep.summarise(outcomes, workdir, f"Sweep of {config} in {workdir}")
    storage.replace_text(os.path.join(workdir, "results.md"), results)
    print(results)
    for path in sweep.plot(outcomes, workdir):
      print(path)
  print(os.path.join(workdir, "results.md"), flush=True)
  failed = [o for o in outcomes if o.returncode != 0]
  if failed:
    raise ChildProcessError(f"{len(failed)} of {len(runs)} runs failed: " + "; ".join(
        f"{o.run.name} (exit {o.returncode}, log {o.log})" for o in failed))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
