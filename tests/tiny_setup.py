"""A tiny seq2seq model, config and batches shared by the engine tests.

Kept tiny (d_model 32, 1+1 layers) so every compile takes seconds on CPU.
"""

import hashlib
import json
import os
import pathlib
import sys

import ml_collections
import numpy as np

from transformer_research import configs
from transformer_research import models
from transformer_research.configs import base as base_config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def subprocess_env(**extra: str) -> dict[str, str]:
  """The environment of a test's subprocess: `tests/` importable (tiny_setup)."""
  return dict(os.environ, PYTHONPATH=str(ROOT / "tests"), **extra)

VOCAB = 24


def config(**train) -> ml_collections.ConfigDict:
  """The base config with dropout off (so runs are comparable) and `train` overrides."""
  c = base_config.get_config()
  c.model.variant = "tiny"
  c.model.dropout_rate = 0.0
  c.model.num_encoder_layers = 1  # One layer of each kind is enough to test the
  c.model.num_decoder_layers = 1  # engine, and halves every compile.
  c.train.batch_size = 16
  c.train.warmup_steps = 2
  c.train.learning_rate = 1e-2
  for k, v in train.items():
    setattr(c.train, k, v)
  return c


def model(c: ml_collections.ConfigDict):
  return models.build(c.model, "seq2seq", input_vocab_size=VOCAB, target_vocab_size=VOCAB)


def batches(n: int, batch_size: int = 16, length: int = 8, seed: int = 0) -> list[dict]:
  """Random token batches with some padding at the ends of rows."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    inputs = rng.integers(1, VOCAB, (batch_size, length)).astype(np.int32)
    targets = rng.integers(1, VOCAB, (batch_size, length)).astype(np.int32)
    lengths = rng.integers(length // 2, length + 1, (batch_size, 1))
    targets = np.where(np.arange(length) < lengths, targets, 0).astype(np.int32)
    out.append({"inputs": inputs, "targets": targets})
  return out


def task_config(**overrides) -> ml_collections.ConfigDict:
  """configs/reverse.py:tiny,smoke made smaller and faster, for loop/launch tests.

  `overrides` are dotted names: `task_config(**{"train.num_steps": 4})`.
  """
  return configs.load_config("reverse:tiny,smoke", {**TASK_OVERRIDES, **overrides})


# The same values as command-line flags, for subprocess runs of launch/train.py.
TASK_OVERRIDES = {
    "model.num_encoder_layers": 1, "model.num_decoder_layers": 1,
    "data.num_train_examples": 200, "data.eval_max_len": 4, "data.num_eval_per_length": 2,
    "eval.decode_examples": 4, "eval.beam_size": 1, "eval.batch_size": 8,
    "train.batch_size": 8, "train.num_steps": 4, "train.log_every_steps": 2,
    "eval.every_steps": 2, "checkpoint.every_steps": 2,
}


def flags(**overrides) -> list[str]:
  return [f"--config.{k}={v}" for k, v in {**TASK_OVERRIDES, **overrides}.items()]


def train_command(workdir, **overrides) -> list[str]:
  """`python launch/train.py` on the tiny reverse config, as a user types it."""
  return [sys.executable, str(ROOT / "launch" / "train.py"),
          f"--config={ROOT / 'configs' / 'reverse.py'}:tiny,smoke", f"--workdir={workdir}",
          *flags(**overrides)]


def as_at_a_terminal(command: list[str]) -> list[str]:
  """`command` (a Python one) with SIGINT as at a terminal, where Ctrl-C is
  KeyboardInterrupt, even when the test runner ignores SIGINT (a background
  job does): a stub resets it and execs the command (no preexec_fn, whose fork
  JAX warns against)."""
  return [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, "
          "signal.SIG_DFL); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
          *command[1:]]


def ticking_clock_command(workdir, **overrides) -> list[str]:
  """`train_command` with the loop's clock advancing 1 s at each reading
  (tests/fault_injection.py), so a time budget runs out after a known amount of
  work on any machine."""
  return [sys.executable, str(ROOT / "tests" / "fault_injection.py"), "clock_tick=1",
          *train_command(workdir, **overrides)[1:]]


# Train-record fields that depend on wall-clock time, so two runs never agree on them.
TIMING = ("steps_per_sec", "tokens_per_sec", "mfu", "data_wait_ms")


def fingerprint(workdir) -> dict[str, str]:
  """sha256 of every file under a run directory: what "nothing changed" compares."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, workdir)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


def records(workdir: str) -> list[dict]:
  """Every record of WORKDIR/metrics.jsonl (strict: a torn line fails the test)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def train_step_hlo(c: ml_collections.ConfigDict) -> str:
  """The compiled train step of `model(c)` on `c.mesh` over all devices, as HLO text."""
  import jax  # Deferred: tiny_setup is also imported where jax must not start early.
  from transformer_research import optim, sharding, training
  model_ = model(c)
  mesh = sharding.make_mesh(c.mesh)
  optimizer, schedule = optim.make_optimizer(c.train)
  batch = batches(1, c.train.batch_size)[0]
  abstract = training.abstract_train_state(model_, optimizer, {k: v[:1] for k, v in batch.items()},
                                           mesh, sharding.PARAM_RULES, 0)
  step = training.jit_train_step(
      training.make_train_step(c, model_, optimizer, schedule, "seq2seq", mesh),
      jax.tree.map(lambda x: x.sharding, abstract), mesh)
  return step.lower(abstract, sharding.global_batch(batch, mesh)).compile().as_text()
