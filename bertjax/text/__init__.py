"""Tokenizers: load one from a vocabulary file or directory, and compare tokenizer identities.

What a directory holds decides the tokenizer, in this order:
  vocab.txt                 WordPiece (BERT)
  one *.model               SentencePiece (with DeBERTa-v3's [MASK], added after the last
                            piece, when the directory's files say so)
  vocab.json + merges.txt   byte-level BPE (RoBERTa, GPT-2)
  tokenizer.json            its model: WordPiece (the same tokenizer, and identity, as that
                            vocabulary as vocab.txt), byte-level BPE, or Unigram (ALBERT, DeBERTa)
transformers 5 saves tokenizer.json and tokenizer_config.json only, for every tokenizer class. A
file may be passed by name too (vocab.json finds merges.txt beside it).

Casing is taken, in this order, from the lower_case argument, the directory's
tokenizer_config.json ({"do_lower_case": ...}, as Hugging Face writes it), a tokenizer.json's own
normaliser, and for WordPiece from the vocabulary itself (upper-case letters in it mean a cased
model). SentencePiece defaults to no lower-casing; byte-level BPE never lower-cases.
"""
from __future__ import annotations

import glob
import os

from bertjax.errors import UserError
from bertjax.text.base import Tokenizer
from bertjax.text.config_file import CONFIG_NAME, read_config_body, read_tokenizer_config
from bertjax.text.tokenizer_json import TOKENIZER_JSON, model_type, read_tokenizer_json
from bertjax.text.bpe import ByteLevelBPETokenizer
from bertjax.text.unigram import UnigramTokenizer
from bertjax.text.wordpiece import WordPieceTokenizer, tokens_from_tokenizer_json

__all__ = ["Tokenizer", "load_tokenizer", "check_identity", "identity_diffs",
           "resolve_tokenizer_file", "tokenizer_files"]

VOCAB_JSON, MERGES_TXT = "vocab.json", "merges.txt"
# Where a SentencePiece directory may state tokens added on top of the model (DeBERTa-v3's [MASK]).
SPM_DIRECTORY_FILES = ("added_tokens.json", "special_tokens_map.json")
# resolve_tokenizer_file's kinds; "tokenizer.json" is decided by the model inside the file.
KINDS = ("wordpiece", "sentencepiece", "bpe", "tokenizer.json")


def _bpe_pair(vocab: str) -> tuple[str, str]:
    merges = os.path.join(os.path.dirname(os.path.abspath(vocab)), MERGES_TXT)
    if not os.path.isfile(merges):
        raise UserError(f"vocabulary file {vocab} has no merges.txt beside it; a byte-level BPE "
                        "vocabulary is vocab.json with merges.txt")
    return "bpe", vocab


def resolve_tokenizer_file(path: str) -> tuple[str, str]:
    """(kind, file) for a vocabulary file or a directory holding one (see the module docstring).
    kind is one of KINDS; for "bpe" the file is vocab.json, with merges.txt beside it."""
    if not os.path.exists(path):
        raise UserError(f"tokenizer path {path} does not exist; pass a vocab.txt, a SentencePiece "
                        ".model file, a vocab.json (with merges.txt), a tokenizer.json, or a "
                        "directory holding one")
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
        bpe_vocab, merges = os.path.join(path, VOCAB_JSON), os.path.join(path, MERGES_TXT)
        if os.path.isfile(bpe_vocab) and os.path.isfile(merges):
            return "bpe", bpe_vocab
        tok_json = os.path.join(path, TOKENIZER_JSON)
        if os.path.isfile(tok_json):
            return "tokenizer.json", tok_json
        if os.path.isfile(bpe_vocab) or os.path.isfile(merges):
            have = VOCAB_JSON if os.path.isfile(bpe_vocab) else MERGES_TXT
            raise UserError(f"tokenizer directory {path} holds {have} without its partner; a "
                            "byte-level BPE vocabulary is vocab.json with merges.txt")
        raise UserError(f"tokenizer directory {path} holds no vocab.txt and no .model file (nor "
                        "vocab.json + merges.txt, nor tokenizer.json); train one with `bertjax "
                        "train-vocab` or pass the vocabulary file")
    name = os.path.basename(path)
    if name.endswith(".model"):
        return "sentencepiece", path
    if name == VOCAB_JSON:
        return _bpe_pair(path)
    if name == MERGES_TXT:
        vocab = os.path.join(os.path.dirname(os.path.abspath(path)), VOCAB_JSON)
        if not os.path.isfile(vocab):
            raise UserError(f"tokenizer path {path} has no vocab.json beside it; a byte-level BPE "
                            "vocabulary is vocab.json with merges.txt")
        return "bpe", vocab
    if name.endswith(".json"):
        return "tokenizer.json", path
    return "wordpiece", path


def tokenizer_files(path: str) -> list[str]:
    """Every file load_tokenizer(path) reads: the vocabulary file(s), then tokenizer_config.json
    when the directory holds one. For copying a vocabulary elsewhere whole."""
    kind, file = resolve_tokenizer_file(path)
    directory = os.path.dirname(os.path.abspath(file))
    files = [file]
    if kind == "bpe":
        files.append(os.path.join(directory, MERGES_TXT))
    names = [CONFIG_NAME]
    if kind == "sentencepiece":
        names += SPM_DIRECTORY_FILES
    files += [os.path.join(directory, n) for n in names
              if os.path.isfile(os.path.join(directory, n))]
    return files


def load_tokenizer(path: str, lower_case: bool | None = None) -> Tokenizer:
    kind, file = resolve_tokenizer_file(path)
    directory = os.path.dirname(os.path.abspath(file))
    stated = read_tokenizer_config(directory)
    if kind == "bpe":
        return ByteLevelBPETokenizer.from_files(file, os.path.join(directory, MERGES_TXT),
                                                read_config_body(directory), lower_case)
    if kind == "tokenizer.json":
        return _from_tokenizer_json(file, directory, stated, lower_case)
    if lower_case is None:
        lower_case = stated["lower_case"]
    # A casing that overrides the file's makes its accent setting moot: it then follows the casing.
    strip_accents = stated["strip_accents"] if lower_case == stated["lower_case"] else None
    if kind == "sentencepiece":
        # Only here: WordPiece users must not depend on sentencepiece's protobuf module loading
        # (it fails outright when the installed protobuf runtime is older).
        from bertjax.text.sentencepiece_tok import SentencePieceTokenizer, directory_added_tokens

        return SentencePieceTokenizer(file, lower_case=bool(lower_case),
                                      added=directory_added_tokens(directory))
    return WordPieceTokenizer(file, lower_case=lower_case, strip_accents=strip_accents)


def _from_tokenizer_json(file: str, directory: str, stated: dict, lower_case: bool | None):
    body = read_tokenizer_json(file)
    config = read_config_body(directory)
    model = model_type(body["model"])
    if model == "BPE":
        return ByteLevelBPETokenizer.from_tokenizer_json(file, body, config, lower_case)
    if model == "Unigram":
        return UnigramTokenizer(file, body, config, lower_case)
    tokens = tokens_from_tokenizer_json(file, body)
    norm = body.get("normalizer") or {}
    # Casing: the argument, then tokenizer_config.json, then the file's BertNormalizer.
    file_lower = bool(norm.get("lowercase", True))
    file_strip = norm.get("strip_accents")
    if lower_case is None:
        lower_case = stated["lower_case"] if stated["lower_case"] is not None else file_lower
    if lower_case == stated["lower_case"] and stated["strip_accents"] is not None:
        strip_accents = stated["strip_accents"]
    elif lower_case == file_lower:
        strip_accents = file_strip  # None follows the casing, as in BertNormalizer
    else:
        strip_accents = None
    return WordPieceTokenizer(file, lower_case=lower_case, strip_accents=strip_accents,
                              tokens=tokens)


def _show(value) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "…"
    return repr(value)


def identity_diffs(expected: dict, actual: dict) -> list[str]:
    """"FIELD EXPECTED vs ACTUAL" for every field where two tokenizer identities differ."""
    diffs = []
    for key in sorted(set(expected) | set(actual)):
        e, a = expected.get(key, "<absent>"), actual.get(key, "<absent>")
        if e != a:
            diffs.append(f"{key} {_show(e)} vs {_show(a)}")
    return diffs


def check_identity(expected: dict, actual: dict, what: str) -> None:
    """Raises UserError naming every field where two tokenizer identities differ."""
    diffs = identity_diffs(expected, actual)
    if diffs:
        raise UserError(f"tokenizer mismatch for {what} (expected vs given): {'; '.join(diffs)}; "
                        f"use the same vocabulary and casing that {what} was built with")
