"""transformer_research: Haiku/JAX Transformers, from one CPU to a TPU pod."""
