"""What launch/ scripts print and write, as a user sees it: a fresh offline
machine, a terminal, TensorBoard, plots, profiles, and one-line errors."""

import fcntl
import importlib.util
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios

from matplotlib import pyplot as plt
import pytest

import tiny_setup
from transformer_research import plots

ROOT = tiny_setup.ROOT
CONFIGS = ROOT / "configs"


def test_a_fresh_offline_machine_trains_the_main_job(tmp_path):
  """No TFDS data, no home directory content, no network: the shipped corpus."""
  home, tfds_dir = tmp_path / "home", tmp_path / "tensorflow_datasets"
  home.mkdir()
  tfds_dir.mkdir()
  command = tiny_setup.train_command(tmp_path / "run", **{"train.num_steps": 2,
                                                          "eval.every_steps": 2,
                                                          "checkpoint.every_steps": 2})
  command[2] = f"--config={CONFIGS / 'wmt_spa.py'}:tiny,smoke"
  run = subprocess.run(command, env=tiny_setup.subprocess_env(HOME=str(home),
                                                              TFDS_DATA_DIR=str(tfds_dir)),
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "spa_eng: preparing from" in run.stderr and "builders/spa_eng/spa-eng.zip" in run.stderr
  assert "download" not in run.stderr.lower()
  assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
  assert list(tfds_dir.glob("spa_eng/*/*.array_record*"))
  assert {r["split"] for r in tiny_setup.records(tmp_path / "run")} == {"train", "validation"}


def _in_a_terminal(command: list[str], timeout: float = 300) -> str:
  """Runs `command` with stderr and stdout on a pseudo-terminal; what it showed."""
  controller, terminal = pty.openpty()
  # A terminal 120 columns wide (a new pty has no size, and tqdm draws nothing in 0 columns).
  fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
  proc = subprocess.Popen(command, stdout=terminal, stderr=terminal,
                          env=tiny_setup.subprocess_env())
  os.close(terminal)
  shown = b""
  while True:
    try:
      chunk = os.read(controller, 65536)
    except OSError:  # The terminal closed: the process is done.
      break
    if not chunk:
      break
    shown += chunk
  proc.wait(timeout=timeout)
  os.close(controller)
  assert proc.returncode == 0, shown.decode(errors="replace")[-3000:]
  return shown.decode(errors="replace")


@pytest.fixture(scope="module")
def terminal_run(tmp_path_factory):
  """reverse:tiny,smoke on a terminal, with a 2-step profile; (output, workdir)."""
  workdir = tmp_path_factory.mktemp("terminal")
  shown = _in_a_terminal(tiny_setup.train_command(
      workdir, **{"train.num_steps": 12, "train.log_every_steps": 4, "eval.every_steps": 6,
                  "checkpoint.every_steps": 6, "train.profile_steps": 2}))
  return shown, workdir


def test_a_run_prints_its_size_evals_checkpoints_and_a_bar(terminal_run):
  shown, _ = terminal_run
  # What is left on each line once the bar is redrawn or cleared (\r).
  lines = [line.split("\r")[-1] for line in shown.replace("\r\n", "\n").split("\n")]
  logged = [line for line in lines if re.match(r"[IWE]\d{4} ", line)]
  text = "\n".join(logged)
  assert re.search(r"reverse seq2seq, model tiny .*: [\d,]+ parameters; a step is 8 rows of "
                   r"20\+21 tokens \([\d,]+ token slots\); 12 steps", text)
  assert re.search(r"first step done .*; 8 examples a step, so an epoch of 200 examples is ~25 "
                   r"steps", text)
  assert re.search(r"step 4/12 \| loss [\d.]+ \| acc [\d.]+ \| [\d.]+ steps/s .*\| ETA ", text)
  assert re.search(r"eval validation step 6 \| loss [\d.]+ \| accuracy [\d.]+ \| "
                   r"sequence_accuracy [\d.]+ .*\| [\d.]+ s", text)
  assert re.search(r"checkpoint step 6 handed to the background writer in [\d.]+ s", text)
  # The bar: rate, ETA and the latest loss; log lines were written above it,
  # so each starts a line of its own (checked by the `logged` match above).
  bar = [s for s in shown.split("\r") if re.match(r"train:\s+\d+%\|", s.strip())]
  assert any(re.search(r"\d+/12 \[[\d:]+<[\d:?]+, +[\d.?]+(step/s|s/step), loss=[\d.]+\]", s)
             for s in bar), bar[-3:]
  assert len([line for line in lines if "] step " in line]) == 3
  assert not any("orbax" in line.lower() for line in logged)  # Orbax's INFO is quiet.


def test_a_profile_is_written_for_tensorboard_and_perfetto(terminal_run):
  shown, workdir = terminal_run
  traces = list((workdir / "profile").glob("plugins/profile/*/*"))
  names = {p.name.split(".", 1)[1] for p in traces}
  assert {"xplane.pb", "trace.json.gz"} <= names and "perfetto_trace.json.gz" in {
      p.name for p in traces}, traces
  assert "profiling steps 3-4 into" in shown


def test_tensorboard_holds_the_config_hparams_size_and_samples(terminal_run):
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  _, workdir = terminal_run
  events = event_accumulator.EventAccumulator(str(workdir / "tensorboard"),
                                              size_guidance={event_accumulator.TENSORS: 0})
  events.Reload()
  text = {tag: [e.tensor_proto.string_val[0].decode() for e in events.Tensors(tag)]
          for tag in events.Tags()["tensors"]}
  assert json.loads(text["run/config/text_summary"][0].strip("`\n"))["train"]["num_steps"] == 12
  assert re.search(r"[\d,]+ parameters", text["run/summary/text_summary"][0])
  samples = text["validation/samples/text_summary"]
  assert len(samples) == 2 and samples[0].startswith("| source | reference | output |")
  hparams = events.PluginTagToContent("hparams")
  assert "_hparams_/session_start_info" in hparams
  assert b"train.learning_rate" in hparams["_hparams_/session_start_info"]
  assert b"parameters" in hparams["_hparams_/session_start_info"]


def test_plots_overlay_runs_with_titles_labels_and_the_training_length(tmp_path, monkeypatch):
  runs = []
  for name, loss in (("rope", 1.0), ("learned", 2.0)):
    workdir = tmp_path / name
    workdir.mkdir()
    records = [{"step": s, "split": "train", "loss": loss / s} for s in (1000, 2000)]
    records.append({"step": 2000, "split": "validation", "loss": loss, "sequence_accuracy": 0.5,
                    "sequence_accuracy_len_09": 1.0, "sequence_accuracy_len_12": 0.2})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (workdir / "config.json").write_text(json.dumps(
        {"data": {"train_max_len": 10, "num_train_examples": 100}, "model": {}, "train": {}}))
    runs.append(str(workdir))
  figures = {}

  def save(fig, path):
    ax = fig.axes[0]
    figures[os.path.basename(path)] = (ax.get_title(), ax.get_xlabel(), ax.get_ylabel(),
                                       [t.get_text() for t in ax.get_legend().get_texts()],
                                       [t.get_text() for t in ax.get_xticklabels()])
    plt.close(fig)
    return path

  monkeypatch.setattr(plots, "_save", save)
  plots.plot_workdirs(runs, str(tmp_path / "out"))
  title, xlabel, ylabel, legend, _ = figures["loss.png"]
  assert (title, xlabel, ylabel) == ("Loss: rope, learned", "step", "loss (log scale)")
  assert legend == ["rope: train loss", "rope: validation loss", "learned: train loss",
                    "learned: validation loss"]
  title, xlabel, _, legend, _ = figures["per_length_accuracy.png"]
  assert xlabel == "length" and "rope: longest training length (10)" in legend
  with pytest.raises(ValueError, match="expected --out_dir"):
    plots.plot_workdirs(runs)


def test_plot_cli_overlays_two_runs(terminal_run, tmp_path):
  _, workdir = terminal_run
  out = subprocess.run([sys.executable, str(ROOT / "launch" / "plot.py"), f"--workdir={workdir}",
                        f"--workdir={workdir.parent}/{workdir.name}", f"--out_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and "the same run directory is given twice" in out.stderr


def test_reading_a_run_prints_no_orbax_warnings(terminal_run):
  """translate.py and evaluate.py open the checkpoints read-only on purpose;
  Orbax's warnings saying so were six lines before every translation."""
  _, workdir = terminal_run
  translated = _cli("translate.py", f"--workdir={workdir}", "3141")
  evaluated = _cli("evaluate.py", f"--workdir={workdir}", "--split=validation")
  for out in (translated, evaluated):
    assert out.returncode == 0, out.stderr[-3000:]
    assert "read only" not in out.stderr and "read_only" not in out.stderr, out.stderr
    assert not re.findall(r"^W\d{4} .*", out.stderr, re.M), out.stderr
  assert len(translated.stdout.splitlines()) == 1


def _cli(script: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], input=stdin,
                        capture_output=True, text=True, timeout=300,
                        env=tiny_setup.subprocess_env())


def _bad_value(override: str, message: str) -> tuple:
  """A `reverse:tiny,smoke` train.py case refused for one config value (exit 1)."""
  return ("train.py", [f"--config={CONFIGS}/reverse.py:tiny,smoke", "--workdir={tmp}/run",
                       override], 1, message)


@pytest.mark.parametrize("script,args,status,message", [
    ("train.py", ["--config={bad_config}", "--workdir={tmp}/run"], 2,
     "--config={bad_config}: ModuleNotFoundError: No module named 'no_such_module'"),
    ("train.py", [f"--config={CONFIGS}/reverse.py:huge", "--workdir={tmp}/run"], 2,
     "config argument 'huge'"),
    ("train.py", [f"--config={CONFIGS}/reverse.py", "--config.train.batchsize=8",
                  "--workdir={tmp}/run"], 2, 'Did you mean "batch_size"'),
    ("train.py", [f"--config={CONFIGS}/reverse.py", "--config.train.batch_size=many",
                  "--workdir={tmp}/run"], 2, "--config.train.batch_size=many"),
    ("train.py", [f"--config={CONFIGS}/reverse.py", "--workdir={tmp}/run", "--bogus"], 2,
     "Unknown command line flag 'bogus'"),
    ("train.py", [f"--config={CONFIGS}/reverse.py:tiny,smoke", "--workdir={tmp}/a_file"], 1,
     "--workdir={tmp}/a_file is a file"),
    ("train.py", [f"--config={CONFIGS}/wmt_spa.py:tiny,smoke", "--workdir={tmp}/run",
                  "--config.data.manual_dir={tmp}/nowhere"], 1,
     "config.data.manual_dir='{tmp}/nowhere': no such directory"),
    _bad_value("--config.train.profile_steps=-1", "config.train.profile_steps=-1"),
    _bad_value("--config.train.learning_rate=-0.001",
               "config.train.learning_rate=-0.001: expected > 0"),
    _bad_value("--config.train.batch_size=0",
               "config.train.batch_size=0: expected a positive number of rows"),
    _bad_value("--config.model.dropout_rate=1.5",
               "model.dropout_rate=1.5; expected a value in [0, 1)"),
    _bad_value("--config.train.label_smoothing=2",
               "config.train.label_smoothing=2.0: expected a value in [0, 1)"),
    _bad_value("--config.eval.beam_size=0", "config.eval.beam_size=0: expected 1 (greedy) or more"),
    _bad_value("--config.train.b1=1.5", "config.train.b1=1.5: expected a decay rate in [0, 1)"),
    _bad_value("--config.data.max_input_len=0",
               "config.data.max_input_len=0: expected a positive number of tokens"),
    _bad_value("--config.data.num_buckets=0",
               "config.data.num_buckets=0: expected a positive number of padded lengths"),
    ("train.py", [f"--config={CONFIGS}/imdb.py:tiny,smoke", "--workdir={tmp}/run",
                  "--config.data.vocab_size=0"], 1,
     "config.data.vocab_size=0: expected a positive number of sentencepiece pieces"),
    ("train.py", [f"--config={CONFIGS}/imdb.py:tiny,smoke", "--workdir={tmp}/run",
                  "--config.data.train_path={tmp}/named.jsonl",
                  "--config.data.eval_path={tmp}/no.tsv"],
     1, "config.data.eval_path: paths='{tmp}/no.tsv': no such file"),
    ("train.py", [f"--config={CONFIGS}/imdb.py:tiny,smoke", "--workdir={tmp}/run",
                  "--config.data.train_path={bad_config}"], 1,
     "config.data.train_path: path='{bad_config}': expected a .jsonl, .json, .tsv or .txt file"),
    _bad_value("--config.eval.num_samples=-1",
               "config.eval.num_samples=-1: expected 0 (none) or a number of examples"),
    ("train.py", [f"--config={CONFIGS}/difference.py:tiny,smoke", "--workdir={tmp}/run",
                  "--config.data.packing=True"], 1,
     "config.data.packing=True: data.task='difference' is a classifier"),
    _bad_value("--config.checkpoint.best_mode=maximum",
               "config.checkpoint.best_mode='maximum': expected 'max' or 'min'"),
    _bad_value("--config.checkpoint.best_metric=loss",  # best_mode is 'max' by default.
               "config.checkpoint.best_metric='loss' is better lower: expected "
               "config.checkpoint.best_mode='min' (with 'max' the worst checkpoints would be "
               "kept)"),
    pytest.param("train.py", [f"--config={CONFIGS}/imdb.py:tiny,smoke", "--workdir={tmp}/run",
                              "--config.data.tfds_data_dir={tmp}/tfds"], 1,
                 "`pip install tensorflow-cpu` once to prepare it into {tmp}/tfds/imdb_reviews/"
                 "plain_text/1.0.0, or train on local copies: --config.data.train_path=FILE",
                 marks=pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                                          reason="TensorFlow is installed")),
    # Local files a task would not read: the synthetic tasks generate their
    # data, and an eval_path alone left the test split TFDS's, without a word.
    ("train.py", [f"--config={CONFIGS}/reverse.py:tiny,smoke", "--workdir={tmp}/run",
                  "--config.data.train_path={tmp}/a_file"], 1,
     "config.data.train_path='{tmp}/a_file': data.task='reverse' reads no local files; "
     "expected '' (the tasks that do: imdb, lm_imdb, mlm_imdb, spa_eng, wmt13_es_en)"),
    # Translation pairs: source<TAB>target lines, nothing else.
    ("train.py", [f"--config={CONFIGS}/wmt_spa.py:tiny,smoke", "--workdir={tmp}/run",
                  "--config.data.train_path={tmp}/named.jsonl"], 1,
     "config.data.train_path: {tmp}/named.jsonl: expected a .tsv or .txt file (optionally .gz) "
     "of source<TAB>target lines, the Tatoeba / Anki layout"),
    ("train.py", [f"--config={CONFIGS}/wmt_spa.py:tiny,smoke", "--workdir={tmp}/run",
                  "--config.data.train_path={tmp}/prose.txt"], 1,
     "{tmp}/prose.txt: no usable pair (expected source<TAB>target lines; skipped lines: "
     "no_tab=3 (first at line 2))"),
    ("train.py", [f"--config={CONFIGS}/imdb.py:tiny,smoke", "--workdir={tmp}/run",
                  "--config.data.eval_path={tmp}/named.jsonl"], 1,
     "config.data.eval_path='{tmp}/named.jsonl' without a data.train_path"),
    # Labels that are names: the message says how to declare them.
    ("train.py", [f"--config={CONFIGS}/imdb.py:tiny,smoke", "--workdir={tmp}/run",
                  "--config.data.train_path={tmp}/named.jsonl"], 1,
     "{tmp}/named.jsonl:1: label 'pos' (field 'label') is not one of the labels: expected an "
     "int in [0, 2); data.class_names names the classes, for labels that are names or more "
     "classes than that (class_names=('neg', 'pos'), or ('0', '1', '2') for 3)"),
    # Files given to evaluate.py: a reference file alone was ignored (the test
    # split was scored), so was --split beside --source_file; a missing file
    # was named only after the checkpoint was restored, without its flag.
    ("evaluate.py", ["--workdir={tmp}", "--reference_file={tmp}/a_file"], 1,
     "reference_file='{tmp}/a_file' without a source_file"),
    ("evaluate.py", ["--workdir={tmp}", "--split=validation", "--source_file={tmp}/a_file",
                     "--reference_file={tmp}/a_file"], 1,
     "--split=validation with --source_file={tmp}/a_file: expected one of them"),
    ("evaluate.py", ["--workdir={tmp}", "--source_file={tmp}/en.txt",
                     "--reference_file={tmp}/a_file"], 1,
     "source_file='{tmp}/en.txt': No such file or directory"),
    ("export.py", ["--workdir={tmp}", "--out={tmp}/export"], 1,
     "workdir='{tmp}' has no checkpoint"),
    ("export.py", ["--workdir={tmp}", "--out={tmp}/export", "--platforms=cpu,gpu"], 1,
     "platforms=cpu,gpu: gpu is no platform jax.export lowers for; expected some of cpu, cuda, "
     "rocm, tpu"),
    ("export.py", ["--workdir={tmp}", "--out=gs://bucket/export"], 1,
     "out='gs://bucket/export': expected a local directory"),
])
def test_user_errors_are_one_line(tmp_path, script, args, status, message):
  bad_config = tmp_path / "bad_config.py"
  bad_config.write_text("import no_such_module\n")
  (tmp_path / "a_file").write_text("")
  (tmp_path / "named.jsonl").write_text('{"text": "Loved it.", "label": "pos"}\n' * 20)
  (tmp_path / "prose.txt").write_text("\nOne sentence.\n" * 3)
  fill = lambda s: s.format(tmp=tmp_path, bad_config=bad_config)
  run = _cli(script, *map(fill, args))
  assert run.returncode == status, run.stderr[-3000:]
  assert "Traceback" not in run.stderr
  errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and fill(message) in errors[0], run.stderr[-3000:]
  # Refused before the run directory was written: nothing claims a run is there.
  assert not any((tmp_path / "run" / name).exists()
                 for name in ("config.json", "runs.jsonl", "metrics.jsonl"))


@pytest.mark.parametrize("how", ["--verbose", "TRANSFORMER_RESEARCH_TRACEBACK=1"])
def test_verbose_shows_the_traceback(tmp_path, how):
  (tmp_path / "a_file").write_text("")
  command = [sys.executable, str(ROOT / "launch" / "train.py"),
             f"--config={CONFIGS}/reverse.py:tiny,smoke", f"--workdir={tmp_path}/a_file"]
  env = tiny_setup.subprocess_env()
  if how.startswith("--"):
    command.append(how)
  else:
    env.update([how.split("=")])
  run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
  assert run.returncode == 1
  assert "Traceback (most recent call last)" in run.stderr and "NotADirectoryError" in run.stderr
