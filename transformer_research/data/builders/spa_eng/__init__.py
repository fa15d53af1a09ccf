"""The `spa_eng` TFDS builder; importing this package registers it with TFDS."""

from transformer_research.data.builders.spa_eng.spa_eng import ARCHIVE_NAME, SpaEng, URL, parse_pairs, split_of

__all__ = ["ARCHIVE_NAME", "SpaEng", "URL", "parse_pairs", "split_of"]
