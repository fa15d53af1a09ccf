"""Start-up time of a run, first start and restart: `python bench/startup.py --manual_dir=DIR`.

Runs `launch/train.py` (the command users type) twice on one fresh run
directory: a first start, stopped with SIGTERM (checkpoint, exit 0) once its
first step is done, then a restart that resumes that checkpoint, stopped the
same way. For each it prints the seconds from launching the process to the
train record of its first step appearing in metrics.jsonl (so interpreter
start, imports, data, tokenizer, cache, restore, compile and the step itself
all count). The restart is what
`WORKDIR/tokenized/` (data/cache.py) and `WORKDIR/compilation_cache/`
(runtime.py) are for; the target is <= 15 s to step 1 on `wmt_spa`.
"""

import json
import os
import pathlib
import signal
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


def _start(workdir: str) -> tuple[float, int]:
  """(seconds from launch to the train record of this process's first step, its step)."""
  command = [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={_CONFIG.value}",
             f"--workdir={workdir}", "--config.train.num_steps=1000000",
             "--config.train.log_every_steps=1", "--config.eval.every_steps=1000000",
             "--config.checkpoint.every_steps=1000000",
             f"--config.data.tfds_data_dir={os.path.join(workdir, 'tfds')}"]
  if _MANUAL_DIR.value:
    command.append(f"--config.data.manual_dir={_MANUAL_DIR.value}")
  metrics = os.path.join(workdir, "metrics.jsonl")
  seen = 0
  if os.path.exists(metrics):
    with open(metrics) as f:
      seen = len(f.readlines())
  start = time.perf_counter()
  proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  first = None
  while proc.poll() is None and first is None:
    if os.path.exists(metrics):
      with open(metrics) as f:
        new = [json.loads(line) for line in f.readlines()[seen:] if line.endswith("\n")]
      if new:
        first = (time.perf_counter() - start, new[0]["step"])
        proc.send_signal(signal.SIGTERM)  # Checkpoints and exits 0.
    time.sleep(0.05)
  _, stderr = proc.communicate()
  if proc.returncode or first is None:
    raise SystemExit(f"error: launch/train.py exited {proc.returncode}:\n{stderr[-3000:]}")
  return first


def main(argv: list[str]) -> None:
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    workdir = _WORKDIR.value or os.path.join(tmp, "run")
    print(f"config: {_CONFIG.value}; workdir: {workdir}; {os.cpu_count()} cpus, "
          f"load average {os.getloadavg()[0]:.1f}")
    for label in ("first start", "restart"):
      seconds, step = _start(workdir)
      print(f"{label}: {seconds:.1f} s from launch to its first step (step {step}) done")


if __name__ == "__main__":
  app.run(main)
