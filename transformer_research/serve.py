"""The exported translator: translates from an export directory alone.

    python -m transformer_research.serve DIR "Where is the station?" ...
    python -m transformer_research.serve DIR < sentences.txt

`launch/export.py` (`export.export_run`) writes DIR: the encoder and the
cached beam search as serialized `jax.export` artifacts (StableHLO, with
symbolic batch and source length; one per number of decode steps that
`batching.decode` runs), the parameters as a NumPy archive, the
SentencePiece models, and `manifest.json` with the decoding settings and the
sha256 of every file. This module imports only jax, numpy, sentencepiece and
`batching` (no Haiku, no config, no checkpoint code), so DIR can be copied to
a machine that has nothing of this project but these few files.

`load_exported(DIR)` checks every file against the manifest first: a missing
or altered file is an error naming it, before anything is run. It batches
sentences exactly as `launch/translate.py` does (`batching`), so both give
the same translations.
"""

import argparse
import hashlib
import json
import os
import sys
from typing import Sequence

import jax
from jax import export as jax_export
import numpy as np
import sentencepiece as spm

from transformer_research import batching

MANIFEST = "manifest.json"
FORMAT = "transformer_research.export/1"
FUNCTION_FILE = "translate_{steps}.jax_exported"  # One per number of decode steps.
PARAMS_FILE = "params.npz"


def sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def read_manifest(directory: str) -> dict:
  """The manifest of an export directory, every listed file checked.

  Raises:
    FileNotFoundError: no manifest, or a file it lists is missing (named).
    ValueError: an unknown format, or a file whose sha256 differs (named).
  """
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: expected a directory written by "
                            "launch/export.py")
  with open(path) as f:
    manifest = json.load(f)
  if manifest.get("format") != FORMAT:
    raise ValueError(f"{path}: format {manifest.get('format')!r}; expected {FORMAT!r}")
  for name, digest in manifest["files"].items():
    file = os.path.join(directory, name)
    if not os.path.exists(file):
      raise FileNotFoundError(f"{file} not found: the manifest lists it (export "
                              "directories are copied whole)")
    if sha256(file) != digest:
      raise ValueError(f"{file} was altered: its sha256 is not the manifest's {digest}")
  return manifest


class _SentencePiece:
  """Text <-> ids as `data.tokenizers.SentencePieceTokenizer` does (pad 0; the
  decoded ids stop at the first EOS), from a model file in the export."""

  def __init__(self, path: str):
    with open(path, "rb") as f:
      self._sp = spm.SentencePieceProcessor(model_proto=f.read())
    self.eos_id = self._sp.eos_id()

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: np.ndarray) -> str:
    ends = np.flatnonzero(ids == self.eos_id)
    ids = ids[:ends[0]] if ends.size else ids
    return self._sp.decode([int(i) for i in ids if i != 0])


class Translator:
  """`translator(sentences) -> translations`, from an export directory."""

  def __init__(self, directory: str):
    self.manifest = m = read_manifest(directory)
    path = lambda name: os.path.join(directory, name)
    self._functions = {}
    for steps, name in m["functions"].items():
      with open(path(name), "rb") as f:
        self._functions[int(steps)] = jax_export.deserialize(f.read())
    with np.load(path(m["params"])) as archive:
      self._params = [jax.device_put(archive[f"{i:04d}"]) for i in range(len(archive.files))]
    self._calls = {steps: jax.jit(fn.call) for steps, fn in self._functions.items()}
    self._source = _SentencePiece(path(m["tokenizers"]["inputs"]))
    self._target = _SentencePiece(path(m["tokenizers"]["targets"]))

  def __call__(self, texts: Sequence[str]) -> list[str]:
    """Translations of `texts`, one per text ("" for a blank one)."""
    return batching.on_non_blank(texts, self._translate)

  def _translate(self, sources: list[str]) -> list[str]:
    m = self.manifest
    width = m["max_input_len"]
    rows = batching.cut_to([self._source.encode(s) for s in sources], width,
                           f"data.max_input_len={width}")
    batch_size = batching.batch_size_for(len(rows), m["batch_size"])
    tokens = batching.decode(rows, m["bucket_widths"], batch_size, self._run)
    return [self._target.decode(t) for t in tokens]

  def _run(self, batch: np.ndarray, number: int, first: bool):
    """One batch, as inference.translate runs it (see batching.decode)."""
    del number
    max_len = self.manifest["max_decode_len"]
    steps = batching.first_pass_steps(batch.shape[1], max_len) if first else max_len
    # The artifact's arguments are (params, inputs): the parameters are its
    # leading leaves, in the order of its input tree.
    args, kwargs = jax.tree.unflatten(self._functions[steps].in_tree, [*self._params, batch])
    tokens, _, done = self._calls[steps](*args, **kwargs)
    return np.asarray(tokens), np.asarray(done)


def load_exported(directory: str) -> Translator:
  """The translator of an export directory (see `Translator`, `read_manifest`)."""
  return Translator(directory)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m transformer_research.serve",
                                   description="Translate with an exported model.")
  parser.add_argument("directory", help="export directory (launch/export.py --out)")
  parser.add_argument("texts", nargs="*", help="sentences; none = one per line on stdin")
  args = parser.parse_args(argv)
  try:
    texts = batching.input_texts(args.texts, sys.stdin.buffer)
    translations = load_exported(args.directory)(texts)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  for line in translations:
    print(line)


if __name__ == "__main__":
  main()
