"""Tokenizers: load one from a vocabulary file or directory, and compare tokenizer identities.

Casing is taken, in this order, from the lower_case argument, the directory's
tokenizer_config.json ({"do_lower_case": ...}, as Hugging Face writes it), and for WordPiece from
the vocabulary itself (upper-case letters in it mean a cased model). SentencePiece defaults to no
lower-casing.
"""
from __future__ import annotations

import glob
import os

from bertjax.errors import UserError
from bertjax.text.base import Tokenizer
from bertjax.text.config_file import read_tokenizer_config
from bertjax.text.wordpiece import WordPieceTokenizer

__all__ = ["Tokenizer", "load_tokenizer", "check_identity", "resolve_tokenizer_file"]


def resolve_tokenizer_file(path: str) -> tuple[str, str]:
    """(kind, file) for a vocabulary file or a directory holding vocab.txt or one .model file."""
    if not os.path.exists(path):
        raise UserError(f"tokenizer path {path} does not exist; pass a vocab.txt, a SentencePiece "
                        ".model file, or a directory holding one")
    if os.path.isdir(path):
        vocab = os.path.join(path, "vocab.txt")
        if os.path.isfile(vocab):
            return "wordpiece", vocab
        models = sorted(glob.glob(os.path.join(path, "*.model")))
        if len(models) == 1:
            return "sentencepiece", models[0]
        if len(models) > 1:
            names = ", ".join(os.path.basename(m) for m in models)
            raise UserError(f"tokenizer directory {path} holds several .model files ({names}); "
                            "pass the one to use")
        raise UserError(f"tokenizer directory {path} holds no vocab.txt and no .model file; train "
                        "one with `bertjax train-vocab` or pass the vocabulary file")
    if path.endswith(".model"):
        return "sentencepiece", path
    return "wordpiece", path


def load_tokenizer(path: str, lower_case: bool | None = None) -> Tokenizer:
    kind, file = resolve_tokenizer_file(path)
    stated = read_tokenizer_config(os.path.dirname(os.path.abspath(file)))
    if lower_case is None:
        lower_case = stated["lower_case"]
    # A casing that overrides the file's makes its accent setting moot: it then follows the casing.
    strip_accents = stated["strip_accents"] if lower_case == stated["lower_case"] else None
    if kind == "sentencepiece":
        # Only here: WordPiece users must not depend on sentencepiece's protobuf module loading
        # (it fails outright when the installed protobuf runtime is older).
        from bertjax.text.sentencepiece_tok import SentencePieceTokenizer

        return SentencePieceTokenizer(file, lower_case=bool(lower_case))
    return WordPieceTokenizer(file, lower_case=lower_case, strip_accents=strip_accents)


def _show(value) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    return repr(value)


def check_identity(expected: dict, actual: dict, what: str) -> None:
    """Raises UserError naming every field where two tokenizer identities differ."""
    diffs = []
    for key in sorted(set(expected) | set(actual)):
        e, a = expected.get(key, "<absent>"), actual.get(key, "<absent>")
        if e != a:
            diffs.append(f"{key} {_show(e)} vs {_show(a)}")
    if diffs:
        raise UserError(f"tokenizer mismatch for {what} (expected vs given): {'; '.join(diffs)}; "
                        f"use the same vocabulary and casing that {what} was built with")
