"""The tokenizer contract every part of bertjax codes against.

Implementations: WordPiece (vocab.txt, or a WordPiece tokenizer.json), SentencePiece (.model),
byte-level BPE (RoBERTa's vocab.json + merges.txt, or a BPE tokenizer.json) and Unigram
tokenizer.json files (what transformers 5 writes for ALBERT and DeBERTa). The tokenizer identity is
stored with prepared data and checkpoints; training refuses data whose identity differs.

The model input layout belongs to the tokenizer (build_inputs): BERT's `[CLS] A [SEP] (B [SEP])`
with segment ids 0 up to and including the first [SEP], then 1; RoBERTa's `<s> A </s>` and
`<s> A </s></s> B </s>` with all-zero segment ids.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Tokenizer(Protocol):
    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int

    def tokenize(self, text: str) -> list[str]:
        """Text -> sub-word pieces (no [CLS]/[SEP] added)."""

    def encode(self, text: str) -> list[int]:
        """Text -> piece ids (no [CLS]/[SEP] added)."""

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]: ...

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...

    def is_continuation(self, token_id: int) -> bool:
        """True when the piece continues the previous word (whole-word masking groups them)."""

    def build_inputs(self, ids_a: list[int], ids_b: list[int] | None = None
                     ) -> tuple[list[int], list[int]]:
        """(input ids, segment ids) of one model input: the specials placed around A (and B)."""

    def num_special(self, pair: bool) -> int:
        """How many special tokens build_inputs adds, for truncation budgets."""

    def identity(self) -> dict:
        """JSON-able identity: {"kind", "vocab_sha256", "vocab_size", "lower_case", "strip_accents"}."""

    def hf_tokenizer_config(self) -> dict:
        """What tokenizer_config.json must hold for transformers' AutoTokenizer: tokenizer_class,
        the special tokens and the casing."""

    def save(self, out_dir: str) -> list[str]:
        """Writes the legacy vocabulary files (vocab.txt, spiece.model or vocab.json + merges.txt),
        tokenizer.json and tokenizer_config.json into out_dir; returns their paths."""


class BertLayout:
    """build_inputs / num_special of BERT: [CLS] A [SEP] (B [SEP]); segment 0 up to and including
    the first [SEP], then 1. Subclasses set cls_id and sep_id."""

    def build_inputs(self, ids_a, ids_b=None):
        ids = [self.cls_id, *ids_a, self.sep_id]
        segments = [0] * len(ids)
        if ids_b is not None:
            ids += [*ids_b, self.sep_id]
            segments += [1] * (len(ids_b) + 1)
        return ids, segments

    def num_special(self, pair: bool) -> int:
        return 3 if pair else 2


class RustPipeline:
    """Encoding through a `tokenizers.Tokenizer` held as `_tok` (WordPiece, BPE, Unigram)."""

    def tokenize(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many texts at once: one call into Rust, several times faster than a loop of encode()."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class VocabTable:
    """Id/token lookups shared by the tokenizers. Subclasses set `_tokens` (id -> token),
    `_vocab` (token -> id), `_continuation` (bool array over ids), `vocab_size` and `unk_id`."""

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]:
        return [self._vocab.get(t, self.unk_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            out.append(self._tokens[i])
        return out

    def is_continuation(self, token_id: int) -> bool:
        return bool(self._continuation[int(token_id)])

    @property
    def continuation_mask(self):
        """Boolean [vocab_size] array: is_continuation for every id, for vectorised masking."""
        return self._continuation
