"""TFDS dataset builders shipped with the package (one subpackage each)."""
