"""warm_start.plan: which source parameter each parameter loads, and every way a rule can be wrong."""

import pytest

from transformer_research import warm_start

F32 = "float32"
TARGET = {"embed/embeddings": ((40, 8), F32), "cls/embeddings": ((1, 8), F32),
          "encoder/layer_00/attn/query/w": ((8, 8), F32), "encoder/ln_final/scale": ((8,), F32),
          "head/linear_0/w": ((8, 8), F32)}
SOURCE = {"embed/embeddings": ((40, 8), F32), "encoder/layer_00/attn/query/w": ((8, 8), F32),
          "encoder/ln_final/scale": ((8,), F32), "decoder/ln_final/scale": ((8,), F32)}


def test_first_matching_rule_wins_none_and_no_rule_start_fresh():
  rules = ((r"^encoder/ln_final/", None), (r"^(embed|encoder)/", r"\1/"),
           (r"^head/linear_0/w$", "encoder/layer_00/attn/query/w"))
  assert warm_start.plan(rules, TARGET, SOURCE, "src") == {
      "cls/embeddings": None, "embed/embeddings": "embed/embeddings",
      "encoder/layer_00/attn/query/w": "encoder/layer_00/attn/query/w",
      "encoder/ln_final/scale": None, "head/linear_0/w": "encoder/layer_00/attn/query/w"}


def test_renaming_a_prefix_maps_an_encoder_into_a_translator():
  target = {"source_embed/embeddings": ((40, 8), F32), "encoder/ln_final/scale": ((8,), F32),
            "decoder/ln_final/scale": ((8,), F32)}
  rules = ((r"^source_embed/", "embed/"), (r"^encoder/", "encoder/"))
  assert warm_start.plan(rules, target, SOURCE, "src") == {
      "source_embed/embeddings": "embed/embeddings",
      "encoder/ln_final/scale": "encoder/ln_final/scale", "decoder/ln_final/scale": None}


@pytest.mark.parametrize("rules,message", [
    (((r"^nope/", "x/"),), r"regex '\^nope/' matches no parameter of this model"),
    (((r"(", "x"),), r"regex '\(' is not a regex"),
    (((r"^head/",),), r"entry \('\^head/',\): expected a \(regex, source path or None\) pair"),
    (((r"^head/", "decoder/"),), r"parameter head/linear_0/w would load decoder/linear_0/w, which "
                                 r"src does not have"),
    (((r".*/embeddings$", "embed/embeddings"),),
     r"parameter cls/embeddings has shape \(1, 8\) dtype float32, but embed/embeddings in src has "
     r"shape \(40, 8\) dtype float32 \(also loaded into embed/embeddings \(40, 8\)\)"),
])
def test_bad_rules_are_errors_naming_them(rules, message):
  with pytest.raises(ValueError, match=message):
    warm_start.plan(rules, TARGET, SOURCE, "src")
