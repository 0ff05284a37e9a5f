"""WordPiece against an independent pure-Python implementation on thousands of strings.

bertjax's WordPiece runs a Rust `tokenizers` pipeline, as does Hugging Face's fast tokenizer, so
their parity (test_tokenizers.py) cannot catch a fault both share. The reference here is
transformers' BertTokenizerLegacy, the Python port of the original BERT code (basic tokenizer:
clean, CJK spacing, lower case and accent stripping, punctuation split; then greedy
longest-match-first WordPiece). The strings are real text shipped with gensim's test data
(English news, a novel, Bulgarian Wikipedia markup) and random strings drawn from ASCII,
accented Latin, combining marks, Cyrillic, Greek, CJK, emoji, controls and odd whitespace;
vocabularies are trained here on the same text, cased and uncased.

Two places where the port departs from the original google-research/bert tokenization.py are put
back to the original: its `_is_control` is any category starting with "C", so it deletes
unassigned code points (Cn) that the original (`cat in ("Cc", "Cf")`) keeps and WordPiece turns
into [UNK], as bertjax does (this test found 50 such strings among 2000 random ones); and in cased
mode it composes characters (NFC) first, so strings that NFC changes are left out there.

One difference is bertjax's own, found here and recorded by a strict xfail until it is fixed (in
bertjax/text/, not in this test): the original lower-cases with Python's str.lower(), which
writes a capital sigma that ends a word as the final sigma "ς"; bertjax lower-cases character by
character ("σ"). Uncased strings whose str.lower() is not their per-character lower case are left
out of the big comparison for that reason alone.
"""
import bz2
import os
import random
import re
import unicodedata

import gensim
import pytest
from transformers.models.bert import tokenization_bert_legacy as legacy

from bertjax.text.train_vocab import train_vocab
from bertjax.text.wordpiece import WordPieceTokenizer

DATA = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data")
N_REAL, N_RANDOM = 2000, 1500


def _real_strings() -> list[str]:
    out = []
    with open(os.path.join(DATA, "lee_background.cor"), encoding="utf-8") as f:
        for line in f:  # one news article per line: its sentences
            out += [s for s in re.split(r"(?<=[.!?])\s+", line.strip()) if s]
    with open(os.path.join(DATA, "crime-and-punishment.txt"), encoding="utf-8") as f:
        out += [line.rstrip("\n") for line in f if line.strip()]
    with bz2.open(os.path.join(DATA, "bgwiki-latest-pages-articles-shortened.xml.bz2"),
                  "rt", encoding="utf-16") as f:  # UTF-16 with a BOM
        for line in f:  # Cyrillic prose with wiki and XML markup, as it comes
            if line.strip():
                out.append(line.rstrip("\n"))
            if len(out) >= 4 * N_REAL:
                break
    rng = random.Random(0)
    return rng.sample(out, N_REAL)


RANGES = [(0x20, 0x7E)] * 6 + [(0xC0, 0x17F), (0x300, 0x36F), (0x391, 0x3C9), (0x410, 0x44F),
                               (0x4E00, 0x4E80), (0x3040, 0x30FF), (0xAC00, 0xAC40),
                               (0x1F300, 0x1F64F), (0x0, 0x1F), (0x2000, 0x206F), (0xFF01, 0xFF5E)]


def _random_strings() -> list[str]:
    rng = random.Random(1)
    out = []
    for _ in range(N_RANDOM):
        chars = []
        for _ in range(rng.randint(0, 40)):
            lo, hi = rng.choice(RANGES)
            chars.append(chr(rng.randint(lo, hi)))
            if rng.random() < 0.2:
                chars.append(" ")
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def strings():
    return _real_strings() + _random_strings()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, strings):
    path = tmp_path_factory.mktemp("wp-corpus") / "corpus.txt"
    path.write_text("\n".join(s.replace("\r", " ") for s in strings[:N_REAL]) + "\n",
                    encoding="utf-8")
    return str(path)


def _original_is_control(char):
    """google-research/bert tokenization.py's _is_control."""
    if char in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


@pytest.mark.parametrize("lower_case", [True, False], ids=["uncased", "cased"])
def test_wordpiece_equals_the_python_reference_on_thousands_of_strings(
        corpus, strings, tmp_path, lower_case, monkeypatch):
    monkeypatch.setattr(legacy, "_is_control", _original_is_control)
    train_vocab(corpus, "wordpiece", 2000, str(tmp_path), lower_case=lower_case, fmt="text")
    vocab = os.path.join(str(tmp_path), "vocab.txt")
    ours = WordPieceTokenizer(vocab)
    assert ours.lower_case is lower_case
    ref = legacy.BertTokenizerLegacy(vocab_file=vocab, do_lower_case=lower_case)
    compared = skipped = pieces = unknown = 0
    mismatches = []
    for text in strings:
        if not lower_case and unicodedata.normalize("NFC", text) != text:
            # The Python port composes characters (NFC) before anything else; the original and
            # bertjax do not, so a decomposed accent differs in cased mode by design.
            skipped += 1
            continue
        if lower_case and text.lower() != "".join(c.lower() for c in text):
            skipped += 1  # a word-final capital sigma: see the xfail below
            continue
        want = ref.tokenize(text)
        got = ours.tokenize(text)
        compared += 1
        pieces += len(got)
        unknown += got.count("[UNK]")
        if got != want or ours.encode(text) != ref.convert_tokens_to_ids(want):
            mismatches.append((text, got, want))
    assert not mismatches, f"{len(mismatches)} of {compared} differ; first: {mismatches[0]}"
    assert compared >= 3000 and skipped < N_RANDOM // 4, (compared, skipped)
    assert pieces > 30_000 and 0 < unknown < pieces // 5, (pieces, unknown)  # not all [UNK]


@pytest.mark.xfail(strict=True, reason="bertjax lower-cases a word-final capital sigma to σ; the "
                   "original BERT (Python str.lower) writes ς (found by the comparison above)")
def test_word_final_capital_sigma_lower_cases_as_the_original(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "οδος", "οδοσ",
                                "σ", "##ο"]) + "\n", encoding="utf-8")
    ours = WordPieceTokenizer(str(vocab))
    ref = legacy.BertTokenizerLegacy(vocab_file=str(vocab), do_lower_case=True)
    assert ours.lower_case and ref.tokenize("ΟΔΟΣ ΣΟ") == ["οδος", "σ", "##ο"]
    assert ours.tokenize("ΟΔΟΣ ΣΟ") == ref.tokenize("ΟΔΟΣ ΣΟ")
