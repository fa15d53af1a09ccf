"""evaluate / translate / plot CLIs on a one-step `reverse:tiny` run.

The run is trained once per module through the real loop (so the workdir
holds exactly what users get); the CLIs run as subprocesses where what is
tested is the command line itself (stdin, exit status, messages).
"""

import gzip
import json
import os
import pathlib
import pty
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from transformer_research import configs
from transformer_research import evaluation
from transformer_research import experiment
from transformer_research import inference
from transformer_research import plots
from transformer_research import train_loop
import tiny_setup

REPO = pathlib.Path(__file__).parents[2]


def tiny_config(name: str):
  return configs.load_config(f"{name}:tiny,smoke", {
      "train.num_steps": 1, "train.batch_size": 8, "eval.batch_size": 8,
      "eval.decode_examples": 8, "eval.beam_size": 1})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("reverse"))
  train_loop.train_and_evaluate(tiny_config("reverse"), path)
  return path


def cli(script: str, *args: str, stdin: str = "", env=None) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO / "launch" / script), *args],
                        input=stdin, capture_output=True, text=True, timeout=300, env=env)


def test_evaluate_run_appends_record_and_writes_report(workdir):
  record, report = evaluation.evaluate_run(workdir, "test", num_examples=8)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = json.loads(f.read().splitlines()[-1])
  assert last == record and last["split"] == "test" and last["step"] == 1
  assert {"loss", "accuracy", "sequence_accuracy", "decoded_examples"} <= set(last)
  assert report == os.path.join(workdir, "eval_test_1.md")
  text = pathlib.Path(report).read_text()
  assert "| sequence_accuracy |" in text and "- **input**:" in text
  assert "; beam 1, length penalty 0.6\n" in text  # How the outputs were decoded.


def test_translate_reads_stdin_and_keeps_blank_lines(workdir):
  result = cli("translate.py", f"--workdir={workdir}", stdin="123\n\n4567\n")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 3 and lines[1] == ""
  assert set("".join(lines)) <= set("0123456789")  # Decoded with the task's vocab.


def test_ctrl_c_at_the_translate_prompt_is_one_line(tmp_path):
  """translate.py waiting for sentences at a terminal; Ctrl-C ends it without a traceback,
  as a process killed by SIGINT (so a shell script stops too)."""
  terminal, child_end = pty.openpty()
  process = subprocess.Popen(
      tiny_setup.as_at_a_terminal(
          [sys.executable, str(REPO / "launch" / "translate.py"), f"--workdir={tmp_path}"]),
      stdin=child_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  os.close(child_end)
  try:
    before = [process.stderr.readline()]
    while before[-1] and not before[-1].startswith("reading one text per line from stdin"):
      before.append(process.stderr.readline())
    assert before[-1], "".join(before)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
  finally:
    process.kill()
    os.close(terminal)
  assert process.returncode == -signal.SIGINT
  assert stderr.splitlines() == ["interrupted (Ctrl-C)"], stderr


def test_generate_text_matches_batching(workdir):
  run = experiment.load_run(workdir)
  exp, params = run.experiment, run.params
  one_by_one = [inference.generate_text(exp, params, [s])[0] for s in ("12", "345")]
  assert inference.generate_text(exp, params, ["12", "345"]) == one_by_one


def test_a_run_trained_on_a_mesh_of_other_devices_is_read_on_the_devices_there(tmp_path):
  """A pod run's mesh ((2, 4, 1) here, on the 8 test devices) cannot be formed on
  one host or a laptop (3 devices here): translate.py and evaluate.py said that
  no checkpoint could be read. Its eval batch (8 rows) did not split over 3
  devices either: a JAX sharding error."""
  config = tiny_config("reverse")
  config.mesh.shape = (2, 4, 1)
  train_loop.train_and_evaluate(config, str(tmp_path))
  train_loop_loss = tiny_setup.records(str(tmp_path))[-1]["loss"]
  three_devices = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3")
  translated = cli("translate.py", f"--workdir={tmp_path}", "123", env=three_devices)
  evaluated = cli("evaluate.py", f"--workdir={tmp_path}", "--split=validation",
                  "--num_examples=8", env=three_devices)
  for result in (translated, evaluated):
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("the run trained on another mesh (config.mesh.shape=(2, 4, 1) does not divide the "
            "3 devices): reading it with data parallelism over the 3 devices here") in result.stderr
  assert set(translated.stdout.strip()) <= set("0123456789")
  assert ("config.eval.batch_size=8 read as 9: a multiple of the 3 batch shards here"
          in evaluated.stderr)
  record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
  assert record["step"] == 1 and record["writer"] == "evaluate.py"
  assert record["loss"] == pytest.approx(train_loop_loss, rel=1e-5)  # The padding counts for nothing.


def test_plot_writes_pngs(workdir, tmp_path):
  result = cli("plot.py", f"--workdir={workdir}", f"--out_dir={tmp_path}")
  assert result.returncode == 0, result.stderr
  written = sorted(p.name for p in tmp_path.glob("*.png"))
  assert {"loss.png", "accuracy.png", "per_length_accuracy.png"} <= set(written)
  assert all((tmp_path / name).stat().st_size > 1000 for name in written)
  # A file given as --out_dir was `[Errno 17] File exists` (from mkdir).
  refused = cli("plot.py", f"--workdir={workdir}", f"--out_dir={tmp_path / 'loss.png'}")
  assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1] == (
      f"error: out_dir='{tmp_path / 'loss.png'}' is a file: expected a directory for the PNGs "
      "(new or existing)"), refused.stderr[-2000:]


def test_scores_of_one_step_decoded_two_ways_stay_apart(workdir, tmp_path):
  """Greedy and beam-4 test scores of one checkpoint: metrics.jsonl says which
  is which, and the plots draw both (the later one hid the earlier)."""
  for flags in ([], ["--beam_size=2"]):
    result = cli("evaluate.py", f"--workdir={workdir}", "--split=test", "--num_examples=8",
                 *flags)
    assert result.returncode == 0, result.stderr
  records = plots.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  assert [r["decoding"] for r in records[-2:]] == ["greedy", "beam 2"]
  lines = plots.series(records)
  assert {("test (greedy)", "sequence_accuracy"),
          ("test (beam 2)", "sequence_accuracy")} <= set(lines)
  assert ("train", "loss") in lines  # In-loop records keep their split's name.
  # The loss does not depend on the search: one line for both records.
  assert ("test", "loss") in lines and ("test (greedy)", "loss") not in lines
  result = cli("plot.py", f"--workdir={workdir}", f"--out_dir={tmp_path}")
  assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script,args,stdin,message", [
    ("translate.py", ["hello"], "", "has no checkpoint: expected the workdir of a training run"),
    ("evaluate.py", [], "", "has no checkpoint: expected the workdir of a training run"),
    ("plot.py", [], "", "has no metrics.jsonl"),
    ("translate.py", [], "\n  \n", "empty input: expected a text argument"),
])
def test_cli_errors_are_clear(tmp_path, script, args, stdin, message):
  result = cli(script, f"--workdir={tmp_path}", *args, stdin=stdin)
  assert result.returncode == 1
  assert message in result.stderr, result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,message", [
    (["--beam_size=0"], "error: beam_size=0: expected 1 (greedy) or more"),
    (["--max_length=0"], "error: max_length=0: expected 1 or more tokens"),
    (["--top_p=0.9"], "error: temperature=0.0, top_k=0, top_p=0.9: expected the defaults for "
                      "translation (beam search); sampling is for language models."),
])
def test_a_zero_decoding_option_is_an_error_not_the_default(workdir, args, message):
  """0 used to read as "not given" and decode with the run's default."""
  result = cli("translate.py", f"--workdir={workdir}", *args, "123")
  assert result.returncode == 1 and result.stdout == ""
  assert message in result.stderr.splitlines(), result.stderr[-2000:]


def test_evaluate_with_no_examples_to_decode_records_no_decoded_scores(workdir):
  """--num_examples=0 used to record sequence accuracy 0 for nothing decoded."""
  result = cli("evaluate.py", f"--workdir={workdir}", "--split=validation", "--num_examples=0")
  assert result.returncode == 0, result.stderr[-2000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = json.loads(f.read().splitlines()[-1])
  assert last["split"] == "validation" and {"loss", "accuracy"} <= set(last)
  assert not {"sequence_accuracy", "decoded_examples", "decoding"} & set(last), last
  refused = cli("evaluate.py", f"--workdir={workdir}", "--split=validation", "--num_examples=-2")
  assert refused.returncode == 1
  assert "error: num_examples=-2: expected -1 (the whole split), 0 (no decoding)" in refused.stderr


def test_a_classifier_labels_texts_as_its_batches_read_them():
  """Bucket-width padding changes no probability, and a text is cut as in
  training: each row's label is the argmax of the model's own logits over
  the text padded to data.max_input_len."""
  classifier = experiment.Experiment(tiny_config("difference"))
  with pytest.raises(ValueError, match="kind='classify' cannot translate or continue"):
    inference.generate_text(classifier, None, ["1-2"])
  params = classifier.model.init(jax.random.key(0), {"inputs": np.ones((1, 8), np.int32)})
  texts = ["1-2", "98765-4321", "5-5", "1" * 40 + "-3"]  # The last is cut to max_input_len.
  probabilities = inference.classify(classifier, params, texts, batch_size=8)
  width = classifier.config.data.max_input_len
  rows = np.zeros((len(texts), width), np.int32)
  for i, text in enumerate(texts):
    ids = classifier.task.classifier_inputs(text)
    rows[i, :len(ids)] = ids
  expected = jax.nn.softmax(classifier.model.apply(params, None, {"inputs": rows}))
  np.testing.assert_allclose(probabilities, expected, atol=1e-5)
  labels = inference.label_texts(classifier, params, ["1-2", "", "98765-4321"])
  assert labels[1] == "" and [line.split("\t")[0] for line in labels[::2]] == [
      str(k) for k in expected[:2].argmax(1)]


def test_bad_step_and_split_are_named(workdir):
  with pytest.raises(ValueError, match=r"step=7: no checkpoint of that step .* \[1\]"):
    experiment.load_run(workdir, step=7)
  with pytest.raises(ValueError, match="split='dev'"):
    evaluation.evaluate_run(workdir, "dev")


def write_reviews(path: pathlib.Path) -> pathlib.Path:
  """300 JSON-lines reviews of 12 words from a vocabulary of 18."""
  words = ["good", "bad", "movie", "plot", "actor", "long", "fun", "boring", "story",
           "music", "ending", "great", "awful", "scene", "film", "the", "a", "was"]
  rng = np.random.default_rng(0)
  with open(path, "w") as f:
    for _ in range(300):
      f.write(json.dumps({"text": " ".join(rng.choice(words, 12))}) + "\n")
  return path


def test_lm_continues_prompts(tmp_path):
  """translate.py's library path for an LM run: prompts in, continuations out."""
  write_reviews(tmp_path / "reviews.jsonl")
  c = tiny_config("lm_imdb")
  c.data.train_path, c.data.vocab_size, c.data.max_target_len = (
      str(tmp_path / "reviews.jsonl"), 40, 16)
  exp = experiment.Experiment(c, str(tmp_path))
  params = exp.model.init(jax.random.key(0), {"targets": np.ones((1, 4), np.int32)})
  greedy = inference.generate_text(exp, params, ["the movie was", "", "a"])
  assert greedy[1] == "" and all(isinstance(t, str) for t in greedy)
  kw = dict(temperature=1.0, top_k=10, seed=3)
  sampled = inference.generate_text(exp, params, ["the movie was"], **kw)
  assert sampled == inference.generate_text(exp, params, ["the movie was"], **kw)
  # Equal prompts in two batches: each batch folds its index into the key.
  two = inference.continue_prompts(exp, params, ["the movie was"] * 16, max_len=16,
                                   batch_size=8, temperature=1.0, rng=jax.random.key(3))
  assert two[0] != two[8]
  with pytest.raises(ValueError, match="max_length=2: expected more than the longest prompt"):
    inference.generate_text(exp, params, ["the movie was a long film"], max_len=2)
  for bad, message in ((dict(top_p=0.0), r"top_p=0.0: expected a float in \(0, 1\]"),
                       (dict(top_k=-1), "top_k=-1: expected an integer >= 0")):
    with pytest.raises(ValueError, match=message):
      inference.generate_text(exp, params, ["the movie"], temperature=1.0, **bad)


def test_translate_samples_from_an_lm_run_and_refuses_what_it_would_ignore(tmp_path):
  """An LM run trained and sampled from the command line. --top_p without a
  temperature, or a bad top-k / top-p, used to decode greedily without a word."""
  reviews = write_reviews(tmp_path / "reviews.jsonl")
  workdir = tmp_path / "lm"
  trained = cli("train.py", f"--config={REPO / 'configs' / 'lm_imdb.py'}:tiny,smoke",
                f"--workdir={workdir}", f"--config.data.train_path={reviews}",
                "--config.data.vocab_size=40", "--config.data.max_target_len=16",
                "--config.train.num_steps=2", "--config.eval.every_steps=2",
                "--config.checkpoint.every_steps=2")
  assert trained.returncode == 0, trained.stderr[-3000:]
  sample = ["--temperature=0.8", "--top_k=5", "--seed=1", "the movie", "a"]
  first = cli("translate.py", f"--workdir={workdir}", *sample)
  assert first.returncode == 0, first.stderr[-3000:]
  assert len(first.stdout.splitlines()) == 2
  assert cli("translate.py", f"--workdir={workdir}", *sample).stdout == first.stdout  # Seeded.
  # Bad top-k / top-p values: test_lm_continues_prompts (each CLI call loads the run).
  for args, message in ((["--top_p=0.9"], "top_k=0, top_p=0.9 filter sampled tokens: "
                                          "expected a temperature > 0 with them"),
                        (["--temperature=-1"], "temperature=-1.0: expected 0 (greedy) or more")):
    refused = cli("translate.py", f"--workdir={workdir}", *args, "the movie")
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"error: {message}" in refused.stderr, refused.stderr[-2000:]
  # The report's samples continue the first words of a few texts: eight words
  # are about 20 tokens here, and evaluate.py stopped after its metrics with
  # "max_len=16: expected more than the longest prompt".
  evaluated = cli("evaluate.py", f"--workdir={workdir}", "--split=validation")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  samples = (workdir / "eval_validation_2.md").read_text().split("## Samples")[1]
  assert samples.count("- **input**: ") == 5 and samples.count(" ...\n") == 5, samples
  # A beam or a number of examples to decode meant nothing here: ignored, the
  # report named eval_validation_2_beam2.md all the same.
  refused = cli("evaluate.py", f"--workdir={workdir}", "--split=validation", "--beam_size=2")
  assert refused.returncode == 1 and not (workdir / "eval_validation_2_beam2.md").exists()
  assert refused.stderr.strip().splitlines()[-1] == (
      "error: beam_size=2: this run's model has kind='lm', which decodes nothing and scores "
      "every example of the split; expected no beam_size, and num_examples -1 (the whole split) "
      "or none"), refused.stderr[-2000:]


def test_the_imdb_cpu_recipe_runs_as_the_readme_says_on_local_files(tmp_path):
  """`imdb.py:cpu` from the command line: trains on JSON-lines reviews, keeps the
  checkpoint best by validation accuracy next to the latest, and evaluate.py
  scores the test file (the README's two commands, at smoke size)."""
  rng = np.random.default_rng(0)
  words = ["movie", "plot", "actor", "story", "music", "ending", "scene", "film", "the", "was"]
  for name, n in (("train", 400), ("test", 64)):
    with gzip.open(tmp_path / f"{name}.jsonl.gz", "wt") as f:
      for label in rng.integers(0, 2, n):
        text = rng.choice(words + [["awful", "boring"], ["great", "fun"]][label], 20)
        f.write(json.dumps({"text": " ".join(text), "label": int(label)}) + "\n")
  run = tmp_path / "run"
  train = cli("train.py", f"--config={REPO / 'configs' / 'imdb.py'}:tiny,cpu,smoke",
              f"--workdir={run}", f"--config.data.train_path={tmp_path / 'train.jsonl.gz'}",
              f"--config.data.eval_path={tmp_path / 'test.jsonl.gz'}",
              "--config.data.vocab_size=40", "--config.train.num_steps=40",
              "--config.checkpoint.max_to_keep=1")
  assert train.returncode == 0, train.stderr[-3000:]
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  validation = {r["step"]: r["accuracy"] for r in records if r["split"] == "validation"}
  assert sorted(validation) == [10, 20, 30, 40]
  kept = {int(p.name) for p in (run / "checkpoints").iterdir()}
  top = max(validation.values())
  best_steps = {step for step, accuracy in validation.items() if accuracy == top}
  assert 40 in kept and len(kept - {40}) <= 1  # The latest, for resuming, and one best.
  assert (kept - {40}) <= best_steps and (kept != {40} or 40 in best_steps)
  evaluate = cli("evaluate.py", f"--workdir={run}", "--split=test", "--num_examples=-1")
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  assert "accuracy: " in evaluate.stdout and (run / "eval_test_40.md").is_file()
  report = (run / "eval_test_40.md").read_text()
  assert "model `tiny` (classify)\n" in report and "beam" not in report  # Nothing decoded.
  # New text labelled from the command line: its label (the files' numbers:
  # no data.class_names) and the probability of it; a blank line stays blank.
  labelled = cli("translate.py", f"--workdir={run}", stdin="great fun film\n\nawful boring\n")
  assert labelled.returncode == 0, labelled.stderr[-3000:]
  lines = labelled.stdout.splitlines()
  assert len(lines) == 3 and lines[1] == "", lines
  for line in lines[::2]:
    label, probability = line.split("\t")
    assert label in ("0", "1") and 0.5 <= float(probability) <= 1, line
  refused = cli("translate.py", f"--workdir={run}", "--beam_size=2", "great fun film")
  assert refused.returncode == 1 and refused.stdout == ""
  assert refused.stderr.strip().splitlines()[-1] == (
      "error: --beam_size: this run's model is a classifier, which labels each text and "
      "generates nothing; expected none of --beam_size, --max_length, --temperature, --top_k, "
      "--top_p, --seed"), refused.stderr[-2000:]

  # The run evaluated on another machine, whose data is elsewhere: config.json
  # names the training machine's paths, and the flags give this one's.
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  for name in ("train.jsonl.gz", "test.jsonl.gz"):
    (tmp_path / name).rename(elsewhere / name)
  missing = cli("evaluate.py", f"--workdir={run}", "--split=test", "--num_examples=-1")
  assert missing.returncode == 1, missing.stderr[-3000:]
  assert str(tmp_path / "train.jsonl.gz") in missing.stderr.splitlines()[-1]
  moved = cli("evaluate.py", f"--workdir={run}", "--split=test", "--num_examples=-1",
              f"--train_path={elsewhere / 'train.jsonl.gz'}",
              f"--eval_path={elsewhere / 'test.jsonl.gz'}")
  assert moved.returncode == 0, moved.stderr[-3000:]
  first, second = [json.loads(line) for line in
                   (run / "metrics.jsonl").read_text().splitlines() if "writer" in line]
  assert second["accuracy"] == first["accuracy"] and second["loss"] == first["loss"]


def test_translation_trains_and_evaluates_on_local_pairs_as_the_readme_says(tmp_path):
  """wmt_spa on the user's own source<TAB>target files (the Tatoeba / Anki
  layout, its attribution column too): trained, validated at the last step
  and scored on the test file from the command line, with no TFDS dataset
  opened. (Which pairs are held out: tests/data/test_tasks.py.)"""
  rng = np.random.default_rng(0)
  words = dict(zip("the cat dog eats sees a big house red fish".split(),
                   "el gato perro come ve un grande casa rojo pez".split()))
  for name, n in (("pairs.tsv", 300), ("test.tsv", 12)):
    with open(tmp_path / name, "w") as f:
      for _ in range(n):
        source = list(rng.choice(list(words), rng.integers(2, 6)))
        f.write(f"{' '.join(source)}\t{' '.join(words[w] for w in source)}\tCC-BY 2.0\n")
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"))
  run = tmp_path / "run"
  train = cli("train.py", f"--config={REPO / 'configs' / 'wmt_spa.py'}:tiny,smoke",
              f"--workdir={run}", f"--config.data.train_path={tmp_path / 'pairs.tsv'}",
              f"--config.data.eval_path={tmp_path / 'test.tsv'}", "--config.data.vocab_size=40",
              "--config.train.num_steps=2", "--config.checkpoint.every_steps=2", env=env)
  assert train.returncode == 0, train.stderr[-3000:]
  assert "/pairs.tsv: 300 pairs; skipped bad lines: none" in train.stderr
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  assert any(r.get("split") == "validation" and "bleu" in r for r in records), records
  evaluate = cli("evaluate.py", f"--workdir={run}", "--split=test", "--num_examples=-1",
                 "--beam_size=1", env=env)
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  assert "bleu: " in evaluate.stdout and (run / "eval_test_2_beam1.md").is_file()
  scored = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
  assert scored["split"] == "test" and scored["decoded_examples"] == 12, scored
  assert not (tmp_path / "tfds").exists()


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
  """A `reverse:tiny` run that kept its checkpoints of steps 1, 2 and 3."""
  path = str(tmp_path_factory.mktemp("reverse3"))
  config = tiny_config("reverse")
  config.train.num_steps, config.checkpoint.every_steps = 3, 1
  train_loop.train_and_evaluate(config, path)
  assert [int(p.name) for p in sorted(pathlib.Path(path, "checkpoints").iterdir())] == [1, 2, 3]
  return path


def test_evaluate_averages_the_last_checkpoints(three_checkpoints):
  """`--average_last=3` scores the mean of steps 1-3's parameters, says so in the record
  and in its own report, and leaves the single-checkpoint report alone."""
  run = pathlib.Path(three_checkpoints)
  result = cli("evaluate.py", f"--workdir={run}", "--average_last=3", "--num_examples=8")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "averaged_steps: 1,2,3" in result.stdout
  record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
  assert record["step"] == 3 and record["averaged_steps"] == "1,2,3"
  report = (run / "eval_test_3_avg3.md").read_text()
  assert "parameters averaged over steps 1, 2, 3" in report
  assert not (run / "eval_test_3.md").exists()

  averaged = experiment.load_run(str(run), average_last=3)
  singles = [experiment.load_run(str(run), step).params for step in (1, 2, 3)]
  assert averaged.step == 3 and averaged.averaged_steps == (1, 2, 3)
  for got, *each in zip(jax.tree.leaves(averaged.params), *map(jax.tree.leaves, singles)):
    np.testing.assert_allclose(got, np.mean(each, axis=0), rtol=1e-6, atol=1e-7)
  assert not np.array_equal(jax.tree.leaves(averaged.params)[0], jax.tree.leaves(singles[2])[0])


def test_translate_with_the_averaged_parameters(three_checkpoints):
  """translate.py --average_last=3 decodes with the same parameters evaluate.py scores."""
  result = cli("translate.py", f"--workdir={three_checkpoints}", "--average_last=3", "123", "4567")
  assert result.returncode == 0, result.stderr[-3000:]
  run = experiment.load_run(three_checkpoints, average_last=3)
  assert result.stdout.splitlines() == inference.generate_text(run.experiment, run.params,
                                                               ["123", "4567"])
  refused = cli("translate.py", f"--workdir={three_checkpoints}", "--average_last=4", "123")
  assert refused.returncode == 1 and "average_last=4: " in refused.stderr, refused.stderr[-2000:]


@pytest.mark.parametrize("args,fault,evaluated", [
    ([], "saved_over=3", "4"),
    (["--average_last=3"], "saved_over=1", "2,3,4"),  # The oldest goes first.
])
def test_evaluating_a_run_that_saves_meanwhile_takes_the_newest_checkpoint(
    three_checkpoints, tmp_path, args, fault, evaluated):
  """A run still training in the directory saves a newer checkpoint and deletes
  the oldest (max_to_keep) while evaluate.py reads it: the newest is read, as
  asked, not the one before (a crash when none was left)."""
  run = tmp_path / "run"
  shutil.copytree(three_checkpoints, run)
  result = subprocess.run([sys.executable, str(REPO / "tests" / "fault_injection.py"), fault,
                           str(REPO / "launch" / "evaluate.py"), f"--workdir={run}",
                           "--num_examples=8", *args], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "was deleted while it was read" in result.stderr
  record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
  assert str(record["step"]) == evaluated.split(",")[-1]
  assert record.get("averaged_steps", str(record["step"])) == evaluated


def test_evaluating_a_step_deleted_meanwhile_is_one_line_and_writes_nothing(
    three_checkpoints, tmp_path):
  run = tmp_path / "run"
  shutil.copytree(three_checkpoints, run)
  result = subprocess.run([sys.executable, str(REPO / "tests" / "fault_injection.py"),
                           "saved_over=2", str(REPO / "launch" / "evaluate.py"),
                           f"--workdir={run}", "--step=2", "--num_examples=8"],
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stdout[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert errors == [f"error: checkpoint step 2 in {run} was deleted while it was read (a run "
                    "training there keeps its newest config.checkpoint.max_to_keep); the steps "
                    "saved now: [1, 3, 4]"], result.stderr[-2000:]
  assert sorted(p.name for p in run.iterdir()) == sorted(
      p.name for p in pathlib.Path(three_checkpoints).iterdir())  # No report.
  assert (run / "metrics.jsonl").read_bytes() == (
      pathlib.Path(three_checkpoints) / "metrics.jsonl").read_bytes()


@pytest.mark.parametrize("args,message", [
    (["--average_last=4"], "average_last=4: {run} has 3 checkpoint(s) up to step 3 ([1, 2, 3]); "
                           "expected at least 4"),
    (["--average_last=3", "--step=2"], "average_last=3: {run} has 2 checkpoint(s) up to step 2"),
    (["--average_last=0"], "average_last=0: expected the number of checkpoints to average, >= 1"),
    (["--average_last=3", "corrupt"], "checkpoint step 1 in {run} cannot be read"),
])
def test_averaging_what_cannot_be_averaged_is_one_line_and_writes_nothing(
    three_checkpoints, tmp_path, args, message):
  run = tmp_path / "run"
  shutil.copytree(three_checkpoints, run)
  if "corrupt" in args:  # Truncate step 1's parameter files; steps 2 and 3 are intact.
    args = [a for a in args if a != "corrupt"]
    for path in (run / "checkpoints" / "1" / "params").rglob("*"):
      if path.is_file():
        path.write_bytes(b"")
  before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
  result = cli("evaluate.py", f"--workdir={run}", "--num_examples=8", *args)
  assert result.returncode == 1, result.stdout[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message.format(run=run) in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
  assert after == before  # No record, no report, nothing moved.
