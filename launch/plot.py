"""Draws PNG plots of one run's metrics.jsonl, or of several runs overlaid.

    python launch/plot.py --workdir=/tmp/wmt [--out_dir=/tmp/wmt/plots]
    python launch/plot.py --workdir=/tmp/a --workdir=/tmp/b --out_dir=/tmp/a_vs_b

Writes loss (log scale), perplexity, accuracy, BLEU/chrF and learning-rate
curves for every split, and per-length sequence accuracy for the synthetic
tasks (a dashed line at the longest training length), to WORKDIR/plots/ by
default. With several runs every line's legend names its run.
"""

from absl import app
from absl import flags

from transformer_research import cli
from transformer_research import plots

_WORKDIR = flags.DEFINE_multi_string("workdir", None, "Run directory holding metrics.jsonl; "
                                     "repeat it to overlay runs.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write PNGs; default WORKDIR/plots "
                               "(required with several runs).")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for path in plots.plot_workdirs(_WORKDIR.value, _OUT_DIR.value):
    print(path)


if __name__ == "__main__":
  cli.run(main)
