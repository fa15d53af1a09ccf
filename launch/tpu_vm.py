"""Runs training on a Cloud TPU VM or pod slice through `gcloud`, one step per action.

    python launch/tpu_vm.py create  --name=NAME --zone=ZONE --accelerator_type=v5litepod-16
    python launch/tpu_vm.py install --name=NAME --zone=ZONE      # this checkout -> every worker
    python launch/tpu_vm.py start   --name=NAME --zone=ZONE --config=configs/wmt_spa.py:big \\
        --workdir=gs://BUCKET/wmt_big -- --config.mesh.shape="(1,16,1)"
    python launch/tpu_vm.py tail    --name=NAME --zone=ZONE      # follow worker 0's log
    python launch/tpu_vm.py stop    --name=NAME --zone=ZONE      # SIGTERM: checkpoint, exit 0
    python launch/tpu_vm.py delete  --name=NAME --zone=ZONE

`install` copies this checkout to `~/transformer_research` on every worker
and installs it with the `[tpu]` extra into a venv there. `start` runs
`launch/train.py --distributed` on all workers at once (JAX finds the other
workers itself) under nohup, each writing its own `~/train.log` and
`~/train.pid`; arguments after `--` are passed to train.py, each quoted for
the remote shell, so overrides with spaces, commas or parentheses arrive
intact. The config and overrides are first checked here as train.py checks
them before it writes anything: a misspelt field stops `start` before any
worker starts. Rerunning `start` resumes from the workdir's latest checkpoint.
`--dry-run` prints every gcloud command (one per line, ready to paste)
instead of running it, and needs no gcloud.
"""

import os
import shlex
import shutil
import subprocess
import sys

from absl import app
from absl import flags

from transformer_research import cli
from transformer_research import sweep

ACTIONS = ("create", "install", "start", "tail", "stop", "delete")
REMOTE_DIR = "~/transformer_research"  # Where `install` puts the checkout on each worker.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_NAME = flags.DEFINE_string("name", None, "TPU VM name.")
_ZONE = flags.DEFINE_string("zone", None, "Zone, e.g. us-west4-a.")
_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project; default gcloud's.")
_ACCELERATOR = flags.DEFINE_string("accelerator_type", "v5litepod-16", "create: TPU type.")
_VERSION = flags.DEFINE_string("runtime_version", "v2-alpha-tpuv5-lite", "create: TPU VM image.")
_SPOT = flags.DEFINE_bool("spot", False, "create: a Spot (preemptible) TPU VM.")
_CONFIG = flags.DEFINE_string("config", None, "start: --config for launch/train.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "start: --workdir (a gs:// bucket path: every "
                               "worker writes checkpoints there).")
_DRY_RUN = flags.DEFINE_bool("dry-run", False, "Print the gcloud commands instead of running them.")


def _tpu(*args: str) -> list[str]:
  """`gcloud compute tpus tpu-vm ARGS --zone=Z [--project=P]`."""
  command = ["gcloud", "compute", "tpus", "tpu-vm", *args, f"--zone={_ZONE.value}"]
  return command + ([f"--project={_PROJECT.value}"] if _PROJECT.value else [])


def _ssh(worker: str, remote: str) -> list[str]:
  """One shell command line run on `worker` ("all" or an index) of the VM."""
  return _tpu("ssh", _NAME.value, f"--worker={worker}", f"--command={remote}")


def commands(action: str, train_args: list[str]) -> list[list[str]]:
  """The gcloud argv lists that carry out `action`, in order."""
  if action == "create":
    return [_tpu("create", _NAME.value, f"--accelerator-type={_ACCELERATOR.value}",
                 f"--version={_VERSION.value}", *(["--spot"] if _SPOT.value else []))]
  if action == "install":
    setup = (f"cd {REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install -q --upgrade "
             "pip && .venv/bin/pip install -q -e '.[tpu]'")
    return [_ssh("all", f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR}"),
            _tpu("scp", "--recurse", "--worker=all", *_checkout_files(), f"{_NAME.value}:{REMOTE_DIR}/"),
            _ssh("all", setup)]
  if action == "start":
    if not _CONFIG.value or not _WORKDIR.value:
      raise ValueError("start needs --config=configs/<task>.py[:variant] and --workdir=gs://...")
    _check_config(train_args)
    train = shlex.join([".venv/bin/python", "launch/train.py", "--distributed",
                        f"--config={_CONFIG.value}", f"--workdir={_WORKDIR.value}", *train_args])
    return [_ssh("all", f"cd {REMOTE_DIR} && nohup {train} > ~/train.log 2>&1 < /dev/null & "
                        "echo $! > ~/train.pid")]
  if action == "tail":
    return [_ssh("0", "tail -n 200 -F ~/train.log")]
  if action == "stop":  # launch/train.py checkpoints on SIGTERM and exits 0.
    return [_ssh("all", "kill -TERM $(cat ~/train.pid)")]
  if action == "delete":
    return [_tpu("delete", _NAME.value, "--quiet")]
  raise ValueError(f"action {action!r}: expected one of {list(ACTIONS)}")


def _check_config(train_args: list[str]) -> None:
  """Refuses, here, a config train.py would refuse on the workers: a missing
  config file, a misspelt field, a value out of range. Started as it was, the
  pod's workers stopped at once, seen only in their logs (`tail`).

  The config path is the checkout's, as on the workers (`cd` there first).
  """
  path, _, variant = _CONFIG.value.partition(":")
  local = path if os.path.isabs(path) else os.path.join(REPO, path)
  config = local + (f":{variant}" if variant else "")
  try:
    sweep.train_command_config([sys.executable, "launch/train.py", f"--config={config}",
                                *train_args])
  except ValueError as e:
    raise ValueError(f"start: the workers' launch/train.py would stop: {e}") from None


def _checkout_files() -> list[str]:
  """Top-level entries of this checkout worth copying (no venv, caches, git)."""
  skip = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", "build", "dist"}
  return sorted(os.path.join(REPO, n) for n in os.listdir(REPO)
                if n not in skip and not n.endswith(".egg-info"))


def main(argv: list[str]) -> None:
  if len(argv) < 2 or argv[1] not in ACTIONS:
    raise SystemExit(f"error: expected an action, one of {list(ACTIONS)} (e.g. "
                     "`python launch/tpu_vm.py start --name=NAME --zone=ZONE ...`)")
  action, train_args = argv[1], argv[2:]
  if train_args and action != "start":
    raise SystemExit(f"error: unexpected arguments {train_args} for {action}")
  if not _NAME.value or not _ZONE.value:
    raise SystemExit("error: --name and --zone are required (the TPU VM and its zone)")
  todo = commands(action, train_args)
  if _DRY_RUN.value:
    for command in todo:
      print(shlex.join(command))
    return
  if shutil.which("gcloud") is None:
    raise SystemExit("error: gcloud is not on PATH: install the Google Cloud CLI "
                     "(https://cloud.google.com/sdk/docs/install) and run `gcloud auth login`, "
                     "or pass --dry-run to print the commands")
  for command in todo:
    print("+", shlex.join(command), flush=True)
    result = subprocess.run(command, check=False)
    if result.returncode:
      sys.exit(result.returncode)


if __name__ == "__main__":
  cli.run(main)
