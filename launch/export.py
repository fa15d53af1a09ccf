"""Exports a trained translation run as a translator that needs only jax, numpy
and sentencepiece.

    python launch/export.py --workdir=/tmp/wmt --out=/tmp/wmt_export [--step=N] [--average_last=3]
    python -m transformer_research.serve /tmp/wmt_export "Where is the station?"

Writes the encoder and the cached beam search as a serialized `jax.export`
artifact (StableHLO), the parameters, the SentencePiece model(s) and
manifest.json (decoding settings, sha256 of every file) to --out; see
transformer_research/export.py and serve.py.
"""

from absl import app
from absl import flags

from transformer_research import cli
from transformer_research import export

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
_OUT = flags.DEFINE_string("out", None, "Export directory to write.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default the latest.")
_AVERAGE = flags.DEFINE_integer("average_last", 1, "Use the mean parameters of --step "
                                "(default the latest) and the N - 1 checkpoints saved before it.")
_BEAM = flags.DEFINE_integer("beam_size", None, "Beam size; default config.eval.beam_size.")
_PLATFORMS = flags.DEFINE_list("platforms", None, "Lower for these platforms (cpu, cuda, rocm, "
                               "tpu); default this machine's.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  manifest = export.export_run(_WORKDIR.value, _OUT.value, step=_STEP.value,
                               average_last=_AVERAGE.value, beam_size=_BEAM.value,
                               platforms=_PLATFORMS.value)
  print(f"manifest: {manifest}")


if __name__ == "__main__":
  cli.run(main)
