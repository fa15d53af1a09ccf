"""Where run files live: a local directory or a bucket (`gs://bucket/run`).

Every file the project reads or writes goes through `etils.epath` (gcsfs
behind it for gs://; Orbax's tensorstore for checkpoint arrays), so one code
path serves both. What differs is checked here once, before a run writes
anything: a bucket must exist and be reachable with the machine's Google
Cloud credentials, so a typo or a missing login is one clear line instead of a
stack of HTTP retries after half a run directory was written.
"""

import os

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
  """True for object-store paths (gs://, s3://), which cannot append or rename atomically."""
  return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> epath.Path:
  """`path` made absolute (Orbax wants that); `gs://...` already is one
  (`epath`'s `absolute()` would prefix it with the current directory)."""
  path = epath.Path(path)
  return path if path.is_absolute() else path.absolute()


def check_workdir(workdir: str | os.PathLike) -> None:
  """Fails early when a run directory cannot be used.

  Local directories are created as needed later; only a file in their place is
  refused here.

  Raises:
    NotADirectoryError: a local --workdir is a file.
    ValueError: no Google Cloud credentials were found, or the bucket does not
      exist (or these credentials may not read it), naming the bucket.
  """
  path = os.fspath(workdir)
  if not path.startswith("gs://"):
    if os.path.exists(path) and not os.path.isdir(path):
      raise NotADirectoryError(f"--workdir={path} is a file: expected a run directory (a new "
                               "one, or one a run wrote)")
    return
  bucket = path[len("gs://"):].split("/", 1)[0]
  if not bucket:
    raise ValueError(f"--workdir={path!r}: expected gs://BUCKET/DIR")
  if not os.environ.get("STORAGE_EMULATOR_HOST"):  # An emulator needs no credentials.
    import google.auth  # pylint: disable=g-import-not-at-top  (only for buckets)
    from google.auth import exceptions  # pylint: disable=g-import-not-at-top
    try:
      google.auth.default()
    except exceptions.DefaultCredentialsError:
      raise ValueError(
          f"--workdir={path}: no Google Cloud credentials found; run `gcloud auth "
          "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS (a TPU or GCE VM "
          "uses its service account)") from None
  try:
    exists = epath.Path(f"gs://{bucket}").exists()
  except Exception as e:  # gcsfs raises HTTP and auth errors of several kinds.
    raise ValueError(f"--workdir={path}: bucket gs://{bucket} is not reachable "
                     f"({type(e).__name__}: {str(e).strip()[:200]})") from None
  if not exists:
    raise ValueError(f"--workdir={path}: bucket gs://{bucket} does not exist or these "
                     "credentials may not read it; create it (gcloud storage buckets create "
                     f"gs://{bucket}) or fix the name")


def file_stamp(path: str | os.PathLike) -> list[int]:
  """[size, modification time] of a file, for cache keys: nanoseconds on a
  local disk, the object store's whole seconds on a bucket."""
  if is_remote(path):
    stat = epath.Path(path).stat()
    return [stat.length, stat.mtime]
  stat = os.stat(path)
  return [stat.st_size, stat.st_mtime_ns]


def append_line(path: str | os.PathLike, line: str) -> None:
  """Appends `line` + newline to `path` (created if missing).

  Local files are opened for appending, so a kill loses at most the line being
  written. Object stores (gs://) have no append: the object is rewritten whole.
  A file whose last line a kill cut short gets a newline first: the fragment
  stays a line of its own (readers skip it) instead of swallowing this one.
  """
  path = epath.Path(path)
  if not is_remote(path):
    with open(os.fspath(path), "a+b") as f:  # Writes go to the end; reads may seek.
      end = f.seek(0, os.SEEK_END)
      if end:
        f.seek(end - 1)
        if f.read(1) != b"\n":
          line = "\n" + line
      f.write((line + "\n").encode())
    return
  old = path.read_text() if path.exists() else ""
  if old and not old.endswith("\n"):
    old += "\n"
  path.write_text(old + line + "\n")


def create_exclusive(path: str | os.PathLike, text: str) -> bool:
  """Creates `path` holding `text` unless it exists; whether this call created it.

  Atomic on a local disk (O_EXCL). An object store has no such primitive
  here: the object is written when absent and read back, which tells two
  starters apart unless they write within the same moment (advisory).
  """
  path = epath.Path(path)
  if not is_remote(path):
    try:
      fd = os.open(os.fspath(path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return True
  if path.exists():
    return False
  path.write_text(text)
  return path.read_text() == text


def replace_text(path: str | os.PathLike, text: str) -> None:
  """Writes `path` so readers see the old or the new text, never half of it."""
  replace_bytes(path, text.encode())


def replace_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `path` so readers see the old or the new bytes, never half of them
  (a temporary file renamed over it; an object store's write is whole anyway)."""
  path = epath.Path(path)
  if is_remote(path):
    path.write_bytes(data)
    return
  tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
  try:
    tmp.write_bytes(data)
    tmp.replace(path)
  except BaseException:  # A full disk or a Ctrl-C: leave no partial file behind.
    tmp.unlink(missing_ok=True)
    raise
