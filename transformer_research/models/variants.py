"""Model sizes by variant name: the one table that `config.model.variant` reads.

A task config names a variant (`tiny`, `small`, `base`, `big`); the size
fields of `config.model` (`d_model`, `num_heads`, ...) override single values,
with -1 meaning "keep the variant's value". Resolving happens here, in code,
so the parsed config is never written to.
"""

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Sizes:
  """Widths and depths of one model.

  Attributes:
    d_model: residual stream width D.
    num_heads: attention heads H; must divide `d_model`.
    d_ff: hidden width of the feed-forward block; 0 = no feed-forward block.
    num_encoder_layers: encoder blocks (seq2seq and classify).
    num_decoder_layers: decoder blocks (seq2seq and lm).
  """
  d_model: int
  num_heads: int
  d_ff: int
  num_encoder_layers: int
  num_decoder_layers: int


VARIANTS: dict[str, Sizes] = {
    # Seconds on CPU; what the tests and the CI use.
    "tiny": Sizes(32, 4, 64, 2, 2),
    # Minutes on CPU: the transfer recipe's size (imdb_mlm.py, imdb_finetune.py).
    "mini": Sizes(128, 4, 512, 2, 2),
    "small": Sizes(256, 4, 1024, 3, 3),
    # "Attention is all you need", Table 3, base and big.
    "base": Sizes(512, 8, 2048, 6, 6),
    "big": Sizes(1024, 16, 4096, 6, 6),
}


def resolve(model_config: Any) -> Sizes:
  """Returns the variant's sizes with the config's non-negative overrides.

  Args:
    model_config: the `config.model` section, or its dict (reads `variant`
      and the five size fields; -1 keeps the variant's value).

  Raises:
    ValueError: unknown variant, a non-positive size, or `num_heads` not
      dividing `d_model`.
  """
  name = model_config["variant"]
  if name not in VARIANTS:
    raise ValueError(f"model.variant={name!r} is unknown; expected one of "
                     f"{sorted(VARIANTS)}.")
  sizes = VARIANTS[name]
  overrides = {}
  for field in dataclasses.fields(Sizes):
    value = model_config.get(field.name, -1)
    if value == -1:
      continue
    smallest = 0 if field.name == "d_ff" else 1  # d_ff=0: no feed-forward (ablations).
    if not isinstance(value, int) or value < smallest:
      raise ValueError(f"model.{field.name}={value!r}; expected an int >= {smallest}, "
                       "or -1 to keep the variant's value.")
    overrides[field.name] = value
  sizes = dataclasses.replace(sizes, **overrides)
  if sizes.d_model % sizes.num_heads:
    raise ValueError(f"model.num_heads={sizes.num_heads} does not divide "
                     f"model.d_model={sizes.d_model}; expected a divisor of "
                     "d_model so every head gets d_model // num_heads dims.")
  return sizes
