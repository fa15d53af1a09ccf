"""Draws PNG plots of a run's metrics.jsonl.

    python launch/plot.py --workdir=/tmp/wmt [--out_dir=/tmp/wmt/plots]

Writes loss (log scale), perplexity, accuracy, BLEU/chrF and learning-rate
curves for every split, and per-length sequence accuracy for the synthetic
tasks, to WORKDIR/plots/ by default.
"""


from absl import app
from absl import flags

from transformer_research import plots

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding metrics.jsonl.",
                               required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write PNGs; default WORKDIR/plots.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    paths = plots.plot_workdir(_WORKDIR.value, _OUT_DIR.value)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  for path in paths:
    print(path)


if __name__ == "__main__":
  app.run(main)
