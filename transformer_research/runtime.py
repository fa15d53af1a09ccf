"""Process settings the entry points apply before JAX starts its backend.

`keep_freed_memory()`: XLA:CPU allocates each execution's temporary buffer
(hundreds of MB to GBs for a train step) with `posix_memalign` from the
thread that runs it. glibc serves an allocation that large from a fresh
`mmap` in a thread's arena and unmaps it again on free, so every step faults
in and zeroes all of that memory anew: on the `wmt_spa` small step that was
a fifth of the CPU time, all of it kernel time (`sys`). Serving every thread
from the main arena with `mmap` off and trimming off (mallopt(3): a trim
threshold of -1) keeps freed memory in the process, where the next step
reuses it. The price is a resident size that does not shrink after a peak.

This must run before the first JAX computation: the backend's threads pick
their arena on their first allocation. `launch/train.py`, `evaluate.py`,
`translate.py` and the `bench/` scripts call it first thing (`bench/startup.py`
through train.py); a notebook can too.

`cache_compilations(workdir)`: JAX's persistent compilation cache in
`WORKDIR/compilation_cache`, so a restarted run loads its compiled init and
train step instead of compiling them again (on the 2-core CPU the `wmt_spa`
small step compiles in 10-25 s, most of a restart), and `evaluate.py` loads
the decoder the run's training evals compiled. `launch/train.py`,
`evaluate.py` and `translate.py` call it; a read-only run directory costs a
warning, not an error (JAX treats a cache it cannot write as a miss).
`JAX_COMPILATION_CACHE_DIR` names a cache of the user's own instead (one
shared by every run of a machine, as the test suite sets it up).

`remember_ctrl_c()`: Ctrl-C still raises KeyboardInterrupt, and is also
remembered (`ctrl_c_seen()`). A KeyboardInterrupt raised while a C extension
calls back into Python can be swallowed there and come out as another error
(SentencePiece training, whose text iterator opens a TFDS source through
dm-tree, gave `AttributeError: 'str' object has no attribute 'keys'`); the
entry point (`cli`) then still reports the Ctrl-C, not that error.

`out_of_memory(error)`: XLA's out-of-memory message in an error (a
`JaxRuntimeError` whose text has `RESOURCE_EXHAUSTED`), which a user fixes
with a smaller batch, shorter sequences or a smaller model: `cli` reports it
as one line, `aot` as a layout that does not fit.
"""

import ctypes
import ctypes.util
import logging
import os
import signal

from etils import epath
import jax

# mallopt(3) parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
  """Makes glibc malloc keep freed memory for reuse; True if it could.

  A no-op (False, with a debug log line) where the C library is not glibc.
  """
  name = ctypes.util.find_library("c")
  try:
    mallopt = ctypes.CDLL(name).mallopt
  except (OSError, AttributeError, TypeError):
    logging.debug("runtime: no mallopt in the C library %r; allocator left alone", name)
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  ok = [mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, -1)]
  return all(ok)


def cache_compilations(workdir: str) -> None:
  """Stores compiled executables (taking over a second to compile) in
  `workdir`/compilation_cache, or where `JAX_COMPILATION_CACHE_DIR` says when
  it is set."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    logging.info("compilation cache: %s (JAX_COMPILATION_CACHE_DIR)",
                 os.environ["JAX_COMPILATION_CACHE_DIR"])
    return
  jax.config.update("jax_compilation_cache_dir", str(epath.Path(workdir) / "compilation_cache"))
  if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


_ctrl_c = {"seen": False}


def _remember_then_interrupt(signum, frame) -> None:
  _ctrl_c["seen"] = True
  signal.default_int_handler(signum, frame)


def remember_ctrl_c() -> None:
  """Installs the handler of the module docstring where Python's own handles
  SIGINT (not where SIGINT is ignored, as in a background job)."""
  if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _remember_then_interrupt)


def ctrl_c_raises() -> bool:
  """Whether Ctrl-C raises KeyboardInterrupt here: Python's handler or
  `remember_ctrl_c`'s (an interactive run, not an ignored or hosted SIGINT)."""
  return signal.getsignal(signal.SIGINT) in (signal.default_int_handler,
                                             _remember_then_interrupt)


def ctrl_c_seen() -> bool:
  """Whether a Ctrl-C reached `remember_ctrl_c`'s handler."""
  return _ctrl_c["seen"]


def out_of_memory(error: BaseException) -> str | None:
  """The out-of-memory message of `error` (its RESOURCE_EXHAUSTED line, at most
  300 characters), None when it is another error."""
  lines = [line for line in str(error).splitlines() if "RESOURCE_EXHAUSTED" in line]
  return lines[0].split("RESOURCE_EXHAUSTED:", 1)[-1].strip()[:300] if lines else None
