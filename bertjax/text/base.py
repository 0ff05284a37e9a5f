"""The tokenizer contract every part of bertjax codes against.

Implementations: WordPiece (original vocab.txt files) and SentencePiece. The tokenizer identity is
stored with prepared data and checkpoints; training refuses data whose identity differs.
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

    def identity(self) -> dict:
        """JSON-able identity: {"kind", "vocab_sha256", "vocab_size", "lower_case", "strip_accents"}."""

    def save(self, out_dir: str) -> list[str]:
        """Writes the vocabulary files (vocab.txt or spiece.model) into out_dir; returns their paths."""


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
