"""launch/compile_check.py: a config compiled for a TPU topology on this CPU machine.

With libtpu (the `[tpu]` extra, part of the CI install) the train and decode
steps compile for real TPU v5e chips; `--cpu` compiles the same programs for
fake CPU devices and says the figures are estimates.
"""

import pathlib
import re
import subprocess
import sys

import pytest

import tiny_setup
from transformer_research import aot

ROOT = pathlib.Path(__file__).resolve().parents[2]
REVERSE = f"--config={ROOT / 'configs' / 'reverse.py'}:tiny,smoke"
needs_libtpu = pytest.mark.skipif(not aot.libtpu_available(),
                                  reason="libtpu (pip install -e '.[tpu]') is not installed")


def check(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / "launch" / "compile_check.py"), *args],
                        capture_output=True, text=True, timeout=600,
                        env=tiny_setup.subprocess_env())


def _gib(text: str, what: str) -> float:
  value, unit = re.search(rf"{what} ([\d.]+) (GiB|MiB)", text).groups()
  return float(value) * (1 if unit == "GiB" else 1 / 1024)


@needs_libtpu
def test_train_and_decode_steps_compile_for_a_tpu_topology():
  result = check(REVERSE, "--topology=v5e:2x2", "--config.mesh.shape=(2,2,1)")
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "compute bfloat16" in out  # "auto" on a TPU target.
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 1} on v5e:2x2 (4 x TPU v5 lite)" in out
  train = next(line for line in out.splitlines() if "train step, batch 16" in line)
  decode = next(line for line in out.splitlines() if "decode, batch 16, beam 4" in line)
  assert train.endswith("of 16.00 GiB HBM: fits") and decode.endswith("HBM: fits")
  assert 0 < _gib(train, "params") and 0 < _gib(decode, "temporaries")
  # A step this small may keep all its scratch in the chip's on-chip memory
  # (0 MiB of HBM temporaries); the peak still adds up what is in HBM.
  assert _gib(train, "peak") == pytest.approx(
      _gib(train, "arguments") + _gib(train, "outputs") + _gib(train, "temporaries"), abs=1e-3)
  assert float(re.search(r"compiled in ([\d.]+) s", train).group(1)) > 0
  assert "CPU-layout estimates" not in out


@needs_libtpu
def test_a_layout_that_does_not_fit_exits_1():
  """About 2.5B parameters with Adam (12 bytes of state per parameter) on one 16 GiB v5e chip:
  the TPU compiler refuses it, and the tool says so."""
  result = check(REVERSE, "--topology=v5e:1x1", "--config.model.d_model=4096",
                 "--config.model.d_ff=65536", "--config.model.num_heads=32")
  assert result.returncode == 1, result.stderr[-3000:]
  train = next(line for line in result.stdout.splitlines() if "train step" in line)
  assert train.endswith("DOES NOT FIT") and _gib(train, "optimizer state") > 8


def test_cpu_fallback_says_the_figures_are_estimates():
  result = check(REVERSE, "--topology=v5e:2x2", "--cpu")
  assert result.returncode == 0, result.stderr[-3000:]
  assert ("note: --cpu given: compiling for 4 CPU devices; the figures are CPU-layout "
          "estimates") in result.stdout
  assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 1} on v5e:2x2 (4 x cpu)" in result.stdout
  assert "compute float32" in result.stdout


def test_the_masked_lm_compiles_with_its_predicted_positions():
  """Its batch holds [B, P] mlm_positions / targets beside the packed inputs (data/masking.py)."""
  result = check(f"--config={ROOT / 'configs' / 'imdb_mlm.py'}:tiny,smoke", "--topology=v5e:2x2",
                 "--cpu")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "mlm_imdb tiny: mlm" in result.stdout and "train step, batch" in result.stdout
  assert "decode" not in result.stdout  # Nothing to decode.


@pytest.mark.parametrize("args,message", [
    (["--topology=v9:2x2"], "unknown TPU generation 'v9'; expected one of ['v4', 'v5e', 'v5p', "
                            "'v6e']"),
    (["--topology=v5e"], "expected a chip grid after the colon, e.g. 'v5e:2x2'"),
    (["--topology=v5e:2x2", "--config.mesh.shape=(3,1,1)", "--cpu"],
     "config.mesh.shape=(3, 1, 1) does not divide the 4 devices"),
    (["--topology=v5e:2x2", "--config.mesh.shape=(2,1,1)", "--cpu"],
     "config.mesh.shape=(2, 1, 1) uses 2 devices, but 4 are available"),
    # A batch that does not split over the chips was XLA's multi-line sharding error.
    (["--topology=v5e:2x2", "--config.train.batch_size=6", "--cpu"],
     "config.train.batch_size=6 is not divisible by the 4 batch shards"),
    (["--topology=v5e:2x2", "--decode_batch=6", "--cpu"],
     "--decode_batch=6 is not divisible by the 4 batch shards"),
    # Found after the first compile (minutes on a big model), as Python's
    # "malformed node or string", or naming config.mesh.shape.
    (["--topology=v5e:2x2", "--compare_mesh=oops", "--cpu"],
     "error: --compare_mesh='oops': expected a mesh shape (data, fsdp, tensor) such as (16,1,1)"),
    (["--topology=v5e:2x2", "--compare_mesh=(3,1,1)", "--cpu"],
     "error: --compare_mesh='(3,1,1)': config.mesh.shape=(3, 1, 1) does not divide the 4 devices"),
])
def test_bad_input_is_one_line(args, message):
  result = check(REVERSE, *args)
  assert result.returncode == 1 and message in result.stderr, result.stderr[-2000:]
  assert result.stderr.startswith("error: ")
  assert "Traceback" not in result.stderr
