"""Start-up time of a run, first start and restart: `python bench/startup.py --manual_dir=DIR`.

Runs `launch/train.py` (the command users type) twice on one fresh run
directory: a first start to step 1, then a restart that resumes it and runs
one more step. For each it prints the seconds from launching the process to
the train record of its first step appearing in metrics.jsonl (so interpreter
start, imports, data, tokenizer, cache, restore, compile and the step itself
all count), and the run's own wall time. The restart is what
`WORKDIR/tokenized/` (data/cache.py) and `WORKDIR/compilation_cache/`
(runtime.py) are for; the target is <= 15 s to step 1 on `wmt_spa`.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_CONFIG = flags.DEFINE_string("config", "configs/wmt_spa.py", "Config file (launch/train.py).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", "", "Dir with spa-eng.zip (data.manual_dir).")
_WORKDIR = flags.DEFINE_string("workdir", "", "Run directory ('' = a temporary one, removed).")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _start(workdir: str, num_steps: int) -> tuple[float, float]:
  """(seconds to the train record of step num_steps, seconds to exit)."""
  command = [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={_CONFIG.value}",
             f"--workdir={workdir}", f"--config.train.num_steps={num_steps}",
             "--config.train.log_every_steps=1", "--config.eval.every_steps=100000",
             "--config.eval.decode_examples=8", "--config.checkpoint.every_steps=100000",
             f"--config.data.tfds_data_dir={os.path.join(workdir, 'tfds')}"]
  if _MANUAL_DIR.value:
    command.append(f"--config.data.manual_dir={_MANUAL_DIR.value}")
  metrics = os.path.join(workdir, "metrics.jsonl")
  start = time.perf_counter()
  proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  first = None
  while proc.poll() is None and first is None:
    if os.path.exists(metrics):
      with open(metrics) as f:
        if any(json.loads(line)["step"] == num_steps for line in f if line.endswith("\n")):
          first = time.perf_counter() - start
    time.sleep(0.05)
  _, stderr = proc.communicate()
  if proc.returncode:
    raise SystemExit(f"error: launch/train.py exited {proc.returncode}:\n{stderr[-3000:]}")
  return first if first is not None else float("nan"), time.perf_counter() - start


def main(argv: list[str]) -> None:
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    workdir = _WORKDIR.value or os.path.join(tmp, "run")
    print(f"config: {_CONFIG.value}; workdir: {workdir}; {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}")
    for label, steps in (("first start", 1), ("restart", 2)):
      to_step, total = _start(workdir, steps)
      print(f"{label}: {to_step:.1f} s from launch to step {steps} done "
            f"(process exited after {total:.1f} s, incl. final checkpoint and eval)")


if __name__ == "__main__":
  app.run(main)
