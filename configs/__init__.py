"""Task configs: one file per task, `get_config(variant)`; defaults in base.py."""
