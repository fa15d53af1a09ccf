"""Tests for data/tokenizers.py: round trips, pad id 0, EOS handling, training once."""

import hashlib
import os
import pathlib

import pytest

from transformer_research.data import tokenizers
from transformer_research.data.builders import spa_eng

SHARED = pathlib.Path(__file__).parents[3] / "shared/data/tokenizers"
BPEMB_MODEL = pathlib.Path(os.environ.get("BPEMB_MODEL_FILE", SHARED / "bpemb/en.wiki.bpe.vs10000.model"))
TIKTOKEN_FILE = pathlib.Path(os.environ.get("TIKTOKEN_FILE", SHARED / "tiktoken/cl100k_base.tiktoken"))

# The spa_eng dummy_data fixture stands in for the training split.
_LINES = (pathlib.Path(spa_eng.__file__).parent / "dummy_data" / "spa.txt").read_bytes().splitlines()
PAIRS = [(en, es) for _, en, es in spa_eng.parse_pairs(_LINES)[0]]
SOURCE = [{"inputs": en, "targets": es} for en, es in PAIRS]
VOCAB = 80  # Joint model; a one-side model of this tiny corpus fits at most ~54 pieces.


def _check_interface(tok: tokenizers.Tokenizer, text: str) -> None:
  """pad 0, no EOS from encode, decode stops at EOS and drops pad."""
  ids = tok.encode(text)
  assert tok.pad_id == 0 and 0 not in ids and tok.eos_id not in ids
  assert all(0 < i < tok.vocab_size for i in ids)
  assert tok.decode([*ids, tok.eos_id, *ids, 0, 0]) == tok.decode(ids)
  assert tok.decode([*ids, 0, 0]) == tok.decode(ids)


@pytest.fixture(scope="module")
def joint_spm(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("spm")
  return tokenizers.translation_sentencepiece(SOURCE, model_dir, VOCAB)[0], model_dir


def test_sentencepiece_round_trip_on_normalised_text(joint_spm):
  tok, _ = joint_spm
  assert tok.vocab_size == VOCAB and tok.eos_id == 1 and tok.bos_id == 3
  for text in ["Pregúntale a Tom.", "¿Quién?  Él   corrió.", "Be nice! Ask Tom."]:
    normalised = tok.normalize(text)
    assert tok.decode(tok.encode(normalised)) == normalised
    _check_interface(tok, normalised)


def test_sentencepiece_is_trained_once_and_reused(joint_spm):
  tok, model_dir = joint_spm
  path = model_dir / f"spm_joint_{VOCAB}.model"
  stamp = path.stat().st_mtime_ns

  def fail():
    raise AssertionError("retrained although the model exists")

  again = tokenizers.load_or_train_sentencepiece(path, fail, VOCAB)
  assert path.stat().st_mtime_ns == stamp and again.encode("Hola.") == tok.encode("Hola.")
  with pytest.raises(ValueError, match="vocab_size=64"):
    tokenizers.load_or_train_sentencepiece(path, fail, 64)


def test_sentencepiece_one_model_per_side(tmp_path):
  src, tgt = tokenizers.translation_sentencepiece(SOURCE, tmp_path, 48, joint=False, standardize_text=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["spm_inputs_48_std.model", "spm_targets_48_std.model"]
  assert src.decode(src.encode("ask tom to call me")) == "ask tom to call me"
  assert tgt.decode(tgt.encode("pregúntale a tom")) == "pregúntale a tom"


def test_other_processes_receive_the_model_from_process_0(tmp_path):
  """Process 0 trains and sends the bytes; process 1 (another host, whose disk
  has no model) neither trains nor reads a file."""
  path = tmp_path / "spm.model"
  texts = lambda: (s for pair in PAIRS for s in pair)  # pylint: disable=unnecessary-lambda-assignment
  sent = []
  tok0 = tokenizers.load_or_train_sentencepiece(path, texts, VOCAB, process_index=0,
                                                broadcast=lambda proto: sent.append(proto) or proto)
  assert sent == [path.read_bytes()]

  def receive(proto):
    assert proto is None  # Process 1 contributes nothing.
    return sent[0]

  elsewhere = tmp_path / "host1" / "spm.model"
  tok1 = tokenizers.load_or_train_sentencepiece(
      elsewhere, lambda: pytest.fail("process 1 must not train"), VOCAB, process_index=1,
      broadcast=receive)
  assert tok1.encode("ask tom to call me") == tok0.encode("ask tom to call me")
  assert not elsewhere.parent.exists()
  with pytest.raises(ValueError, match="process_index=1: .* expected a broadcast function"):
    tokenizers.load_or_train_sentencepiece(path, texts, VOCAB, process_index=1)


def test_char_tokenizer_round_trip_and_ids():
  tok = tokenizers.digit_tokenizer("+")
  assert tok.vocab_size == 14 and (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  assert tok.encode("0+9") == [3, 13, 12]
  for text in ["321+54", "0", "99999+1"]:
    assert tok.decode(tok.encode(text)) == text
    _check_interface(tok, text)
  with pytest.raises(ValueError, match="'x' is not in alphabet"):
    tok.encode("1x")
  with pytest.raises(ValueError, match="alphabet='aa'"):
    tokenizers.CharTokenizer("aa")


def test_standardize_is_opt_in_and_matches_the_keras_tutorial():
  assert tokenizers.standardize("¡Hola, Tom! ¿Qué   tal?") == "hola tom qué tal"
  chars = tokenizers.CharTokenizer("abcdefghijklmnopqrstuvwxyz ")
  std = tokenizers.Standardized(chars)
  assert std.decode(std.encode("Hello, World!")) == "hello world"
  assert (std.vocab_size, std.eos_id) == (chars.vocab_size, chars.eos_id)


@pytest.mark.skipif(not BPEMB_MODEL.exists(), reason=f"{BPEMB_MODEL} absent (set BPEMB_MODEL_FILE)")
def test_bpemb_ids_are_shifted_so_pad_is_0():
  tok = tokenizers.BPEmbTokenizer("en", 10000, model_file=BPEMB_MODEL)
  assert tok.vocab_size == 10001 and tok.eos_id == 3 and tok.bos_id == 2
  text = "this is a test of the tokenizer"
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode(tok.encode("Room 101")) == "room 000"  # BPEmb's own preprocessing.
  _check_interface(tok, text)


def test_bpemb_offline_error_names_the_expected_path(tmp_path, monkeypatch):
  import bpemb  # pylint: disable=g-import-not-at-top

  def offline(*args, **kwargs):
    raise ConnectionError("offline")

  monkeypatch.setattr(bpemb, "BPEmb", type("Offline", (), {"model_tpl": bpemb.BPEmb.model_tpl, "__init__": offline}))
  expected = tmp_path / "en" / "en.wiki.bpe.vs10000.model"
  with pytest.raises(FileNotFoundError, match=str(expected)):
    tokenizers.BPEmbTokenizer("en", 10000, cache_dir=tmp_path)


@pytest.mark.skipif(not TIKTOKEN_FILE.exists(), reason=f"{TIKTOKEN_FILE} absent (set TIKTOKEN_FILE)")
def test_tiktoken_from_offline_cache(tmp_path, monkeypatch):
  url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
  (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(TIKTOKEN_FILE.read_bytes())
  monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
  tok = tokenizers.TiktokenTokenizer()
  text = "Tom no sabe dónde vive. <|endoftext|> is plain text here."
  assert tok.decode(tok.encode(text)) == text
  _check_interface(tok, text)
