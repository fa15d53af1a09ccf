"""Tests for models/variants.py: the size table and config overrides."""

import pytest

from transformer_research.models import variants


@pytest.mark.parametrize("name,expected", [
    ("tiny", (32, 4, 64, 2, 2)),
    ("mini", (128, 4, 512, 2, 2)),
    ("small", (256, 4, 1024, 3, 3)),
    ("base", (512, 8, 2048, 6, 6)),
    ("big", (1024, 16, 4096, 6, 6)),
])
def test_variant_sizes(make_config, name, expected):
  sizes = variants.resolve(make_config(variant=name))
  assert (sizes.d_model, sizes.num_heads, sizes.d_ff, sizes.num_encoder_layers,
          sizes.num_decoder_layers) == expected


def test_override_replaces_only_non_negative_fields(make_config):
  sizes = variants.resolve(make_config(variant="base", d_ff=128, num_decoder_layers=1))
  assert sizes == variants.Sizes(512, 8, 128, 6, 1)


def test_unknown_variant_lists_valid_names(make_config):
  with pytest.raises(ValueError, match=r"model.variant='huge'.*'base', 'big', 'mini', 'small', 'tiny'"):
    variants.resolve(make_config(variant="huge"))


def test_num_heads_must_divide_d_model(make_config):
  with pytest.raises(ValueError, match=r"model.num_heads=5 does not divide model.d_model=32"):
    variants.resolve(make_config(num_heads=5))


def test_only_d_ff_may_be_zero(make_config):
  """d_ff=0 removes the feed-forward sublayers (ablations); a zero width or depth
  elsewhere is an error naming the field."""
  assert variants.resolve(make_config(d_ff=0)).d_ff == 0
  for field in ("d_model", "num_heads", "num_encoder_layers"):
    with pytest.raises(ValueError, match=rf"model.{field}=0; expected an int >= 1"):
      variants.resolve(make_config(**{field: 0}))
