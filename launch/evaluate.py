"""Evaluates a saved checkpoint of a run on one split, or on local files.

    python launch/evaluate.py --workdir=/tmp/wmt [--split=test] [--step=N] [--average_last=3]
    python launch/evaluate.py --workdir=/tmp/wmt --source_file=en.txt --reference_file=es.txt

Appends the eval record to WORKDIR/metrics.jsonl and writes a readable report,
WORKDIR/eval_<split>_<step>.md, with the metrics and sample inputs,
references and outputs. Translation decodes `config.eval.decode_examples`
sentences of a split (a fixed random subset) unless `--num_examples` says
otherwise (-1 = the whole split). With `--source_file` (one sentence per line)
and `--reference_file` (its references on the same line, tab-separated), every
line is scored and the record's split is `file_<source file name>`: only the
run directory and the two files are read, no dataset. `--average_last=N`
evaluates the mean of the last N checkpoints' parameters (up to `--step`).
On another machine than the one the run trained on, `--manual_dir`,
`--tfds_data_dir`, `--train_path` and `--eval_path` say where its data is
(config.json names the training machine's paths).
"""


from absl import app
from absl import flags

from transformer_research import cli
from transformer_research import evaluation
from transformer_research import experiment
from transformer_research import runtime

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate: validation or test.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None, "Examples to decode; default "
                                     "config.eval.decode_examples (all lines of "
                                     "--source_file), -1 = all, 0 = none (loss and "
                                     "accuracy only).")
_SOURCE_FILE = flags.DEFINE_string("source_file", None, "Evaluate these source sentences "
                                   "(one per line) instead of --split.")
_REFERENCE_FILE = flags.DEFINE_string("reference_file", None, "References of --source_file: "
                                      "one line per source, tab-separated.")
_BEAM = flags.DEFINE_integer("beam_size", None, "Decode with this beam (1 = greedy) instead of "
                             "the run's eval.beam_size; report eval_<split>_<step>_beam<N>.md.")
_AVERAGE = flags.DEFINE_integer("average_last", 1, "Average the parameters of --step (default "
                                "the latest) and the N - 1 checkpoints saved before it; report "
                                "eval_<split>_<step>_avg<N>.md.")
# A run evaluated on another machine than the one it trained on: its
# config.json names that machine's paths.
_DATA_PATHS = {field: flags.DEFINE_string(field, None, f"Read --split from here instead of "
                                          f"the run's config.data.{field}.")
               for field in experiment.DATA_PATH_FIELDS}


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _SOURCE_FILE.value and flags.FLAGS["split"].present:
    raise ValueError(f"--split={_SPLIT.value} with --source_file={_SOURCE_FILE.value}: "
                     "expected one of them (the files are evaluated instead of a split)")
  runtime.keep_freed_memory()  # Before the jax backend starts (see runtime.py).
  # The run's own cache: the decoder its training evals compiled is loaded, not
  # compiled again (on a GPU that compilation took minutes; README, One GPU).
  runtime.cache_compilations(_WORKDIR.value)
  record, report = evaluation.evaluate_run(
      _WORKDIR.value, _SPLIT.value, _STEP.value, _NUM_EXAMPLES.value,
      source_file=_SOURCE_FILE.value, reference_file=_REFERENCE_FILE.value,
      beam_size=_BEAM.value, average_last=_AVERAGE.value,
      data_paths={field: flag.value for field, flag in _DATA_PATHS.items()
                  if flag.value is not None})
  for key, value in record.items():
    print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
  if report:
    print(f"report: {report}")


if __name__ == "__main__":
  cli.run(main)
