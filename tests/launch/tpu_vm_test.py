"""launch/tpu_vm.py: the gcloud commands it prints (--dry-run) and runs.

No TPU and no gcloud here: --dry-run output is parsed back the way a shell
would, and a stand-in `gcloud` on PATH records what the tool really runs.
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOL = str(ROOT / "launch" / "tpu_vm.py")
VM = ["--name=pod1", "--zone=us-west4-a", "--project=my-proj"]
# Overrides a shell or a naive join would break: spaces, commas, parentheses, quotes.
OVERRIDES = ['--config.mesh.shape=(2,2,1)', "--config.data.tfds_data_dir=gs://bkt/my tfds",
             "--config.mesh.param_rules=(('attn/(query|key)/w$', ('fsdp', None)),)",
             "--config.train.num_steps=100"]


@pytest.fixture(scope="module", autouse=True)
def guard(tmp_path_factory):
  """A `gcloud` first on PATH that fails loudly: no test reaches a real one."""
  bin_dir = tmp_path_factory.mktemp("guard")
  (bin_dir / "gcloud").write_text("#!/bin/sh\necho 'unexpected gcloud call' >&2\nexit 3\n")
  (bin_dir / "gcloud").chmod(0o755)
  GUARDED_PATH[0] = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"


GUARDED_PATH = [""]


def tool(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                        timeout=120, env=env or dict(os.environ, PATH=GUARDED_PATH[0]))


def printed(action: str, *args: str) -> list[list[str]]:
  result = tool(action, "--dry-run", *args)
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def remote_command(argv: list[str]) -> list[str]:
  """The words of the shell command an `ssh --command=...` runs on the workers."""
  (command,) = [a[len("--command="):] for a in argv if a.startswith("--command=")]
  return shlex.split(command)


def test_start_runs_train_py_on_every_worker_with_overrides_intact():
  (ssh,) = printed("start", *VM, "--config=configs/wmt_spa.py:big",
                   "--workdir=gs://bkt/wmt big", "--", *OVERRIDES)
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"]
  assert {"--worker=all", "--zone=us-west4-a", "--project=my-proj"} <= set(ssh)
  words = remote_command(ssh)
  start = words.index("nohup") + 1
  end = words.index(">")
  assert words[start:end] == [".venv/bin/python", "launch/train.py", "--distributed",
                              "--config=configs/wmt_spa.py:big", "--workdir=gs://bkt/wmt big",
                              *OVERRIDES]
  assert words[:3] == ["cd", "~/transformer_research", "&&"]
  assert words[end:] == [">", "~/train.log", "2>&1", "<", "/dev/null", "&", "echo", "$!", ">",
                         "~/train.pid"]


def test_every_action_prints_its_gcloud_commands():
  (create,) = printed("create", *VM, "--accelerator_type=v5litepod-16", "--spot")
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod1"]
  assert {"--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--spot"} <= set(create)
  clean, copy, setup = printed("install", *VM)
  assert remote_command(clean)[:3] == ["rm", "-rf", "~/transformer_research"]
  assert copy[4:7] == ["scp", "--recurse", "--worker=all"]
  assert copy[-3:] == ["pod1:~/transformer_research/", "--zone=us-west4-a", "--project=my-proj"]
  copied = {os.path.basename(p) for p in copy[7:-3]}
  assert {"launch", "transformer_research", "setup.py"} <= copied and ".git" not in copied
  assert "pip install -q -e '.[tpu]'" in setup[-3] and "--worker=all" in setup
  (tail,) = printed("tail", *VM)
  assert "--worker=0" in tail and remote_command(tail) == ["tail", "-n", "200", "-F", "~/train.log"]
  (stop,) = printed("stop", *VM)
  assert "--worker=all" in stop and remote_command(stop) == ["kill", "-TERM", "$(cat", "~/train.pid)"]
  (delete,) = printed("delete", *VM)
  assert delete[4:7] == ["delete", "pod1", "--quiet"] and "--zone=us-west4-a" in delete


def test_runs_the_printed_commands_through_gcloud(tmp_path):
  """A stand-in gcloud records each argv: the tool runs exactly what --dry-run printed."""
  log = tmp_path / "calls.txt"
  fake = tmp_path / "bin" / "gcloud"
  fake.parent.mkdir()
  fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                  f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
  fake.chmod(0o755)
  env = dict(os.environ, PATH=f"{fake.parent}{os.pathsep}{GUARDED_PATH[0]}")
  args = ["start", *VM, "--config=configs/reverse.py:tiny", "--workdir=gs://bkt/r", "--",
          *OVERRIDES]
  result = tool(*args, env=env)
  assert result.returncode == 0, result.stderr
  ran = [["gcloud", *json.loads(line)] for line in log.read_text().splitlines()]
  assert ran == printed(*args)


def test_without_gcloud_a_clear_error_and_dry_run_still_works(tmp_path):
  env = dict(os.environ, PATH=str(tmp_path))  # No gcloud anywhere on PATH.
  result = tool("stop", *VM, env=env)
  assert result.returncode == 1
  assert "error: gcloud is not on PATH" in result.stderr and "--dry-run" in result.stderr
  assert "Traceback" not in result.stderr
  assert tool("stop", "--dry-run", *VM, env=env).returncode == 0


@pytest.mark.parametrize("args,message", [
    (["start", *VM], "start needs --config"),
    (["launch", *VM], "expected an action, one of"),
    (["stop", "--zone=z"], "--name and --zone are required"),
    (["stop", *VM, "--", "--config.x=1"], "unexpected arguments"),
    # Checked here, as the workers' train.py checks them: started as it was,
    # the pod stopped at once, seen only in the workers' logs.
    (["start", *VM, "--config=configs/wmt_spa.py:big", "--workdir=gs://b/w", "--",
      "--config.train.batchsize=3"],
     "configs/wmt_spa.py:big: KeyError: 'batchsize' Did you mean \"batch_size\""),
    (["start", *VM, "--config=configs/wmt_spa.py:big", "--workdir=gs://b/w", "--",
      "--config.train.learning_rate=-1"],
     "error: start: the workers' launch/train.py would stop: config.train.learning_rate=-1.0: "
     "expected > 0"),
    (["start", *VM, "--config=configs/nonexist.py", "--workdir=gs://b/w"],
     "No such file or directory"),
])
def test_bad_input_is_one_line(args, message):
  result = tool(args[0], "--dry-run", *args[1:])
  assert result.returncode == 1 and message in result.stderr, result.stderr
  assert "Traceback" not in result.stderr
