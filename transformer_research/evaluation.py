"""Task metrics beyond loss and token accuracy: what a run is judged by.

The training loop computes loss / token accuracy / perplexity with its eval
step and calls `evaluate` for the rest, every `config.eval.every_steps`:

* seq2seq: decode (cached beam search, `config.eval`), detokenize, and score
  the text: sequence exact-match accuracy against any reference, sacreBLEU
  BLEU and chrF with every reference of a source (one English sentence has
  several Spanish translations), and for the synthetic tasks a per-length
  table of exact-match accuracy (length generalisation);
* classify: accuracy per input length (the `difference` task trains on short
  numbers and tests on longer ones).

Scores are computed on detokenized text with sacreBLEU's own tokenization, so
BLEU is comparable across tokenizers and with published numbers.

Multi-host: every process holds the same examples list; each global batch is
split by rows, each process feeds its rows (`sharding.global_batch`), decodes
its share on its devices, and the tokens are all-gathered before scoring, so
every process computes the same metrics (process 0 writes them).
"""

import collections
import functools
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import sacrebleu

from transformer_research import inference
from transformer_research import losses
from transformer_research import metrics as metrics_lib
from transformer_research import sharding


def bleu_and_chrf(hypotheses: Sequence[str],
                  references: Sequence[Sequence[str]]) -> dict[str, float]:
  """Corpus sacreBLEU BLEU and chrF (0-100), several references per example.

  Args:
    hypotheses: N detokenized outputs.
    references: N lists of references; lists may differ in length.
  """
  _check_pairs(hypotheses, references)
  if not hypotheses:
    return {"bleu": 0.0, "chrf": 0.0}
  # sacreBLEU takes reference *streams*; None marks a missing reference.
  width = max(len(r) for r in references)
  streams = [[r[i] if i < len(r) else None for r in references] for i in range(width)]
  return {"bleu": sacrebleu.corpus_bleu(list(hypotheses), streams).score,
          "chrf": sacrebleu.corpus_chrf(list(hypotheses), streams).score}


def exact_match(hypotheses: Sequence[str],
                references: Sequence[Sequence[str]]) -> np.ndarray:
  """[N] bool: the output equals one of its references (outer spaces ignored)."""
  _check_pairs(hypotheses, references)
  return np.array([h.strip() in {r.strip() for r in refs}
                   for h, refs in zip(hypotheses, references)], bool)


def by_length(correct: np.ndarray, lengths: np.ndarray, name: str) -> dict[str, float]:
  """Accuracy per length as flat metrics: `{name}_len_07`, ...

  Zero-padded lengths keep the keys sorted in JSON, TensorBoard and plots.
  """
  correct, lengths = np.asarray(correct, bool), np.asarray(lengths)
  if correct.shape != lengths.shape:
    raise ValueError(f"correct has shape {correct.shape} and lengths {lengths.shape}; "
                     "expected equal shapes.")
  return {f"{name}_len_{int(n):02d}": float(correct[lengths == n].mean())
          for n in np.unique(lengths)}


def _check_pairs(hypotheses, references) -> None:
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference "
                     "lists: expected one list per hypothesis.")
  for i, refs in enumerate(references):
    if isinstance(refs, str) or not refs:
      raise ValueError(f"references[{i}]={refs!r}: expected a non-empty list of strings.")


def decode_subset(examples: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
  """At most `limit` examples (-1 = all), taken round-robin over lengths.

  A capped eval then still fills every row of the per-length table, whatever
  order the split is stored in; the pick is deterministic.
  """
  if limit < 0 or limit >= len(examples):
    return examples
  by_len = collections.defaultdict(list)
  for i, ex in enumerate(examples):
    by_len[ex["length"]].append(i)
  queues = [by_len[n] for n in sorted(by_len)]
  picked = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
  return [examples[i] for i in sorted(picked[:limit])]


def score_outputs(task: Any, examples: Sequence[dict[str, Any]],
                  hypotheses: Sequence[str]) -> dict[str, float]:
  """The task's text metrics for decoded `hypotheses` of `examples`."""
  refs = [ex["references"] for ex in examples]
  correct = exact_match(hypotheses, refs)
  metrics = {"sequence_accuracy": float(correct.mean()) if len(correct) else 0.0,
             "decoded_examples": float(len(correct))}
  if {"bleu", "chrf"} & set(task.metric_names):
    metrics.update(bleu_and_chrf(hypotheses, refs))
  if "sequence_accuracy_by_length" in task.metric_names:
    metrics.update(by_length(correct, [ex["length"] for ex in examples],
                             "sequence_accuracy"))
  return metrics


def teacher_forced(run_config: Any, task: Any, model: Any, params: Any, split: str, *,
                   mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """Loss, token accuracy (perplexity for LMs, accuracy per length for
  classifiers) from one forward pass per eval batch.

  Used by launch/evaluate.py; the training loop's own eval step computes the
  first three, so `evaluate` calls this only for the per-length table.
  """
  step = _teacher_forced_step(model)
  totals, correct, lengths = {}, [], []
  for batch in task.eval_batches(split, run_config.eval.batch_size, jax.process_index(),
                                 jax.process_count()):
    sums, per_example = step(params, batch if mesh is None
                             else sharding.global_batch(batch, mesh))
    totals = {k: totals.get(k, 0.0) + float(v) for k, v in jax.device_get(sums).items()}
    if per_example is None:
      continue
    keep, length = batch["example_mask"].astype(bool), batch["length"]  # [B_local]
    if mesh is not None and jax.process_count() > 1:
      keep, length = multihost_utils.process_allgather((keep, length), tiled=True)
      per_example = multihost_utils.process_allgather(per_example, tiled=True)
    correct.append(np.asarray(per_example)[np.asarray(keep)])
    lengths.append(np.asarray(length)[np.asarray(keep)])
  count = max(totals.get("token_count", 0.0), 1.0)
  metrics = {"loss": totals.get("nll_sum", 0.0) / count,
             "accuracy": totals.get("correct_sum", 0.0) / count}
  if task.kind == "lm":
    metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))  # No overflow.
  if task.kind == "classify" and "accuracy_by_length" in task.metric_names and correct:
    metrics.update(by_length(np.concatenate(correct), np.concatenate(lengths), "accuracy"))
  return metrics


@functools.lru_cache(maxsize=8)
def _teacher_forced_step(model: Any):
  """Jitted (params, batch) -> (sums, per-example correct [B] or None).

  Cached per model so repeated evals reuse one compiled step.
  """
  def step(params, batch):
    logits = model.apply(params, None, batch, False)
    sums = losses.task_sums(logits, batch, model.kind)
    if model.kind != "classify":
      return sums, None
    return sums, jnp.argmax(logits, -1) == batch["label"]  # [B]
  return jax.jit(step)


def evaluate(config: Any, task: Any, model: Any, params: Any, split: str, *,
             mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """The task's metrics the training loop's eval step does not compute.

  Args:
    config: the run's config (reads `eval` and `data`).
    task: `data.tasks.Task`.
    model: `models.Model`.
    params: its parameters (sharded over `mesh` if given).
    split: an eval split of the task.
    mesh: the run's mesh; required with several processes.

  Returns:
    Flat metrics: seq2seq `sequence_accuracy`, `bleu`, `chrf`,
    `sequence_accuracy_len_XX`, `decoded_examples`; classify `accuracy_len_XX`;
    lm nothing (the loop reports perplexity).
  """
  if jax.process_count() > 1 and mesh is None:
    raise ValueError("mesh=None with several processes: expected the run's mesh, "
                     "so each process decodes its rows of every batch.")
  if task.kind == "classify":
    tf = teacher_forced(config, task, model, params, split, mesh=mesh)
    return {k: v for k, v in tf.items() if k.startswith("accuracy_len_")}
  if task.kind != "seq2seq":
    return {}
  examples = decode_subset(task.eval_examples(split), config.eval.decode_examples)
  hypotheses = inference.translate(config, task, model, params,
                                   [ex["source"] for ex in examples], mesh=mesh)
  return score_outputs(task, examples, hypotheses)


def evaluate_run(workdir: str, split: str = "test", step: int | None = None,
                 num_examples: int | None = None) -> tuple[dict[str, Any], str | None]:
  """Standalone evaluation of a saved run (launch/evaluate.py).

  Restores the checkpoint, computes every metric of the task on `split`,
  appends the record to WORKDIR/metrics.jsonl (the plots pick it up) and
  writes WORKDIR/eval_<split>_<step>.md with the metrics and sample outputs.

  Args:
    workdir: the training run's directory.
    split: an eval split of the task ("validation" or "test").
    step: checkpoint step; None = the latest.
    num_examples: examples to decode; None = `config.eval.decode_examples`,
      -1 = the whole split.

  Returns:
    The record written and the report path (None on processes other than 0).
  """
  run = inference.load_run(workdir, step)
  task, e = run.task, run.config.eval
  if split not in task.eval_splits:
    raise ValueError(f"split={split!r}: expected one of {list(task.eval_splits)}.")
  metrics = teacher_forced(run.config, task, run.model, run.params, split, mesh=run.mesh)
  examples = task.eval_examples(split)
  if task.kind == "seq2seq":
    examples = decode_subset(examples, e.decode_examples if num_examples is None
                             else num_examples)
    outputs = inference.translate(run.config, task, run.model, run.params,
                                  [ex["source"] for ex in examples], mesh=run.mesh)
    metrics.update(score_outputs(task, examples, outputs))
  elif task.kind == "lm":  # Samples only: continue the start of a few texts.
    examples = examples[:e.num_samples]
    prompts = [" ".join(ex["source"].split()[:8]) for ex in examples]
    outputs = inference.continue_prompts(
        task, run.model, run.params, prompts, max_len=run.config.data.max_target_len,
        batch_size=e.batch_size, mesh=run.mesh)
    examples = [dict(ex, source=p + " ...") for ex, p in zip(examples, prompts)]
  else:
    outputs = None  # Classifier: the metrics are the report.
  writer = metrics_lib.MetricsWriter(workdir)
  record = writer.write(run.step, split, metrics)
  writer.close()
  if jax.process_index() != 0:
    return record, None
  path = os.path.join(workdir, f"eval_{split}_{run.step}.md")
  with open(path, "w") as f:
    f.write(format_report(run, split, record, examples, outputs))
  return record, path


def format_report(run: Any, split: str, record: dict[str, Any],
                  examples: Sequence[dict[str, Any]], outputs: Sequence[str] | None) -> str:
  """Markdown: what was evaluated, the metrics, then a few examples."""
  c = run.config
  lines = [f"# {c.data.task}: {split} at step {run.step}", "",
           f"model `{c.model.variant}` ({run.model.kind}); beam {c.eval.beam_size}, "
           f"length penalty {c.eval.length_penalty}", "", "| metric | value |",
           "| --- | --- |"]
  lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in record.items() if k not in ("step", "split")]
  if outputs is not None:
    lines += ["", "## Samples", ""]
    for ex, out in list(zip(examples, outputs))[:c.eval.num_samples]:
      lines += [f"- **input**: {ex['source']}"]
      lines += [f"  - reference: {r}" for r in ex["references"][:3]]
      lines += [f"  - output: {out}", ""]
  return "\n".join(lines) + "\n"
