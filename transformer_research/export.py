"""Exports a trained translation run as a self-contained translator (`serve.py`).

`export_run(workdir, out)` writes to `out`:

* `translate_<steps>.jax_exported`: the run's decoder, the same jitted
  functions `launch/translate.py` runs (`Experiment.generate_fn`: encoder,
  cross-attention keys and values, cached beam search), one per number of
  decode steps it uses (each bucket's first pass, and the full decode),
  serialized with `jax.export` as StableHLO with a symbolic batch size and
  source length, so one artifact serves every bucket width;
* `params.npz`: the parameters, the artifact's leading arguments in order;
* the SentencePiece model(s) of the run;
* `manifest.json`: the decoding settings and the sha256 of every file.

The decoding settings are the run's `config.eval` ones (what translate.py uses
by default), so the exported translator gives translate.py's output.

The files are written into a new directory next to `out`, which then takes
`out`'s place: an export that fails half-way leaves an earlier export in `out`
as it was, and `out` is only ever a directory with a complete manifest. A
non-empty `out` without a manifest (a run directory, say) is refused.
"""

import json
import os
import shutil
import tempfile
from typing import Any, Sequence

import jax
from jax import export as jax_export
import numpy as np

from transformer_research import batching
from transformer_research import experiment
from transformer_research import inference
from transformer_research import serve
from transformer_research import storage
from transformer_research.data import tokenizers as tok_lib


def _tokenizer_file(tok: Any, what: str) -> Any:
  """Only the project's own SentencePiece models: serve.py reads them with
  sentencepiece alone (no standardising, no id shifts)."""
  if type(tok) is not tok_lib.SentencePieceTokenizer:  # pylint: disable=unidiomatic-typecheck
    raise ValueError(f"the {what} tokenizer is a {type(tok).__name__}; export supports the "
                     "runs' own SentencePiece models (data.tokenizer='sentencepiece', "
                     "data.standardize=False)")
  return tok


# What `jax.export` lowers for (`platforms`): a GPU is "cuda" (NVIDIA) or "rocm" (AMD).
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def export_run(workdir: str, out: str, *, step: int | None = None, average_last: int = 1,
               beam_size: int | None = None, platforms: Sequence[str] | None = None) -> str:
  """Writes the translator of a saved translation run to `out`; returns the manifest path.

  Args:
    workdir: the training run's directory.
    out: the export directory, local (serve.py reads it with the standard
      library alone): new, empty, or an earlier export, which is replaced
      whole once the new one is complete.
    step: checkpoint step; None = the latest.
    average_last: export the mean parameters of `step` and the N - 1
      checkpoints saved before it (`experiment.load_run`).
    beam_size: default `config.eval.beam_size`.
    platforms: what the artifact is lowered for, e.g. ("cpu", "cuda"); default
      this machine's backend.

  Raises:
    ValueError: not a translation run, a tokenizer export cannot carry, a
      beam size < 1, a platform not in PLATFORMS, or an `out` that is a file
      or a non-empty directory but no export; nothing is written then.
  """
  if storage.is_remote(out):  # os.path would make it a local path (./gs:/bucket/...).
    raise ValueError(f"out={out!r}: expected a local directory (serve.py reads an export with "
                     "the standard library); export here, then copy the directory to the "
                     "bucket (gcloud storage cp -r DIR gs://...)")
  out = os.path.abspath(out)
  if os.path.exists(out) and not os.path.isdir(out):  # Found only at the final rename, which
    # left the finished export behind as a hidden .partial directory.
    raise ValueError(f"out={out!r} is a file: expected a new or empty directory, or an earlier "
                     "export to replace; nothing was written")
  if os.path.isdir(out) and os.listdir(out) and not os.path.exists(
      os.path.join(out, serve.MANIFEST)):
    raise ValueError(f"out={out!r} holds files but no {serve.MANIFEST}: expected a new or empty "
                     "directory, or an earlier export to replace; nothing was written")
  inference.check_beam_size(beam_size)
  unknown = sorted(set(platforms or ()) - set(PLATFORMS))
  if unknown:  # JAX's lowering stops on it with a traceback, after the restore.
    raise ValueError(f"platforms={','.join(platforms)}: {', '.join(unknown)} is no platform "
                     f"jax.export lowers for; expected some of {', '.join(PLATFORMS)}")
  run = experiment.load_run(workdir, step, average_last=average_last)
  exp = run.experiment
  task, e = exp.task, exp.config.eval
  if task.kind != "seq2seq":
    raise ValueError(f"workdir={workdir!r} holds a {task.kind!r} model; expected a "
                     "translation (seq2seq) run")
  tokenizers = {"inputs": _tokenizer_file(task.input_tokenizer, "input"),
                "targets": _tokenizer_file(task.target_tokenizer, "target")}
  settings = dict(eos_id=task.target_tokenizer.eos_id, beam_size=beam_size or e.beam_size,
                  max_len=(e.max_decode_len if e.max_decode_len > 0
                           else exp.config.data.max_target_len),
                  alpha=e.length_penalty)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-",
                             dir=os.path.dirname(out))
  try:
    _write(staging, run, workdir, settings, tokenizers, platforms)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  _replace(staging, out)
  return os.path.join(out, serve.MANIFEST)


def _write(out: str, run: experiment.Run, workdir: str, settings: dict[str, Any],
           tokenizers: dict[str, Any], platforms: Sequence[str] | None) -> None:
  """Writes every file of the export into `out`, the manifest last."""
  exp = run.experiment
  c, e = exp.config, exp.config.eval
  widths = batching.bucket_widths(c.data.max_input_len)
  b, s = jax_export.symbolic_shape("b, s")
  params = jax.device_get(run.params)
  spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  functions = {}
  # One artifact per number of steps translate.py runs: each bucket's first
  # pass (batching.first_pass_steps) and the full decode.
  for steps in sorted({batching.first_pass_steps(w, settings["max_len"]) for w in widths}
                      | {settings["max_len"]}):
    generate = exp.generate_fn(  # What translate.py compiles.
        **settings, max_steps=None if steps == settings["max_len"] else steps)
    exported = jax_export.export(generate, platforms=platforms)(
        jax.tree.map(spec, params), jax.ShapeDtypeStruct((b, s), np.int32))
    functions[str(steps)] = serve.FUNCTION_FILE.format(steps=steps)
    with open(os.path.join(out, functions[str(steps)]), "wb") as f:
      f.write(exported.serialize())
  leaves = jax.tree.leaves(params)
  np.savez(os.path.join(out, serve.PARAMS_FILE), **{f"{i:04d}": np.asarray(x)
                                                    for i, x in enumerate(leaves)})
  joint = tokenizers["inputs"] is tokenizers["targets"]
  names = {side: "spm.model" if joint else f"spm_{side}.model" for side in tokenizers}
  models = {names[side]: tok for side, tok in tokenizers.items()}  # One file when joint.
  for name, tok in models.items():
    tok.save(os.path.join(out, name))
  files = [*functions.values(), serve.PARAMS_FILE, *models]
  manifest = {
      "format": serve.FORMAT, "functions": functions, "params": serve.PARAMS_FILE,
      "tokenizers": names, "eos_id": settings["eos_id"], "beam_size": settings["beam_size"],
      "length_penalty": settings["alpha"], "max_decode_len": settings["max_len"],
      "max_input_len": c.data.max_input_len, "bucket_widths": list(widths),
      "batch_size": e.batch_size, "platforms": list(exported.platforms),
      "run": {"workdir": workdir if storage.is_remote(workdir) else os.path.abspath(workdir),
              "step": run.step, "averaged_steps": list(run.averaged_steps),
              "task": c.data.task, "variant": c.model.variant},
      "files": {name: serve.sha256(os.path.join(out, name)) for name in files},
  }
  path = os.path.join(out, serve.MANIFEST)
  with open(path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=2)
  shutil.move(path + ".tmp", path)  # Written last: a manifest means a complete export.


def _replace(new: str, out: str) -> None:
  """Puts the complete export `new` at `out`, moving an earlier one aside
  first and deleting it after (a crash in between leaves it next to `out`)."""
  old = None
  if os.path.isdir(out) and os.listdir(out):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rmdir(old)
    os.rename(out, old)
  elif os.path.isdir(out):
    os.rmdir(out)
  os.rename(new, out)
  if old:
    shutil.rmtree(old)
