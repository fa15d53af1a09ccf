"""Data: raw sources, tokenizers, batching pipelines and the task registry.

Kept import-free so that `import transformer_research.data.tokenizers` does
not pull in TFDS or the pipeline; import the submodule you need.
"""
