"""bertjax: BERT-family encoders in JAX/Flax NNX, TPU-first."""

__version__ = "0.1.0"
