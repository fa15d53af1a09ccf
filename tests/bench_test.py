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


def test_train_step_bench_prints_mfu_and_the_matmul_table():
  """bench/train_step.py on a tiny model: MFU against the measured CPU peak, and
  --matmul_table's rows (every dot of the step) summing to part of the step."""
  out = subprocess.run(
      [sys.executable, "bench/train_step.py", "--config=configs/reverse.py:tiny,smoke",
       "--steps=2", "--peak_size=256", "--matmul_table"], cwd=ROOT, capture_output=True,
      text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert re.search(r"^MFU: [\d.]+%$", out.stdout, re.M), out.stdout
  assert "(measured, float32 256^3 matmul on cpu)" in out.stdout
  rows = [line.split() for line in out.stdout.split("each jitted alone")[1].splitlines()
          if re.match(r" +\d+  \(", line)]
  assert len(rows) >= 4 and all(int(row[0]) > 0 for row in rows), out.stdout
  total = re.search(r"^matmuls: [\d,]+ ms of the [\d,]+ ms step \((\d+)%\), [\d.]+ TFLOP/s: "
                    r"with nothing else in the step, MFU would be [\d.]+%$", out.stdout, re.M)
  assert total and 0 < int(total.group(1)), out.stdout
