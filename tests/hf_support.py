"""The tiny Hugging Face side of the interop tests: a vocabulary that covers their texts, written
beside a transformers model the way a real BERT directory holds it."""
from __future__ import annotations

import json

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "ran", "house", "cafe", ".", ",", "##s",
         "##ing", "!"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
VOCAB += [f"w{i}" for i in range(99 - len(VOCAB))]


def write_vocab(directory) -> None:
    """vocab.txt and an uncased tokenizer_config.json into directory (a pathlib.Path)."""
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))


def save_hf(model, path) -> str:
    """A transformers model saved with its vocabulary; returns the directory."""
    model.save_pretrained(path)
    write_vocab(path)
    return str(path)
