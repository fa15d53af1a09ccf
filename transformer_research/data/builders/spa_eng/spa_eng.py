"""TFDS builder for the Tatoeba / manythings.org English-Spanish pairs.

The archive (`spa-eng.zip`, the file of the TensorFlow NMT tutorials) has one
split only, so the splits are made here: each English sentence is hashed into
train / validation / test = 70 / 15 / 15. Hashing the English side, rather
than the line, keeps every translation of one English sentence in one split,
so no test source sentence is seen in training, and the assignment does not
depend on line order or on the other lines of the file.

The archive ships with the package (`spa-eng.zip` next to this file, 2.6 MB,
CC BY 2.0: see SPA_ENG_LICENSE.md), so the main job runs on a fresh machine
with no network, and it is never downloaded. A copy in the TFDS manual
directory (`<data_dir>/downloads/manual/` or `DownloadConfig(manual_dir=...)`)
is used instead when present. Either way its sha256 must be the one recorded
in checksums.tsv (the check TFDS makes of a download), so a run never trains
on other data than it says. A file that is not a zip archive, lacks
the pairs file or holds a pairs file larger than `MAX_MEMBER_BYTES` is an
error naming it. Examples are stored as array_record so the dataset is
readable without TensorFlow (`builder.as_data_source()`).
"""

from collections.abc import Iterable, Iterator
import hashlib
import logging
import zipfile

from etils import epath
import tensorflow_datasets as tfds

from transformer_research.data import text_files

URL = "http://storage.googleapis.com/download.tensorflow.org/data/spa-eng.zip"
ARCHIVE_NAME = "spa-eng.zip"
_MEMBER = "spa-eng/spa.txt"  # Path of the pairs inside the archive.
SPLIT_PERCENT = (("train", 70), ("validation", 15), ("test", 15))
SHIPPED_ARCHIVE = epath.Path(__file__).parent / ARCHIVE_NAME
# The pairs file is read whole into memory: bound it (the real one is ~8 MB).
MAX_MEMBER_BYTES = 256 * 2**20


def recorded_sha256() -> str:
  """The archive's sha256 as checksums.tsv records it (url, size, sha256, name)."""
  line = (epath.Path(__file__).parent / "checksums.tsv").read_text().split("\n")[0]
  return line.split("\t")[2]

_CITATION = """\
@misc{tatoeba_anki_spa_eng,
  author = {{Tatoeba Project} and {manythings.org}},
  title = {Tab-delimited Bilingual Sentence Pairs: Spanish - English},
  howpublished = {\\url{http://www.manythings.org/anki/}},
  note = {CC BY 2.0, from tatoeba.org},
}
"""


def split_of(english: str) -> str:
  """The split of every pair whose English side is `english`.

  A cryptographic hash (not Python's salted `hash`) so the split is the same
  in every process and every run.
  """
  digest = hashlib.sha256(english.encode("utf-8")).digest()
  bucket = int.from_bytes(digest[:8], "big") % 100
  for name, percent in SPLIT_PERCENT:
    if bucket < percent:
      return name
    bucket -= percent
  raise AssertionError("SPLIT_PERCENT must sum to 100")


def parse_pairs(lines: Iterable[bytes]) -> tuple[list[tuple[int, str, str]], dict[str, int]]:
  """Parses `English<TAB>Spanish[<TAB>attribution]` lines.

  Bad lines are skipped and counted by reason instead of raising: the archive
  is user-contributed text, and one stray line must not stop a build.
  Fields after the second are ignored (newer manythings exports append an
  attribution column): `text_files.split_pair`, which reads a user's own
  pairs files (`data.train_path`) the same way.

  Returns:
    (line_number, english, spanish) for every good line, and the number of
    skipped lines per reason (`no_tab`, `empty_side`, `not_utf8`).
  """
  pairs = []
  bad = {"no_tab": 0, "empty_side": 0, "not_utf8": 0}
  for number, raw in enumerate(lines):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError:
      bad["not_utf8"] += 1
      continue
    if not line.strip():
      continue  # Blank lines (e.g. a trailing newline) are not data.
    pair = text_files.split_pair(line)
    if isinstance(pair, str):
      bad[pair] += 1
      continue
    pairs.append((number, *pair))
  return pairs, bad


class SpaEng(tfds.core.GeneratorBasedBuilder):
  """English-Spanish sentence pairs, split by English sentence."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "70/15/15 split by hash of the English sentence."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Nothing to do: {ARCHIVE_NAME} ({URL}) ships with the package. A copy in the
  TFDS manual directory, `<data_dir>/downloads/manual/{ARCHIVE_NAME}` (or
  `download_config=tfds.download.DownloadConfig(manual_dir=DIR)`), is used
  instead; it must be the same file (sha256 in checksums.tsv).
  """

  def __init__(self, *, file_format: str | None = None, **kwargs):
    # array_record by default: random access and no TensorFlow needed.
    super().__init__(file_format=file_format or "array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "en": tfds.features.Text(),
            "es": tfds.features.Text(),
        }),
        supervised_keys=("en", "es"),
        homepage="http://www.manythings.org/anki/",
        citation=_CITATION,
    )

  def _archive(self, dl_manager: tfds.download.DownloadManager) -> epath.Path:
    """The manual copy if there is one, else the shipped one: never downloaded."""
    try:
      manual = dl_manager.manual_dir / ARCHIVE_NAME
    except AssertionError:  # TFDS raises this for a missing or empty manual dir.
      manual = None
    archive = manual if manual is not None and manual.exists() else SHIPPED_ARCHIVE
    check_archive(archive)
    logging.info("spa_eng: preparing from %s", archive)
    return archive

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    # Read straight from the zip: TFDS's extractor needs TensorFlow.
    pairs, bad = parse_pairs(read_pairs_file(self._archive(dl_manager)).splitlines())
    by_split = {name: [] for name, _ in SPLIT_PERCENT}
    for pair in pairs:
      by_split[split_of(pair[1])].append(pair)
    level = logging.WARNING if sum(bad.values()) else logging.INFO
    logging.log(level, "spa_eng: %d pairs (%s); skipped bad lines: %s", len(pairs),
                ", ".join(f"{k} {len(v)}" for k, v in by_split.items()), bad)
    return {name: self._generate_examples(examples) for name, examples in by_split.items()}

  def _generate_examples(self, examples: list[tuple[int, str, str]]) -> Iterator[tuple[int, dict[str, str]]]:
    for number, en, es in examples:
      yield number, {"en": en, "es": es}  # Line number: a stable, unique key.


def check_archive(path: epath.Path) -> None:
  """The archive must be the recorded one (as TFDS checks a download).

  Raises:
    ValueError naming the file and both checksums.
  """
  digest = hashlib.sha256()
  with path.open("rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  if digest.hexdigest() != recorded_sha256():
    raise ValueError(
        f"{path}: sha256 {digest.hexdigest()} differs from the recorded {recorded_sha256()} "
        f"(data/builders/spa_eng/checksums.tsv): expected the {ARCHIVE_NAME} of {URL}")


def read_pairs_file(path: epath.Path) -> bytes:
  """The bytes of the pairs file in the archive at `path`.

  Raises:
    ValueError: not a zip archive, no pairs file, or a pairs file over
      MAX_MEMBER_BYTES, naming the archive.
  """
  try:
    with path.open("rb") as f, zipfile.ZipFile(f) as archive:
      try:
        info = archive.getinfo(_MEMBER)
      except KeyError:
        raise ValueError(f"{path}: the archive has no {_MEMBER} (it holds "
                         f"{archive.namelist()[:5]})") from None
      if info.file_size > MAX_MEMBER_BYTES:
        raise ValueError(f"{path}: {_MEMBER} is {info.file_size:,} bytes, over the "
                         f"{MAX_MEMBER_BYTES:,} this builder reads into memory")
      return archive.read(info)
  except (zipfile.BadZipFile, EOFError, OSError) as e:
    raise ValueError(f"{path} is not a readable zip archive ({e}): expected the {ARCHIVE_NAME} "
                     f"of {URL}") from None
