"""Translates sentences with a trained run, continues prompts with an LM, or
labels texts with a classifier.

    python launch/translate.py --workdir=/tmp/wmt "Where can I find a pizzeria?"
    python launch/translate.py --workdir=/tmp/wmt --beam_size=1 < sentences.txt
    python launch/translate.py --workdir=/tmp/lm --temperature=0.8 --top_p=0.9 "This movie"
    python launch/translate.py --workdir=/tmp/imdb "A tender, funny film."

Each argument is one text; with none, stdin is read, one text per line, and
decoded in batches. Output: one line per input line (blank for blank input);
for a classifier `label<TAB>probability`, the label named by
`data.class_names` (IMDB's own: neg, pos), else its number.
"""

import sys

from absl import flags

from transformer_research import batching
from transformer_research import cli
from transformer_research import experiment
from transformer_research import inference
from transformer_research import runtime

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_AVERAGE = flags.DEFINE_integer("average_last", 1, "Use the mean parameters of --step "
                                "(default the latest) and the N - 1 checkpoints saved before it.")
_BEAM = flags.DEFINE_integer("beam_size", None, "Beam size; default config.eval.beam_size "
                             "(seq2seq) or 1 (lm).")
_MAX_LENGTH = flags.DEFINE_integer("max_length", None, "Tokens to generate at most (an LM's "
                                   "prompt included); default data.max_target_len.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "LM sampling temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "LM sampling: keep the k most likely tokens; 0 = all.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "LM sampling: nucleus mass; 1.0 = all.")
_SEED = flags.DEFINE_integer("seed", 0, "LM sampling seed.")
_GENERATION_FLAGS = ("beam_size", "max_length", "temperature", "top_k", "top_p", "seed")


def main(argv: list[str]) -> None:
  if len(argv) == 1 and sys.stdin.isatty():
    print("reading one text per line from stdin (Ctrl-D to end)", file=sys.stderr)
  texts = batching.input_texts(argv[1:], sys.stdin.buffer)
  if not any(t.strip() for t in texts):
    raise ValueError("empty input: expected a text argument or one text per line on stdin.")
  runtime.keep_freed_memory()  # Before the jax backend starts (see runtime.py).
  # The run's compiled programs (runtime.py): a second call does not compile the decoder again.
  runtime.cache_compilations(_WORKDIR.value)
  run = experiment.load_run(_WORKDIR.value, _STEP.value, average_last=_AVERAGE.value)
  if run.experiment.kind == "classify":
    ignored = [f"--{name}" for name in _GENERATION_FLAGS if flags.FLAGS[name].present]
    if ignored:  # A classifier generates nothing: these would change no output.
      raise ValueError(f"{', '.join(ignored)}: this run's model is a classifier, which "
                       "labels each text and generates nothing; expected none of "
                       f"{', '.join(f'--{name}' for name in _GENERATION_FLAGS)}")
    outputs = inference.label_texts(run.experiment, run.params, texts)
  else:
    outputs = inference.generate_text(
        run.experiment, run.params, texts, beam_size=_BEAM.value, max_len=_MAX_LENGTH.value,
        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
        seed=_SEED.value)
  for line in outputs:
    print(line)


if __name__ == "__main__":
  cli.run(main)
