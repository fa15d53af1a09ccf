"""The transfer recipe through launch/train.py: a masked LM pre-trained on unlabelled text,
then a classifier warm-started from it (checkpoint.init_from + init_rules), its tokenizer
reused, its encoder frozen; local data as people keep it; and every bad input a user
can give it, each one line naming the problem, before anything is written."""

import gzip
import json
import os
import subprocess

import jax
import numpy as np
import pytest

import tiny_setup
from transformer_research import configs
from transformer_research import experiment
from transformer_research import sharding
from transformer_research import warm_start

VOCAB = 40
_WORDS = {0: "bad awful dull boring worst waste poor weak", 1: "good great fun superb best fine nice"}
_COMMON = "the movie film plot actor story scene was and it".split()
# The model and run sizes of both steps: one encoder layer, two steps, tiny batches.
_RUN = {"data.vocab_size": VOCAB, "data.max_input_len": 32, "model.num_encoder_layers": 1,
        "train.num_steps": 2, "train.batch_size": 8, "eval.batch_size": 8,
        "eval.every_steps": 2, "checkpoint.every_steps": 2, "train.log_every_steps": 1}


def _review(rng, label):
  return " ".join(rng.choice(_COMMON + _WORDS[label].split(), 24))


def _command(config, workdir, **overrides):
  return [*tiny_setup.train_command(workdir)[:2], f"--config={tiny_setup.ROOT / 'configs' / config}",
          f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in {**_RUN, **overrides}.items()]]


def _run(command):
  return subprocess.run(command, env=tiny_setup.subprocess_env(), capture_output=True, text=True,
                        timeout=600)


def _refused(run, message):
  assert run.returncode == 1, run.stderr[-3000:]
  assert "Traceback" not in run.stderr, run.stderr[-3000:]
  errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], run.stderr[-3000:]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Unlabelled JSON lines, an aclImdb-style folder tree, and a label<TAB>sentence TSV."""
  root = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  with gzip.open(root / "unsup.jsonl.gz", "wt") as f:
    f.writelines(json.dumps({"text": _review(rng, i % 2)}) + "\n" for i in range(200))
  for split, n in (("train", 40), ("test", 8)):
    for label, name in ((0, "neg"), (1, "pos")):
      (root / "acl" / split / name).mkdir(parents=True)
      for i in range(n):
        (root / "acl" / split / name / f"{i}_{7 * label + 1}.txt").write_text(_review(rng, label))
  (root / "acl" / "train" / "unsup").mkdir()  # As in aclImdb: not a class.
  (root / "acl" / "train" / "unsup" / "0_0.txt").write_text(_review(rng, 0))
  rows = [f"{i % 2}\t{_review(rng, i % 2)}" for i in range(60)]
  (root / "sst.tsv").write_bytes(("label\tsentence\r\n" + "\r\n".join(rows) + "\r\n").encode())
  return root


@pytest.fixture(scope="module")
def mlm_run(data, tmp_path_factory):
  """Step 1: configs/imdb_mlm.py on local unlabelled text (packed, masked)."""
  workdir = tmp_path_factory.mktemp("runs") / "mlm"
  run = _run(_command("imdb_mlm.py:tiny,smoke", workdir, **{
      "data.train_path": data / "unsup.jsonl.gz", "data.eval_path": data / "unsup.jsonl.gz"}))
  assert run.returncode == 0, run.stderr[-3000:]
  record = [json.loads(line) for line in open(workdir / "metrics.jsonl")][-1]
  assert record["split"] == "validation" and record["perplexity"] > 1
  return workdir


def _finetune(data, workdir, mlm_run, **overrides):
  return _command("imdb_finetune.py:tiny,smoke", workdir, **{
      "data.train_path": data / "acl" / "train", "data.eval_path": data / "acl" / "test",
      "data.class_names": "('neg', 'pos')", "checkpoint.init_from": mlm_run, **overrides})


def test_a_classifier_starts_from_the_masked_lm_with_its_tokenizer(data, mlm_run, tmp_path):
  """The README's fine-tuning command on aclImdb-style folders, encoder frozen."""
  workdir = tmp_path / "ft"
  run = _run(_finetune(data, workdir, mlm_run, **{"train.frozen": '("^(embed|encoder)/",)'}))
  assert run.returncode == 0, run.stderr[-3000:]
  assert "Training SentencePiece" not in run.stderr  # Reused, not retrained.
  spm = "spm_imdb_40.model"
  assert (workdir / spm).read_bytes() == (mlm_run / "spm_mlm_imdb_40.model").read_bytes()
  fresh = [line for line in run.stderr.splitlines() if "start fresh" in line]
  assert len(fresh) == 1 and fresh[0].endswith(
      "4 parameters start fresh (no checkpoint.init_rules entry loads them): head/linear_0/b, "
      "head/linear_0/w, head/linear_1/b, head/linear_1/w")
  origin = json.loads(open(workdir / "runs.jsonl").readline())["origin"]
  assert origin == (f"params from {mlm_run}/checkpoints step 2 by checkpoint.init_rules: 19 "
                    f"loaded, 4 fresh; tokenizer {spm} from {mlm_run}/spm_mlm_imdb_40.model")
  source, tuned = experiment.load_run(str(mlm_run)), experiment.load_run(str(workdir))
  source, tuned = jax.device_get(source.params), jax.device_get(tuned.params)
  for name, module in tuned.items():  # Frozen and loaded: bit-identical after training.
    for param, value in module.items():
      if name.startswith("head/"):
        assert name not in source
      else:
        np.testing.assert_array_equal(value, source[name][param], err_msg=f"{name}/{param}")
  assert "(unsup)" not in run.stderr and "ignoring ['unsup']" in run.stderr


def test_a_tsv_with_other_column_names_trains_with_the_pretrained_tokenizer(data, mlm_run,
                                                                           tmp_path):
  """The from-scratch baseline: another layout (label<TAB>sentence, CRLF), the tokenizer
  of the masked LM (data.tokenizer_from) and none of its weights."""
  workdir = tmp_path / "scratch"
  run = _run(_command("imdb_finetune.py:tiny,smoke", workdir, **{
      "data.train_path": data / "sst.tsv", "data.eval_path": data / "sst.tsv",
      "data.tokenizer_from": mlm_run}))
  assert run.returncode == 0, run.stderr[-3000:]
  assert "text field 'sentence', label field 'label', detected from the TSV header" in run.stderr
  origin = json.loads(open(workdir / "runs.jsonl").readline())["origin"]
  assert origin == f"from scratch; tokenizer spm_imdb_40.model from {mlm_run}/spm_mlm_imdb_40.model"


@pytest.mark.parametrize("overrides,message", [
    ({"checkpoint.init_rules": '(("^nope/", "x/"),)'},
     "config.checkpoint.init_rules regex '^nope/' matches no parameter of this model"),
    ({"model.pooling": "cls", "checkpoint.init_rules": '((".*/embeddings$", "embed/embeddings"),)'},
     "config.checkpoint.init_rules: parameter cls/embeddings has shape (1, 32) dtype float32, "
     "but embed/embeddings in checkpoint step 2 in {mlm}/checkpoints has shape (40, 32) dtype "
     "float32 (also loaded into embed/embeddings (40, 32))"),
    ({"checkpoint.init_rules": '(("^encoder/(.*)", "decoder/\\\\1"),)'},
     "parameter encoder/layer_00/attn/key/b would load decoder/layer_00/attn/key/b, which "
     "checkpoint step 2 in {mlm}/checkpoints does not have"),
    ({"data.vocab_size": 80},
     "config.checkpoint.init_from='{mlm}' was trained with a vocabulary of 40 ids "
     "(data.tokenizer='sentencepiece', standardize=False); this config reads 80"),
    ({"checkpoint.init_from": "", "data.tokenizer_from": "{mlm}", "data.vocab_size": 80},
     "config.data.tokenizer_from='{mlm}' was trained with a vocabulary of 40 ids"),
])
def test_a_bad_warm_start_is_one_line_and_writes_nothing(data, mlm_run, tmp_path, overrides,
                                                         message):
  overrides = {k: str(v).format(mlm=mlm_run) for k, v in overrides.items()}
  workdir = tmp_path / "ft"
  _refused(_run(_finetune(data, workdir, mlm_run, **overrides)), message.format(mlm=mlm_run))
  assert not [p for p in os.listdir(workdir) if p not in ("checkpoints", "tensorboard")]
  assert not os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").exists() else True


def test_freezing_every_parameter_is_an_error(tmp_path):
  run = _run(tiny_setup.train_command(tmp_path / "run", **{"train.frozen": '(".*",)'}))
  _refused(run, "freezes every parameter")
  assert "nothing to train" in run.stderr and not (tmp_path / "run").exists()


def test_a_translator_encoder_from_the_masked_lm(mlm_run, tmp_path):
  """Library level (no spa-eng data in tests): the rules that rename the embedding."""
  config = configs.load_config("wmt_spa:tiny,smoke", {
      "data.vocab_size": VOCAB, "data.joint_vocab": False, "model.num_encoder_layers": 1,
      "checkpoint.init_from": str(mlm_run)})
  exp = experiment.Experiment(config)
  fresh = jax.device_get(exp.init_state().params)
  rules = ((r"^source_embed/", "embed/"), (r"^encoder/", "encoder/"))
  params, origin = warm_start.load(str(mlm_run), rules, exp.abstract_state.params,
                                   exp.init_state().params)
  params, source = jax.device_get(params), jax.device_get(experiment.load_run(str(mlm_run)).params)
  np.testing.assert_array_equal(params["source_embed"]["embeddings"],
                                source["embed"]["embeddings"])
  np.testing.assert_array_equal(params["encoder/layer_00/attn/query"]["w"],
                                source["encoder/layer_00/attn/query"]["w"])
  np.testing.assert_array_equal(params["decoder/ln_final"]["scale"], fresh["decoder/ln_final"]["scale"])
  names = [sharding.path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  loaded = sum(n.startswith(("source_embed/", "encoder/")) for n in names)
  assert loaded == len(source["embed"]) + sum(  # Every encoder parameter of the source.
      len(v) for k, v in source.items() if k.startswith("encoder/"))
  assert origin.endswith(f"by checkpoint.init_rules: {loaded} loaded, {len(names) - loaded} fresh")
  # Its input side reads English with the masked LM's tokenizer; the target side trains its own.
  files = warm_start.tokenizers_to_adopt(config, str(tmp_path))
  assert files == [(f"{mlm_run}/spm_mlm_imdb_{VOCAB}.model",
                    f"{tmp_path}/spm_inputs_{VOCAB}.model")] and not os.listdir(tmp_path)
  assert warm_start.copy_tokenizers(files).startswith(f"tokenizer spm_inputs_{VOCAB}.model from")
  assert os.listdir(tmp_path) == [f"spm_inputs_{VOCAB}.model"]
  joint = configs.load_config("wmt_spa:tiny,smoke", {
      "data.vocab_size": VOCAB, "checkpoint.init_from": str(mlm_run)})
  with pytest.raises(ValueError, match="a joint vocabulary would read the targets with it"):
    warm_start.tokenizers_to_adopt(joint, str(tmp_path / "joint"))
