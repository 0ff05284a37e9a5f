"""WordPiece tokenization of original BERT `vocab.txt` files.

The pipeline is the original one (google-research/bert tokenization.py): clean the text (drop
control characters, normalise whitespace), put spaces around CJK ideographs, lower-case and strip
accents for uncased vocabularies, split on whitespace and punctuation, then greedy longest-match
WordPiece with "##" continuations and [UNK] for words over 100 characters. It runs in the Rust
`tokenizers` library, configured exactly as Hugging Face's BertTokenizerFast, which the tests check
token for token. The five special tokens are matched in the raw text before normalisation, so a
"[MASK]" typed in the input stays one token in cased and uncased mode alike.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

from bertjax.errors import UserError
from bertjax.text.base import VocabTable
from bertjax.text.config_file import write_tokenizer_config
from bertjax.store.files import sha256_file, write_atomic

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CONTINUATION_PREFIX = "##"
MAX_CHARS_PER_WORD = 100


def read_vocab(path: str) -> list[str]:
    """Reads a vocab.txt (one token per line, id = line number) and refuses anything else."""
    if not os.path.isfile(path):
        raise UserError(f"vocabulary file {path} does not exist; pass the path of a BERT vocab.txt")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise UserError(f"vocabulary file {path} is empty; pass a BERT vocab.txt, one token a line")
    if b"\x00" in raw:
        raise UserError(f"vocabulary file {path} is binary, not a vocab.txt; pass a text file "
                        "with one token per line (a SentencePiece model ends in .model)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"vocabulary file {path} is not UTF-8 (bad byte at offset {e.start}); "
                        "pass a UTF-8 vocab.txt") from None
    # split("\n"), not splitlines(): vocabularies hold tokens such as U+2028 that splitlines cuts.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    tokens = [line[:-1] if line.endswith("\r") else line for line in lines]
    seen: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if tok == "":
            raise UserError(f"vocabulary file {path} has an empty line {i + 1}; a vocab.txt holds "
                            "exactly one token per line, remove the blank line")
        if tok in seen:
            raise UserError(f"vocabulary file {path} lists {tok!r} twice (lines {seen[tok] + 1} "
                            f"and {i + 1}); every token must appear once, remove the duplicate")
        seen[tok] = i
    missing = [t for t in SPECIAL_TOKENS if t not in seen]
    if missing:
        raise UserError(f"vocabulary file {path} lacks the special token(s) {' '.join(missing)}; a "
                        "BERT vocab.txt must contain [PAD] [UNK] [CLS] [SEP] [MASK]")
    return tokens


def _is_bracketed(tok: str) -> bool:
    return tok.startswith("[") and tok.endswith("]")


def vocab_looks_cased(tokens: list[str]) -> bool:
    """True when the vocabulary holds upper-case letters, i.e. it was built from cased text.

    An uncased vocabulary holds none (its training text was lower-cased), a cased one holds
    thousands; a small share threshold keeps a stray token from deciding. Bracketed tokens such as
    [CLS] or [unused0] are ignored."""
    words = [t for t in tokens if not _is_bracketed(t)]
    upper = sum(1 for t in words if any(c.isupper() for c in t))
    return upper >= max(1, int(0.005 * len(words)))


class WordPieceTokenizer(VocabTable):
    """The Tokenizer protocol (bertjax.text.base) for a BERT vocab.txt.

    lower_case=None decides from the vocabulary itself (see vocab_looks_cased);
    strip_accents=None follows lower_case, as in the original BERT and Hugging Face."""

    def __init__(self, vocab_path: str, lower_case: bool | None = None,
                 strip_accents: bool | None = None):
        self.vocab_path = vocab_path
        self._tokens = read_vocab(vocab_path)
        self._sha256 = sha256_file(vocab_path)
        cased_vocab = vocab_looks_cased(self._tokens)
        if lower_case is None:
            lower_case = not cased_vocab
        elif lower_case == cased_vocab:
            kind = "cased" if cased_vocab else "uncased"
            print(f"warning: lower_case={lower_case} with what looks like a {kind} vocabulary "
                  f"({vocab_path}); check that this is how the model was trained", file=sys.stderr)
        self.lower_case = bool(lower_case)
        self.strip_accents = self.lower_case if strip_accents is None else bool(strip_accents)

        vocab = {tok: i for i, tok in enumerate(self._tokens)}
        self._vocab = vocab
        tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]",
                                         continuing_subword_prefix=CONTINUATION_PREFIX,
                                         max_input_chars_per_word=MAX_CHARS_PER_WORD))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True,
            strip_accents=self.strip_accents, lowercase=self.lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # Specials are matched on the raw text (normalized=False), so lower-casing cannot turn a
        # typed "[MASK]" into "[mask]" and split it.
        tok.add_special_tokens(
            [AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
        self._tok = tok

        self.vocab_size = len(self._tokens)
        self.pad_id = vocab["[PAD]"]
        self.unk_id = vocab["[UNK]"]
        self.cls_id = vocab["[CLS]"]
        self.sep_id = vocab["[SEP]"]
        self.mask_id = vocab["[MASK]"]
        self._continuation = np.array(
            [t.startswith(CONTINUATION_PREFIX) and len(t) > len(CONTINUATION_PREFIX)
             for t in self._tokens], dtype=bool)

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once: one call into Rust, several times faster than a loop of encode()."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]


    def identity(self) -> dict:
        return {
            "kind": "wordpiece",
            "vocab_sha256": self._sha256,
            "vocab_size": self.vocab_size,
            "lower_case": self.lower_case,
            "strip_accents": self.strip_accents,
        }

    def save(self, out_dir: str) -> list[str]:
        """Writes vocab.txt byte for byte (so the hash holds) and a Hugging Face style
        tokenizer_config.json recording the casing."""
        with open(self.vocab_path, "rb") as f:
            raw = f.read()
        vocab_out = write_atomic(os.path.join(out_dir, "vocab.txt"), raw)
        config_out = write_tokenizer_config(out_dir, self.lower_case, self.strip_accents)
        return [vocab_out, config_out]
