"""WordPiece tokenization of original BERT `vocab.txt` files.

The pipeline is the original one (google-research/bert tokenization.py): clean the text (drop
control characters, normalise whitespace), put spaces around CJK ideographs, lower-case and strip
accents for uncased vocabularies, split on whitespace and punctuation, then greedy longest-match
WordPiece with "##" continuations and [UNK] for words over 100 characters. It runs in the Rust
`tokenizers` library, configured exactly as Hugging Face's BertTokenizerFast, which the tests check
token for token. The five special tokens are matched in the raw text before normalisation, so a
"[MASK]" typed in the input stays one token in cased and uncased mode alike.

The vocabulary comes from a vocab.txt or from a WordPiece tokenizer.json (what transformers 5
saves for BERT); both spellings of one vocabulary are the same tokenizer with the same identity.
"""
from __future__ import annotations

import hashlib
import os
import sys

import numpy as np
from tokenizers import (AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                        processors)

from bertjax.errors import UserError
from bertjax.text.base import BertLayout, RustPipeline, VocabTable
from bertjax.text.config_file import write_hf_config
from bertjax.text.tokenizer_json import TOKENIZER_JSON, token_list
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
    if raw.lstrip()[:1] == b"{":
        raise UserError(f"vocabulary file {path} is JSON, not a vocab.txt; pass a tokenizer.json "
                        "or a vocab.json (with merges.txt beside it) by its file name, or their "
                        "directory")
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
    _check_specials(path, seen)
    return tokens


def _check_specials(path: str, vocab) -> None:
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise UserError(f"vocabulary file {path} lacks the special token(s) {' '.join(missing)}; a "
                        "BERT vocabulary must contain [PAD] [UNK] [CLS] [SEP] [MASK]")


def vocab_txt_bytes(tokens: list[str]) -> bytes:
    """The canonical vocab.txt of a token list: one token a line, "\n" after each."""
    return ("\n".join(tokens) + "\n").encode("utf-8")


def tokens_from_tokenizer_json(path: str, body: dict) -> list[str]:
    """The vocabulary of a WordPiece tokenizer.json, checked to be BERT's pipeline (BertNormalizer
    handling Chinese characters, BertPreTokenizer, "##" continuations, [UNK], 100 characters a
    word): anything else would tokenize differently from what the file says."""
    model = body["model"]
    steps = body.get("normalizer") or {}
    wrong = []
    if steps.get("type") != "BertNormalizer":
        wrong.append(f"normalizer {steps.get('type')}")
    elif not steps.get("handle_chinese_chars", True) or not steps.get("clean_text", True):
        wrong.append("a BertNormalizer without clean_text or Chinese-character handling")
    pre = (body.get("pre_tokenizer") or {}).get("type")
    if pre != "BertPreTokenizer":
        wrong.append(f"pre-tokenizer {pre}")
    if model.get("continuing_subword_prefix", CONTINUATION_PREFIX) != CONTINUATION_PREFIX:
        wrong.append(f"continuation prefix {model.get('continuing_subword_prefix')!r}")
    if model.get("unk_token", "[UNK]") != "[UNK]":
        wrong.append(f"unknown token {model.get('unk_token')!r}")
    if model.get("max_input_chars_per_word", MAX_CHARS_PER_WORD) != MAX_CHARS_PER_WORD:
        wrong.append(f"max_input_chars_per_word {model.get('max_input_chars_per_word')}")
    if wrong:
        raise UserError(f"tokenizer file {path} is a WordPiece tokenizer unlike BERT's "
                        f"({', '.join(wrong)}); bertjax reads BERT's WordPiece pipeline only")
    tokens = token_list(path, model.get("vocab"), body.get("added_tokens") or [])
    bad = next((i for i, t in enumerate(tokens) if not t or "\n" in t or "\r" in t), None)
    if bad is not None:
        raise UserError(f"tokenizer file {path}: token {bad} ({tokens[bad]!r}) is empty or holds a "
                        "line break, which no vocab.txt can hold")
    _check_specials(path, set(tokens))
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


class WordPieceTokenizer(RustPipeline, BertLayout, VocabTable):
    """The Tokenizer protocol (bertjax.text.base) for a BERT vocab.txt.

    lower_case=None decides from the vocabulary itself (see vocab_looks_cased);
    strip_accents=None follows lower_case, as in the original BERT and Hugging Face.
    tokens, when given, is the vocabulary itself (read from vocab_path, a tokenizer.json): its
    identity then hashes the canonical vocab.txt of those tokens, which is the hash of the same
    vocabulary saved as vocab.txt."""

    def __init__(self, vocab_path: str, lower_case: bool | None = None,
                 strip_accents: bool | None = None, *, tokens: list[str] | None = None):
        self.vocab_path = vocab_path
        if tokens is None:
            self._tokens = read_vocab(vocab_path)
            self._sha256 = sha256_file(vocab_path)
            self._raw = None
        else:
            self._tokens = list(tokens)
            self._raw = vocab_txt_bytes(self._tokens)
            self._sha256 = hashlib.sha256(self._raw).hexdigest()
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


    def identity(self) -> dict:
        return {
            "kind": "wordpiece",
            "vocab_sha256": self._sha256,
            "vocab_size": self.vocab_size,
            "lower_case": self.lower_case,
            "strip_accents": self.strip_accents,
        }

    def hf_tokenizer_config(self) -> dict:
        return {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": True,
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "cls_token": "[CLS]", "mask_token": "[MASK]",
        }

    def backend(self) -> Tokenizer:
        """The whole pipeline as a tokenizers.Tokenizer, with BERT's post-processor and decoder:
        what tokenizer.json holds."""
        tok = Tokenizer.from_str(self._tok.to_str())
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)])
        tok.decoder = decoders.WordPiece(prefix=CONTINUATION_PREFIX)
        return tok

    def save(self, out_dir: str) -> list[str]:
        """Writes vocab.txt (byte for byte when read from one, so the hash holds), tokenizer.json
        and a Hugging Face tokenizer_config.json recording the casing."""
        raw = self._raw
        if raw is None:
            with open(self.vocab_path, "rb") as f:
                raw = f.read()
        vocab_out = write_atomic(os.path.join(out_dir, "vocab.txt"), raw)
        json_out = write_atomic(os.path.join(out_dir, TOKENIZER_JSON), self.backend().to_str())
        config_out = write_hf_config(out_dir, self.hf_tokenizer_config())
        return [vocab_out, json_out, config_out]
