"""Every metric of a task on an eval split: what a run is judged by.

`evaluate` is the one evaluator: the training loop calls it every
`config.eval.every_steps`, `launch/evaluate.py` (through `evaluate_run`) on a
saved checkpoint. It makes one teacher-forced pass (loss, token accuracy,
perplexity for LMs) and then the task's own metrics:

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
import math
import re
from typing import Any, Callable, Mapping, Sequence

from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np
import sacrebleu

from transformer_research import batching
from transformer_research import checkpointing
from transformer_research import distributed
from transformer_research import experiment
from transformer_research import inference
from transformer_research import metrics as metrics_lib
from transformer_research import sharding
from transformer_research import storage
from transformer_research.data import pipeline


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


# Source-length buckets (words) of the report's BLEU-by-length table.
LENGTH_BUCKETS = ((1, 5), (6, 10), (11, 15), (16, 20), (21, None))


def bleu_by_source_length(examples: Sequence[dict[str, Any]],
                          hypotheses: Sequence[str]) -> list[tuple[str, int, float, float]]:
  """(bucket, sentences, BLEU, chrF) per source length in words, for the
  report: corpus BLEU over a whole split hides where a model breaks down."""
  words = [len(ex["source"].split()) for ex in examples]
  rows = []
  for low, high in LENGTH_BUCKETS:
    picked = [i for i, n in enumerate(words) if n >= low and (high is None or n <= high)]
    if picked:
      scores = bleu_and_chrf([hypotheses[i] for i in picked],
                             [examples[i]["references"] for i in picked])
      name = f"{low}-{high}" if high else f"{low}+"
      rows.append((name, len(picked), scores["bleu"], scores["chrf"]))
  return rows


def exact_match(hypotheses: Sequence[str],
                references: Sequence[Sequence[str]]) -> np.ndarray:
  """[N] bool: the output equals one of its references (outer spaces ignored)."""
  _check_pairs(hypotheses, references)
  return np.array([h.strip() in {r.strip() for r in refs}
                   for h, refs in zip(hypotheses, references)], bool)


def by_length(correct: np.ndarray, lengths: np.ndarray, name: str,
              trained_max_len: int | None = None) -> dict[str, float]:
  """Accuracy per length as flat metrics: `{name}_len_07`, ...

  Zero-padded lengths keep the keys sorted in JSON, TensorBoard and plots.
  With `trained_max_len` (the longest training length), also the accuracy
  over the lengths trained on (`{name}_trained_lengths`, what a task's target
  is about) and over the longer ones (`{name}_longer_lengths`, how far the
  model generalises), each where the split has such examples.
  """
  correct, lengths = np.asarray(correct, bool), np.asarray(lengths)
  if correct.shape != lengths.shape:
    raise ValueError(f"correct has shape {correct.shape} and lengths {lengths.shape}; "
                     "expected equal shapes.")
  out = {f"{name}_len_{int(n):02d}": float(correct[lengths == n].mean())
         for n in np.unique(lengths)}
  if trained_max_len is not None:
    for part, where in (("trained", lengths <= trained_max_len),
                        ("longer", lengths > trained_max_len)):
      if where.any():
        out[f"{name}_{part}_lengths"] = float(correct[where].mean())
  return out


def _check_pairs(hypotheses, references) -> None:
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} reference "
                     "lists: expected one list per hypothesis.")
  for i, refs in enumerate(references):
    if isinstance(refs, str) or not refs:
      raise ValueError(f"references[{i}]={refs!r}: expected a non-empty list of strings.")


SUBSET_SEED = 0  # Fixed, so every eval of every run decodes the same subset.


def decode_subset(examples: list[dict[str, Any]], limit: int, *,
                  by_length: bool = False) -> list[dict[str, Any]]:
  """At most `limit` examples (-1 = all), in split order; the same at every call.

  By default a random subset drawn with a fixed seed, so a capped eval
  estimates the split's own scores: translation BLEU on a subset with the
  split's length distribution. `by_length` (tasks with per-length tables)
  takes examples round-robin over lengths instead, so every row of the table
  is filled whatever order the split is stored in.
  """
  if limit < 0 or limit >= len(examples):
    return examples
  if not by_length:
    picked = np.random.default_rng(SUBSET_SEED).choice(len(examples), limit, replace=False)
    return [examples[i] for i in sorted(picked)]
  by_len = collections.defaultdict(list)
  for i, ex in enumerate(examples):
    by_len[ex["length"]].append(i)
  queues = [by_len[n] for n in sorted(by_len)]
  picked = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
  return [examples[i] for i in sorted(picked[:limit])]


def _per_length(task: Any) -> bool:
  return "sequence_accuracy_by_length" in task.metric_names


def score_outputs(task: Any, examples: Sequence[dict[str, Any]],
                  hypotheses: Sequence[str], trained_max_len: int | None = None
                  ) -> dict[str, float]:
  """The task's text metrics for decoded `hypotheses` of `examples`
  (`trained_max_len`: see `by_length`)."""
  refs = [ex["references"] for ex in examples]
  correct = exact_match(hypotheses, refs)
  metrics = {"sequence_accuracy": float(correct.mean()) if len(correct) else 0.0,
             "decoded_examples": float(len(correct))}
  if {"bleu", "chrf"} & set(task.metric_names):
    metrics.update(bleu_and_chrf(hypotheses, refs))
  if _per_length(task):
    metrics.update(by_length(correct, [ex["length"] for ex in examples],
                             "sequence_accuracy", trained_max_len))
  return metrics


def teacher_forced(exp: experiment.Experiment, params: Any, split: str) -> dict[str, float]:
  """Loss, token accuracy (perplexity for LMs, accuracy per length for
  classifiers) from one forward pass per eval batch.

  Eval batches have a fixed shape (the task pads the last one and marks the
  padding rows in `example_mask`), so the eval step compiles once.
  """
  task, mesh = exp.task, exp.mesh
  totals, correct, lengths = {}, [], []
  for batch in task.eval_batches(split, exp.config.eval.batch_size, jax.process_index(),
                                 jax.process_count()):
    sums, per_example = exp.eval_step(params, sharding.global_batch(batch, mesh))
    totals = {k: totals.get(k, 0.0) + float(v) for k, v in jax.device_get(sums).items()}
    if per_example is None:
      continue
    # The eval step's outputs are replicated (the global batch); the masks
    # and lengths are this process's rows, so gather those.
    keep, length = batch["example_mask"].astype(bool), batch["length"]  # [B_local]
    if jax.process_count() > 1:
      keep, length = multihost_utils.process_allgather((keep, length), tiled=True)
    correct.append(np.asarray(per_example)[np.asarray(keep)])
    lengths.append(np.asarray(length)[np.asarray(keep)])
  count = max(totals.get("token_count", 0.0), 1.0)
  metrics = {"loss": totals.get("nll_sum", 0.0) / count,
             "accuracy": totals.get("correct_sum", 0.0) / count}
  if task.kind in ("lm", "mlm"):  # mlm: of the masked tokens.
    metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))  # No overflow.
  if task.kind == "classify" and "accuracy_by_length" in task.metric_names and correct:
    metrics.update(by_length(np.concatenate(correct), np.concatenate(lengths), "accuracy",
                             exp.config.data.train_max_len))
  return metrics


def evaluate(exp: experiment.Experiment, params: Any, split: str, *,
             num_examples: int | None = None
             ) -> tuple[dict[str, float], list[dict[str, Any]], list[str] | None]:
  """Every metric of the task on `split`.

  Args:
    exp: the run's experiment (task, model, mesh, compiled steps).
    params: its parameters, sharded over `exp.mesh`.
    split: an eval split of the task.
    num_examples: examples to decode (seq2seq); None =
      `config.eval.decode_examples`, -1 = the whole split, 0 = none (the
      teacher-forced metrics only).

  Returns:
    (metrics, examples, outputs). Metrics are flat: `loss`, `accuracy`, plus
    seq2seq `sequence_accuracy`, `bleu`, `chrf`, `sequence_accuracy_len_XX`,
    `decoded_examples`; classify `accuracy_len_XX`; lm `perplexity`.
    `examples` / `outputs` are the decoded examples and their outputs
    (seq2seq; `[]` / None otherwise), for reports.
  """
  limit = exp.config.eval.decode_examples if num_examples is None else num_examples
  if exp.kind == "seq2seq" and limit < -1:
    raise ValueError(f"num_examples={limit}: expected -1 (the whole split), 0 (no decoding) "
                     "or a number of examples to decode")
  distributed.check_same_data(exp.task.data_identity(split), f"data for the {split} split",
                              experiment.describe_data_paths(exp.config))
  metrics = teacher_forced(exp, params, split)
  if exp.kind != "seq2seq" or limit == 0:  # 0: no BLEU of 0 for nothing decoded.
    return metrics, [], None
  examples = decode_subset(exp.task.eval_examples(split), limit, by_length=_per_length(exp.task))
  outputs = inference.translate(exp, params, [ex["source"] for ex in examples])
  metrics.update(score_outputs(exp.task, examples, outputs, exp.config.data.train_max_len))
  return metrics, examples, outputs


def read_pairs(source_file: str, reference_file: str | None) -> list[dict[str, str]]:
  """Translation pairs from two local files, as a split's raw records.

  Line i of `source_file` is a source sentence; line i of `reference_file`
  holds its references, separated by tabs (several are allowed, as in the
  Tatoeba data). One record per (source, reference) pair.

  Raises:
    ValueError: no reference file, different line counts, or an empty
      source or reference, naming the file and line.
    OSError: a file that cannot be read, naming the argument.
  """
  if not reference_file:
    raise ValueError(f"source_file={source_file!r} without a reference_file: expected the "
                     "references to score against, one line per source, tab-separated "
                     "(launch/translate.py translates without scoring)")

  def lines(name: str, path: str) -> list[str]:
    try:
      data = epath.Path(path).read_bytes()
    except OSError as e:
      raise OSError(f"{name}={path!r}: {e.strerror or e}") from None
    return batching.text_lines(data, path)

  sources, references = lines("source_file", source_file), lines("reference_file", reference_file)
  if len(sources) != len(references):
    raise ValueError(f"{source_file} has {len(sources)} lines and {reference_file} "
                     f"{len(references)}: expected one line of references per source")
  records = []
  for number, (source, refs) in enumerate(zip(sources, references), start=1):
    refs = [r.strip() for r in refs.split("\t") if r.strip()]
    for path, empty in ((source_file, not source.strip()), (reference_file, not refs)):
      if empty:
        raise ValueError(f"{path}:{number}: empty line; expected a sentence on every line")
    records += [{"inputs": source.strip(), "targets": r} for r in refs]
  return records


def evaluate_run(workdir: str, split: str = "test", step: int | None = None,
                 num_examples: int | None = None, *, source_file: str | None = None,
                 reference_file: str | None = None, beam_size: int | None = None,
                 average_last: int = 1, data_paths: Mapping[str, str] | None = None
                 ) -> tuple[dict[str, Any], str | None]:
  """Standalone evaluation of a saved run (launch/evaluate.py).

  Restores the checkpoint, computes every metric of the task on `split` (or
  on local files), appends the record to WORKDIR/metrics.jsonl (the plots
  pick it up; a decoded record names its search, `"decoding": "beam 4"`) and
  writes WORKDIR/eval_<split>_<step>.md with the metrics and sample outputs.

  Args:
    workdir: the training run's directory.
    split: an eval split of the task ("validation" or "test").
    step: checkpoint step; None = the latest.
    num_examples: examples to decode; None = `config.eval.decode_examples`
      (all lines of `source_file`), -1 = the whole split.
    source_file, reference_file: a translation run evaluated on these files
      instead of `split` (`read_pairs`); the record's split is
      `file_<source file name>`. Only the run directory and the files are read.
    beam_size: decode with this beam (1 = greedy) instead of the run's
      `eval.beam_size`; the report is then `eval_<split>_<step>_beam<N>.md`.
    average_last: N > 1 evaluates the mean parameters of `step` and the N - 1
      checkpoints saved before it (`experiment.load_run`); the record names
      them (`averaged_steps`) and the report is `eval_<split>_<step>_avg<N>.md`.
    data_paths: where this machine has the run's data, when not at the paths
      of its config.json (`experiment.load_run`).

  Returns:
    The record written and the report path (None on processes other than 0).
  """
  if reference_file and not source_file:  # Else the split was scored, the file ignored.
    raise ValueError(f"reference_file={reference_file!r} without a source_file: expected the "
                     "sentences it holds the references of, one per line")
  # The files first: a mistake in them is found before the checkpoint is restored.
  pairs = read_pairs(source_file, reference_file) if source_file else None
  run = experiment.load_run(workdir, step, average_last=average_last, data_paths=data_paths)
  exp = run.experiment
  task, e = exp.task, exp.config.eval
  suffix = f"_avg{average_last}" if run.averaged_steps else ""
  ignored = [f"beam_size={beam_size}"] * (beam_size is not None) + (
      [f"num_examples={num_examples}"] * (num_examples not in (None, -1)))
  if task.kind != "seq2seq" and ignored:  # Else ignored: all scored, the report named _beamN.
    raise ValueError(f"{', '.join(ignored)}: this run's model has kind={task.kind!r}, which "
                     "decodes nothing and scores every example of the split; expected no "
                     "beam_size, and num_examples -1 (the whole split) or none")
  inference.check_beam_size(beam_size)
  if beam_size is not None and beam_size != e.beam_size:
    e.beam_size, suffix = beam_size, suffix + f"_beam{beam_size}"  # Before anything is compiled.
  if source_file:
    if task.kind != "seq2seq":
      raise ValueError(f"source_file={source_file!r}: this run's model has kind="
                       f"{task.kind!r}; expected a translation (seq2seq) run")
    split = "file_" + re.sub(r"\W", "_", epath.Path(source_file).stem)
    task.add_split(split, pairs)
    num_examples = -1 if num_examples is None else num_examples
  if split not in task.eval_splits:
    raise ValueError(f"split={split!r}: expected one of {list(task.eval_splits)}.")
  if split == "validation" and exp.config.data.get("train_path"):
    _check_still_held_out(exp, workdir, run.step)
  metrics, examples, outputs = evaluate(exp, run.params, split, num_examples=num_examples)
  if outputs is not None:  # Decoded scores depend on the search: the record says which.
    metrics["decoding"] = "greedy" if e.beam_size == 1 else f"beam {e.beam_size}"
  if task.kind == "lm" and e.num_samples:  # Samples only: continue the start of a few texts.
    max_len = exp.config.data.max_target_len
    examples = decode_subset(task.eval_examples(split), e.num_samples)
    prompts = [_prompt(ex["source"], task.target_tokenizer.encode, max_len) for ex in examples]
    outputs = inference.continue_prompts(exp, run.params, prompts, max_len=max_len,
                                         batch_size=e.batch_size)
    examples = [dict(ex, source=p + " ...") for ex, p in zip(examples, prompts)]
  writer = metrics_lib.MetricsWriter(workdir)
  # "writer" tells a resumed training run to keep this record (metrics.py).
  if run.averaged_steps:  # Strings, as "decoding": plots do not draw them as metrics.
    metrics["averaged_steps"] = ",".join(map(str, run.averaged_steps))
  record = writer.write(run.step, split, {**metrics, "writer": "evaluate.py"})
  writer.close()
  if jax.process_index() != 0:
    return record, None
  path = epath.Path(workdir) / f"eval_{split}_{run.step}{suffix}.md"
  storage.replace_text(path, format_report(run, split, record, examples, outputs))
  return record, str(path)


def _prompt(text: str, encode: Callable[[str], list[int]], max_len: int) -> str:
  """The first words of `text` (at most 8) that leave a language model's
  samples half of `max_len` tokens to continue in: eight words could outgrow a
  short data.max_target_len, which stopped evaluate.py after its metrics."""
  words = text.split()
  for count in range(min(8, len(words)), 1, -1):
    if len(encode(" ".join(words[:count]))) <= max_len // 2:
      return " ".join(words[:count])
  return " ".join(words[:1])


def _check_still_held_out(exp: experiment.Experiment, workdir: str, step: int) -> None:
  """Refuses a validation split carved from training files that changed since.

  The split is `data.validation_fraction` of the shuffled `data.train_path`
  records: files edited, added or removed move the carve, and the split would
  then mix in examples the model trained on, scored as unseen. Each checkpoint
  records the split it held out (number of examples and digest); the current
  files must give the same one.
  """
  then, now = checkpointing.held_out(workdir, step), exp.task.data_identity("validation")
  if then is None or then == now:  # None: saved before checkpoints recorded it.
    return
  differs = pipeline.identity_changes(now, then, "now", "then")
  raise ValueError(
      f"split='validation' of {workdir} is held out of data.train_path="
      f"{exp.config.data.train_path!r}, but its examples are not those checkpoint step {step} "
      f"held out ({differs}): the files were edited, added or removed since, and the split "
      "would mix in examples the model trained on. Nothing was written: restore the files, "
      "or score other text with --source_file or --split=test")


def format_report(run: Any, split: str, record: dict[str, Any],
                  examples: Sequence[dict[str, Any]], outputs: Sequence[str] | None) -> str:
  """Markdown: what was evaluated, the metrics, then a few examples."""
  c = run.experiment.config
  about = f"model `{c.model.variant}` ({run.experiment.kind})"
  if run.averaged_steps:
    about += f"; parameters averaged over steps {', '.join(map(str, run.averaged_steps))}"
  if outputs is not None:  # Only decoding has a beam; a classifier's report would mislead.
    about += f"; beam {c.eval.beam_size}, length penalty {c.eval.length_penalty}"
  lines = [f"# {c.data.task}: {split} at step {run.step}", "", about, "", "| metric | value |",
           "| --- | --- |"]
  lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in record.items() if k not in ("step", "split")]
  if outputs is not None and "bleu" in record:
    lines += ["", "## BLEU by source length (words)", "",
              "| source words | sentences | BLEU | chrF |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {n} | {bleu:.2f} | {chrf:.2f} |"
              for name, n, bleu, chrf in bleu_by_source_length(examples, outputs)]
  if outputs is not None:
    lines += ["", "## Samples", ""]
    for ex, out in list(zip(examples, outputs))[:c.eval.num_samples]:
      lines += [f"- **input**: {ex['source']}"]
      lines += [f"  - reference: {r}" for r in ex["references"][:3]]
      lines += [f"  - output: {out}", ""]
  return "\n".join(lines) + "\n"
