"""The benchmark scripts run as the README runs them (tiny sizes, seconds)."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_decode_bench_prints_where_a_step_goes():
  """bench/decode.py's fixed, step and ops tables, on a tiny random model."""
  out = subprocess.run(
      [sys.executable, "bench/decode.py", "--config=configs/wmt_spa.py:tiny",
       "--tables=fixed,step,ops", "--max_len=4", "--batch_size=2", "--source_len=4",
       "--repeats=1"], cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  for method in ("cached greedy", "cached beam-4"):
    fixed, step = [line.split() for line in lines if re.match(rf"{method} +[\d.]+ ", line)]
    assert float(fixed[2]) > 0  # Seconds a batch.
    assert int(step[2]) == 2 * (4 if "beam" in method else 1)  # Rows: batch times beams.
    ops = next(line for line in lines if line.startswith(f"{method}: "))
    assert re.search(r"[\d.]+ ms a step: .*(output projection|log-softmax) [\d.]+", ops), ops
