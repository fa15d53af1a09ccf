"""The README's commands name scripts, flags, configs and config fields that exist.

Its commands were run on the commit that ships them; this keeps a renamed
flag, config or field from leaving a command behind that no longer runs.
Each script's flags are what its own `--helpfull` lists (the flags of the
modules it imports included), so nothing here restates them.
"""

import concurrent.futures
import re
import subprocess
import sys

import pytest

from transformer_research import configs
from transformer_research.configs import base
import tiny_setup

ROOT = tiny_setup.ROOT


def _commands() -> list[tuple[str, str]]:
  """(script path, its arguments) of every `[launch/|bench/]NAME.py --flag ...` in the
  README, a command continued over lines (`\\`) joined, a `# comment` left out."""
  text = re.sub(r"\\\n\s*", " ", (ROOT / "README.md").read_text())
  out = []
  for match in re.finditer(r"(?<![\w/])(?:(?:launch|bench)/)?(\w+)\.py\b([^`|\n#]*)", text):
    name, arguments = match.groups()
    if re.search(r"(?<![\w-])--\w", arguments):
      scripts = [p for p in (f"launch/{name}.py", f"bench/{name}.py") if (ROOT / p).exists()]
      assert len(scripts) == 1, f"README: {name}.py {arguments.strip()!r}: no such script"
      out.append((scripts[0], arguments))
  return out


COMMANDS = _commands()


def _defined_flags(script: str) -> set[str]:
  listed = subprocess.run([sys.executable, script, "--helpfull"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=tiny_setup.subprocess_env())
  return set(re.findall(r"--(?:\[no\])?(\w+)", listed.stdout))


def test_the_readme_runs_every_script_it_shows():
  assert {script for script, _ in COMMANDS} >= {
      "launch/train.py", "launch/evaluate.py", "launch/translate.py", "launch/export.py",
      "launch/plot.py", "launch/sweep.py", "launch/compile_check.py", "bench/decode.py"}


def test_every_flag_of_a_readme_command_is_defined_by_its_script():
  scripts = sorted({script for script, _ in COMMANDS})
  with concurrent.futures.ThreadPoolExecutor(len(scripts)) as pool:
    defined = dict(zip(scripts, pool.map(_defined_flags, scripts)))
  unknown = {(script, flag) for script, arguments in COMMANDS
             for flag in re.findall(r"(?<![\w-])--(\w+)(?![\w.])", arguments)
             if flag not in defined[script]}
  assert not unknown, f"README commands with flags their scripts do not define: {unknown}"


@pytest.mark.parametrize("name", sorted({
    m for _, arguments in COMMANDS
    for m in re.findall(r"--config=configs/(\w+\.py(?::[\w,]+)?)", arguments)}))
def test_every_readme_config_loads(name):
  assert configs.load_config(name.replace(".py", ""))


def test_every_config_field_a_readme_command_sets_exists():
  fields = configs.flatten(base.get_config())
  overrides = {m for _, arguments in COMMANDS for m in re.findall(r"--config\.([\w.]+)=", arguments)}
  assert overrides, "no --config.FIELD=VALUE found in the README"
  unknown = overrides - fields.keys()
  assert not unknown, f"README commands set config fields that do not exist: {unknown}"
