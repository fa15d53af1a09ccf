"""What every `launch/` script does around its `main`: `cli.run(main)`.

A user's mistake (a bad flag or config value, a config file that does not
import, a missing file or optional package, a run directory this config may
not continue) is one line on stderr, `error: ...`, and exit status 2 for flags
and configs, 1 for everything else; `--verbose` (or
`TRANSFORMER_RESEARCH_TRACEBACK=1`) shows the traceback instead. Anything else
(a bug) keeps its traceback. Ctrl-C is one line too, and the process then ends
as killed by SIGINT (status 130 in a shell); train.py checkpoints first
(`train_loop`). An error a library raised after swallowing a Ctrl-C
(`runtime.remember_ctrl_c`) is reported as the Ctrl-C.

Library logs are kept readable: Orbax's per-save INFO lines are dropped, so
are its notices that a checkpoint directory was opened read-only, and so are
the tracebacks of its background writes (a failed write is reported once, as
the one-line error).
"""

import logging as std_logging
import os
import re
import signal
import sys
from typing import Callable, NoReturn

from absl import app
from absl import flags
from absl import logging

from transformer_research import rundir
from transformer_research import runtime

_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of an error instead of one "
                             "line (also: TRANSFORMER_RESEARCH_TRACEBACK=1).")

# What a user can cause and fix: reported as one line. ImportError: an optional
# package a feature needs (TensorFlow to prepare a stock TFDS dataset), named
# with the pip command.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, FloatingPointError,
               OSError, ImportError, rundir.RunDirectoryInUse)


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)` with one-line errors (see the module docstring)."""
  app.run(lambda argv: _main(main, argv), flags_parser=_parse_flags)


def user_error_line(error: BaseException) -> str | None:
  """The one line `run` reports `error` with when a user can fix it (USER_ERRORS,
  or the device out of memory); None for anything else, and with --verbose
  (the traceback is shown then)."""
  if _verbose():
    return None
  if isinstance(error, USER_ERRORS):
    return one_line(error)
  memory = runtime.out_of_memory(error)
  if memory is None:
    return None
  return (f"out of device memory ({memory}): use a smaller batch (train.batch_size, or more "
          "train.grad_accum_steps; eval.batch_size for evals and decoding), shorter "
          "data.max_input_len / max_target_len, a smaller model or model.remat")


def one_line(error: BaseException) -> str:
  """An exception's message on one line (config_flags' span several)."""
  return " ".join(str(error).split()) or type(error).__name__


def _verbose() -> bool:
  return os.environ.get("TRANSFORMER_RESEARCH_TRACEBACK", "") not in ("", "0") or (
      flags.FLAGS.is_parsed() and _VERBOSE.value)


def _fail(message: str, status: int) -> NoReturn:
  print(f"error: {message}", file=sys.stderr, flush=True)
  # Exit at once: after a failed checkpoint write, Orbax's background threads
  # would print their tracebacks again while the interpreter shuts down. The
  # run's files are closed and its lock released by now (context managers).
  os._exit(status)  # pylint: disable=protected-access


def _parse_flags(argv: list[str]) -> list[str]:
  """Parses flags and loads the config file, each failure one line (exit 2)."""
  try:
    remaining = flags.FLAGS(argv)
    for name in flags.FLAGS:
      # config_flags keeps a config file that failed to load as a value that
      # raises on first use (IOError from the load error): use it now.
      getattr(flags.FLAGS[name].value, "is_locked", None)
  except Exception as e:  # pylint: disable=broad-except  (flags, config files, config values)
    if "--verbose" in argv or _verbose():
      raise
    _fail(flag_error(e, argv), 2)
  return remaining


def flag_error(error: BaseException, argv: list[str]) -> str:
  """One line for a flag or config error, naming the config file when it is
  the file that failed (it cannot be imported, or its get_config raised)."""
  if isinstance(error, OSError) and error.__cause__ is not None:
    error = error.__cause__  # The config file's own load error.
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]  # ConfigDict wraps a KeyError in an AttributeError.
  text = str(error.args[0]) if len(error.args) == 1 and isinstance(error.args[0], str) else str(error)
  if "Traceback (most recent call last)" in text:  # config_flags pastes the file's traceback.
    head, _, tail = text.partition("Traceback (most recent call last)")
    text = head.rstrip(" :\n") + ": " + tail.strip().splitlines()[-1]
  if not isinstance(error, flags.Error):
    config = [a for a in argv if a.startswith("--config=")]
    where = config[0] if config else "a flag"
    text = f"{where}: {type(error).__name__}: {text}"
  return " ".join(text.split())


def _main(main: Callable[[list[str]], None], argv: list[str]) -> None:
  logging.get_absl_handler().addFilter(_quiet_orbax)
  sys.unraisablehook = _quiet_closed_loops
  runtime.remember_ctrl_c()
  try:
    main(argv)
  except app.UsageError:
    raise
  except USER_ERRORS as e:
    if _verbose():
      raise
    _fail(one_line(e), 1)
  except KeyboardInterrupt as e:
    if _verbose():
      raise
    _interrupted(one_line(e) if str(e) else "interrupted (Ctrl-C)")
  except Exception as e:  # pylint: disable=broad-except
    # A Ctrl-C that a C extension swallowed and turned into another error.
    if runtime.ctrl_c_seen() and not _verbose():
      _interrupted("interrupted (Ctrl-C)")
    line = user_error_line(e)  # The device out of memory, or None: a bug.
    if line is None:
      raise
    _fail(line, 1)


def _interrupted(message: str) -> NoReturn:
  """Ctrl-C: one line, then the exit of a process killed by SIGINT, so that a
  shell running a script of commands stops it (as after any Ctrl-C)."""
  print(message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  os.kill(os.getpid(), signal.SIGINT)
  os._exit(130)  # pylint: disable=protected-access  (not reached)


def _quiet_orbax(record) -> bool:
  """Drops Orbax's INFO lines, its warnings that a checkpoint directory is
  opened read-only (as evaluate.py, translate.py and export.py open it, on
  purpose: six lines before every translation), and the tracebacks of its
  background writes (its threads and their asyncio futures)."""
  if "/orbax/" not in record.pathname and record.name != "asyncio":
    return True
  record.exc_info = record.exc_text = None
  return (record.levelno >= std_logging.WARNING
          and not _READ_ONLY_NOTICE.match(record.getMessage()))


# Orbax's notices for a manager made with `read_only=True`.
_READ_ONLY_NOTICE = re.compile(r"CheckpointManagerOptions\.read_only=True, setting "
                               r"|Given directory is read only=")


def _quiet_closed_loops(unraisable) -> None:
  """After a failed checkpoint write, tensorstore completes the write's other
  futures on Orbax's already closed event loop; Python reports each as an
  "unraisable" RuntimeError. They say nothing the one-line error does not."""
  if not (isinstance(unraisable.exc_value, RuntimeError)
          and str(unraisable.exc_value) == "Event loop is closed"):
    sys.__unraisablehook__(unraisable)
