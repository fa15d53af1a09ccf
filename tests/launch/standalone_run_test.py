"""A trained translation run needs nothing but its directory; its export, nothing but itself.

A `wmt_spa:tiny,smoke` run is trained once per module on a tiny fake of the
spa-eng archive (a real `spa-eng.zip` layout, built here, its sha256 recorded
for the test), then the archive and the TFDS data dir are deleted.
Translating, evaluating local files and exporting must still work; the
exported translator (`serve.py`) must give translate.py's output while
importing only jax, numpy and sentencepiece. The whole command-line round
trip (on the shipped corpus) is the slow test at the end.
"""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

import tiny_setup

from transformer_research import configs
from transformer_research import evaluation
from transformer_research import experiment
from transformer_research import export
from transformer_research import inference
from transformer_research import serve
from transformer_research import train_loop
from transformer_research.data import sources
from transformer_research.data import tokenizers
from transformer_research.data.builders.spa_eng import spa_eng as spa_eng_module

REPO = pathlib.Path(__file__).parents[2]
SENTENCES = ["the red cat.", "", "where is my house?", "a big dog runs."]
_WORDS = {"the": "el", "a": "un", "red": "rojo", "big": "grande", "small": "pequeño",
          "cat": "gato", "dog": "perro", "house": "casa", "car": "coche", "sees": "ve",
          "runs": "corre", "eats": "come", "my": "mi", "where is": "dónde está"}
# Smaller and shorter than a smoke run: one layer each, 2 steps, no decoding in its eval.
OVERRIDES = {"model.num_encoder_layers": 1, "model.num_decoder_layers": 1,
             "data.vocab_size": 60, "data.max_input_len": 16, "data.max_target_len": 24,
             "train.num_steps": 2, "eval.every_steps": 2, "eval.decode_examples": 0,
             "checkpoint.every_steps": 1, "eval.beam_size": 2, "eval.batch_size": 8}
# Modules the exported translator must not need.
NOT_IN_SERVE = ("haiku", "ml_collections", "orbax", "optax", "chex", "absl", "tensorflow",
                "tensorflow_datasets", "sacrebleu", "transformer_research.models",
                "transformer_research.experiment", "transformer_research.data",
                "transformer_research.checkpointing", "transformer_research.inference")


def fake_spa_eng(directory: pathlib.Path) -> pathlib.Path:
  """A spa-eng.zip of 400 generated English<TAB>Spanish<TAB>attribution lines."""
  rng = np.random.default_rng(0)
  words = list(_WORDS)
  lines = []
  for _ in range(400):
    en = [str(w) for w in rng.choice(words, rng.integers(1, 5))]
    lines.append(f"{' '.join(en)}.\t{' '.join(_WORDS[w] for w in en)}.\tCC-BY 2.0")
  directory.mkdir(parents=True)
  with zipfile.ZipFile(directory / "spa-eng.zip", "w") as z:
    z.writestr("spa-eng/spa.txt", "\n".join(lines) + "\n")
  return directory


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A trained run whose data is gone: (workdir, overrides used to train it)."""
  tmp = tmp_path_factory.mktemp("spa")
  manual, data = fake_spa_eng(tmp / "manual"), tmp / "tfds"
  overrides = {**OVERRIDES, "data.manual_dir": str(manual), "data.tfds_data_dir": str(data)}
  workdir = str(tmp / "run")
  digest = hashlib.sha256((manual / "spa-eng.zip").read_bytes()).hexdigest()
  with pytest.MonkeyPatch.context() as patch:  # The builder accepts only the recorded archive.
    patch.setattr(spa_eng_module, "recorded_sha256", lambda: digest)
    train_loop.train_and_evaluate(configs.load_config("wmt_spa:tiny,smoke", overrides), workdir)
  shutil.rmtree(manual)
  shutil.rmtree(data)
  return workdir


@pytest.fixture
def no_data(monkeypatch):
  """Opening a split or training a tokenizer fails the test."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"a split was opened or a tokenizer trained: {args}")
  monkeypatch.setattr(sources, "spa_eng", refuse)
  monkeypatch.setattr(tokenizers, "train_sentencepiece", refuse)


def one_device(workdir: str) -> experiment.Run:
  """The run on one device, as serve.py runs it: the same batches, the same shapes."""
  return experiment.load_run(workdir, devices=jax.devices()[:1])


def write_pairs(directory: pathlib.Path) -> tuple[str, str]:
  (directory / "en.txt").write_text("the red cat.\nwhere is my car?\n")
  (directory / "es.txt").write_text("el gato rojo.\tel rojo gato.\ndónde está mi coche?\n")
  return str(directory / "en.txt"), str(directory / "es.txt")


def test_run_evaluates_local_files_without_its_data(run_dir, no_data, tmp_path):
  source, reference = write_pairs(tmp_path)
  record, report = evaluation.evaluate_run(run_dir, source_file=source, reference_file=reference)
  assert record["split"] == "file_en" and record["decoded_examples"] == 2.0
  assert {"loss", "accuracy", "bleu", "chrf", "sequence_accuracy"} <= set(record)
  assert pathlib.Path(report).name == "eval_file_en_2.md"
  assert json.loads(pathlib.Path(run_dir, "metrics.jsonl").read_text().splitlines()[-1]) == record


def test_missing_tokenizer_is_an_error_naming_it(run_dir, no_data, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy)
  (model,) = copy.glob("spm_*.model")
  model.unlink()
  with pytest.raises(FileNotFoundError, match=f"tokenizer model {model} not found"):
    experiment.load_run(str(copy))


def test_a_resume_without_its_tokenizer_is_refused_not_retrained(run_dir, tmp_path):
  """train.py used to train a new SentencePiece model and train on: its ids are not
  the ones the checkpoint's embeddings learnt. Refused before any data is read
  (this run's data is gone), and nothing in the run directory changes."""
  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy)
  (model,) = copy.glob("spm_*.model")
  model.unlink()
  before = tiny_setup.fingerprint(copy)
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "train.num_steps": 4}.items()]
  result = cli("launch/train.py", "--config=configs/wmt_spa.py:tiny,smoke", f"--workdir={copy}",
               *flags)
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: tokenizer model {model} not found: expected the file its training run wrote "
      "there (a run directory carries its tokenizers; a new one would not match the checkpoint)")
  assert tiny_setup.fingerprint(copy) == before


def test_a_damaged_tokenizer_is_one_line_naming_it(run_dir, tmp_path):
  """SentencePiece's own parse error names its C++ source line, not the file."""
  copy = tmp_path / "run"
  shutil.copytree(run_dir, copy)
  (model,) = copy.glob("spm_*.model")
  model.write_bytes(model.read_bytes()[:3000])  # A copy cut short.
  result = cli("launch/translate.py", f"--workdir={copy}", "Hello.")
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {model}: SentencePiece cannot read this model file (damaged, or not a model); "
      "restore it from a copy of the run")


def test_bad_reference_files_are_named(tmp_path):
  source, reference = write_pairs(tmp_path)
  with pytest.raises(ValueError, match="without a reference_file"):
    evaluation.read_pairs(source, None)
  (tmp_path / "short.txt").write_text("uno\n")
  with pytest.raises(ValueError, match=r"en.txt has 2 lines and .*short.txt 1"):
    evaluation.read_pairs(source, str(tmp_path / "short.txt"))
  with pytest.raises(OSError, match=r"reference_file='.*missing.txt': No such file"):
    evaluation.read_pairs(source, str(tmp_path / "missing.txt"))
  (tmp_path / "gap.txt").write_text("uno\n\t\n")
  with pytest.raises(ValueError, match=r"gap.txt:2: empty line"):
    evaluation.read_pairs(source, str(tmp_path / "gap.txt"))


def test_text_that_is_not_utf8_is_one_line_naming_where_it_is(run_dir, exported, tmp_path):
  """A Latin-1 line on stdin stopped translate.py and serve with a traceback from
  SentencePiece's C++ binding; in a file given to evaluate.py, with Python's decode
  message, which names neither the file nor the line. A BOM is not part of the text."""
  latin1 = "the red cat.\nel niño.\n".encode("latin-1")
  expected = "error: stdin line 2: byte 0xf1 is not UTF-8 text; expected UTF-8 (convert it"
  for command in (["launch/translate.py", f"--workdir={run_dir}"],
                  ["-m", "transformer_research.serve", exported]):
    result = cli(*command, stdin=latin1)
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].startswith(expected), result.stderr[-3000:]
  argument = cli("launch/translate.py", f"--workdir={run_dir}", "the cat.",
                 os.fsdecode("el niño.".encode("latin-1")))
  assert argument.stderr.strip().splitlines()[-1].startswith(
      "error: argument 2: byte 0xf1 is not UTF-8 text"), argument.stderr[-3000:]

  source, reference = write_pairs(tmp_path)
  pathlib.Path(reference).write_bytes("el gato rojo.\ndónde está mi coche?\n".encode("latin-1"))
  result = cli("launch/evaluate.py", f"--workdir={run_dir}", f"--source_file={source}",
               f"--reference_file={reference}")
  assert result.returncode == 1, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: {reference} line 2: byte 0xf3 is not UTF-8 text"), result.stderr[-3000:]
  pathlib.Path(reference).write_bytes(b"\xef\xbb\xbf" + "el gato rojo.\nun coche.\n".encode())
  assert evaluation.read_pairs(source, reference)[0]["targets"] == "el gato rojo."


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("export"))
  export.export_run(run_dir, out)
  return out


def serve_cli(directory: str, *texts: str) -> subprocess.CompletedProcess:
  """`python -m transformer_research.serve`, with the modules it imported on stderr."""
  return subprocess.run([sys.executable, "-X", "importtime", "-m", "transformer_research.serve",
                         directory, *texts], capture_output=True, text=True, timeout=300)


def test_run_translates_without_its_data_and_its_export_gives_the_same(run_dir, exported,
                                                                       no_data):
  """translate.py's library path, then serve.py (a subprocess, as users run it) on
  the same sentences, one of them longer than the longest bucket."""
  texts = [*SENTENCES, "the dog " * 10]
  run = one_device(run_dir)
  want = inference.generate_text(run.experiment, run.params, texts)
  assert len(want) == 5 and want[1] == "" and all(isinstance(t, str) for t in want)
  result = serve_cli(exported, *texts)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines() == want
  assert result.stderr.count("cut to") == 1 and "1 of 4 sources cut to" in result.stderr
  imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
              if line.startswith("import time:")}
  assert "sentencepiece" in imported and "jax" in imported
  assert not [m for m in imported if m.startswith(NOT_IN_SERVE)], sorted(imported)


def test_export_records_its_settings_and_files(exported):
  manifest = json.loads(pathlib.Path(exported, serve.MANIFEST).read_text())
  assert manifest["beam_size"] == 2 and manifest["bucket_widths"] == [8, 16]
  # Width 8 first passes stop at 16 steps; width 16 ones and second passes run all 24.
  assert manifest["functions"] == {"16": "translate_16.jax_exported",
                                   "24": "translate_24.jax_exported"}
  assert sorted(manifest["files"]) == ["params.npz", "spm.model", "translate_16.jax_exported",
                                       "translate_24.jax_exported"]
  assert manifest["run"]["step"] == 2 and manifest["run"]["averaged_steps"] == []


def test_an_averaged_export_carries_the_mean_parameters_and_says_so(run_dir, no_data, tmp_path):
  out = str(tmp_path / "averaged")
  export.export_run(run_dir, out, average_last=2)
  manifest = json.loads(pathlib.Path(out, serve.MANIFEST).read_text())
  assert manifest["run"]["step"] == 2 and manifest["run"]["averaged_steps"] == [1, 2]
  saved = np.load(pathlib.Path(out, serve.PARAMS_FILE))
  steps = [jax.tree.leaves(experiment.load_run(run_dir, s).params) for s in (1, 2)]
  for i, (one, two) in enumerate(zip(*steps)):
    np.testing.assert_allclose(saved[f"{i:04d}"], (np.asarray(one) + np.asarray(two)) / 2,
                               rtol=1e-6, atol=1e-7)


def test_export_dir_with_a_missing_or_altered_file_is_an_error_naming_it(exported, tmp_path):
  broken = tmp_path / "export"
  shutil.copytree(exported, broken)
  (broken / "spm.model").unlink()
  with pytest.raises(FileNotFoundError, match=f"{broken / 'spm.model'} not found"):
    serve.load_exported(str(broken))
  shutil.copy(pathlib.Path(exported, "spm.model"), broken)
  with open(broken / "params.npz", "ab") as f:
    f.write(b"\0")
  with pytest.raises(ValueError, match=f"{broken / 'params.npz'} was altered"):
    serve.load_exported(str(broken))
  (broken / serve.MANIFEST).unlink()
  result = serve_cli(str(broken), "hello")
  assert result.returncode == 1 and f"error: {broken / serve.MANIFEST} not found" in result.stderr


def test_a_failed_re_export_leaves_the_earlier_export_whole(run_dir, exported, tmp_path,
                                                            monkeypatch):
  """A write that fails half-way (here: the tokenizer, after the decoder and
  parameter files) used to leave new files under the old manifest."""
  out = tmp_path / "export"
  shutil.copytree(exported, out)
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  def full_disk(*_):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(tokenizers.SentencePieceTokenizer, "save", full_disk)
  with pytest.raises(OSError, match="No space left"):
    export.export_run(run_dir, str(out))
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # No partial directory left.
  serve.load_exported(str(out))


def test_export_refuses_a_directory_that_is_not_an_export(run_dir, tmp_path):
  """--out=the run directory (a slip of the keyboard) writes nothing into it;
  --out=a file was found only at the final rename, after the whole export,
  which stayed behind as a hidden .partial directory (and Errno 20 named it)."""
  before = sorted(str(p) for p in pathlib.Path(run_dir).rglob("*"))
  result = cli("launch/export.py", f"--workdir={run_dir}", f"--out={run_dir}")
  assert result.returncode == 1
  assert (f"error: out='{run_dir}' holds files but no manifest.json: expected a new or empty "
          "directory, or an earlier export to replace; nothing was written") in result.stderr
  assert sorted(str(p) for p in pathlib.Path(run_dir).rglob("*")) == before
  (tmp_path / "notes.txt").write_text("mine\n")
  result = cli("launch/export.py", f"--workdir={run_dir}", f"--out={tmp_path / 'notes.txt'}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: out='{tmp_path / 'notes.txt'}' is a file: expected a new or empty directory, or "
      "an earlier export to replace; nothing was written")
  assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
  assert (tmp_path / "notes.txt").read_text() == "mine\n"


def cli(*args: str, env=None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
  if stdin is None:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                          cwd=REPO, env=env)
  run = subprocess.run([sys.executable, *args], capture_output=True, input=stdin, timeout=600,
                       cwd=REPO, env=env)
  return subprocess.CompletedProcess(run.args, run.returncode, run.stdout.decode(),
                                     run.stderr.decode())


@pytest.mark.slow
def test_command_line_round_trip_without_data(tmp_path):
  """train.py (on the shipped corpus), delete the data, then translate.py,
  evaluate.py on local files, export.py and serve: each as a user runs it."""
  data, workdir = tmp_path / "tfds", tmp_path / "run"
  # The real corpus has about 90 characters: a vocabulary of 60 cannot hold them.
  flags = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "data.vocab_size": 200}.items()]
  # One device, as serve.py uses: translate.py then plans the same batches.
  env = dict(os.environ, XLA_FLAGS="")
  trained = cli("launch/train.py", "--config=configs/wmt_spa.py:tiny,smoke", f"--workdir={workdir}",
                f"--config.data.tfds_data_dir={data}", *flags, env=env)
  assert trained.returncode == 0, trained.stderr[-3000:]
  shutil.rmtree(data)
  translated = cli("launch/translate.py", f"--workdir={workdir}", *SENTENCES, env=env)
  assert translated.returncode == 0, translated.stderr[-3000:]
  source, reference = write_pairs(tmp_path)
  evaluated = cli("launch/evaluate.py", f"--workdir={workdir}", f"--source_file={source}",
                  f"--reference_file={reference}", env=env)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "split: file_en" in evaluated.stdout and "bleu:" in evaluated.stdout
  greedy = cli("launch/evaluate.py", f"--workdir={workdir}", f"--source_file={source}",
               f"--reference_file={reference}", "--beam_size=1", env=env)
  assert greedy.returncode == 0, greedy.stderr[-3000:]
  (report,) = workdir.glob("eval_file_en_*_beam1.md")  # Next to the beam-4 report.
  assert "beam 1," in report.read_text() and "## BLEU by source length" in report.read_text()
  exported = cli("launch/export.py", f"--workdir={workdir}", f"--out={tmp_path / 'export'}",
                 env=env)
  assert exported.returncode == 0, exported.stderr[-3000:]
  served = cli("-m", "transformer_research.serve", str(tmp_path / "export"), *SENTENCES, env=env)
  assert served.returncode == 0, served.stderr[-3000:]
  assert served.stdout == translated.stdout
  (model,) = workdir.glob("spm_*.model")
  model.unlink()
  broken = cli("launch/translate.py", f"--workdir={workdir}", "hello", env=env)
  assert broken.returncode == 1 and f"error: tokenizer model {model} not found" in broken.stderr
  assert "Traceback" not in broken.stderr
