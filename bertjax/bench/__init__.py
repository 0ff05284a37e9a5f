"""Benchmarks: the train step against Hugging Face, data preparation and the input pipeline, tokenizers; and the GPU script."""
