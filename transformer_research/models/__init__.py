"""Haiku Transformer models. `build(config.model, kind, ...)` is the entry point.

Modules (read top-down): masks -> attention -> layers -> transformer;
variants holds the size table.
"""

from transformer_research.models.transformer import build
from transformer_research.models.transformer import dummy_batch
from transformer_research.models.transformer import KINDS
from transformer_research.models.transformer import Model

__all__ = ["build", "dummy_batch", "KINDS", "Model"]
