"""SentencePiece models (`.model` files) behind the bertjax Tokenizer protocol.

The model must carry the BERT special pieces itself: [UNK] as its unknown piece and [PAD] [CLS]
[SEP] [MASK] as control or user-defined symbols (train_vocab makes them user-defined, so a
"[MASK]" typed in the text stays one piece). SentencePiece marks a word start with "▁"; a piece
without it continues the previous word. lower_case lower-cases the text before the model sees it,
as ALBERT does; accents are left to the model's own normalisation.
"""
from __future__ import annotations

import os
import re

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from bertjax.errors import UserError
from bertjax.text.base import VocabTable
from bertjax.text.config_file import write_tokenizer_config
from bertjax.store.files import sha256_file, write_atomic

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
WORD_START = "\u2581"
_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece


class SentencePieceTokenizer(VocabTable):
    def __init__(self, model_path: str, lower_case: bool = False):
        if not os.path.isfile(model_path):
            raise UserError(f"SentencePiece model {model_path} does not exist; pass the path of a "
                            ".model file")
        self.model_path = model_path
        with open(model_path, "rb") as f:
            blob = f.read()
        proto = sentencepiece_model_pb2.ModelProto()
        try:
            proto.ParseFromString(blob)
            sp = spm.SentencePieceProcessor(model_proto=blob)
        except Exception as e:  # protobuf and sentencepiece raise assorted types for a bad file
            raise UserError(f"{model_path} is not a SentencePiece model ({type(e).__name__}); "
                            "pass a .model file written by SentencePiece") from None
        if len(proto.pieces) == 0:
            raise UserError(f"{model_path} is not a SentencePiece model (no pieces); pass a .model "
                            "file written by SentencePiece")
        self._sp = sp
        self._sha256 = sha256_file(model_path)
        self.lower_case = bool(lower_case)
        self.strip_accents = False

        pieces = [p.piece for p in proto.pieces]
        types = [p.type for p in proto.pieces]
        index = {p: i for i, p in enumerate(pieces)}
        missing = [t for t in SPECIAL_TOKENS if t not in index]
        if missing:
            raise UserError(f"SentencePiece model {model_path} lacks the special piece(s) "
                            f"{' '.join(missing)}; train it with `python -m "
                            "bertjax.text.train_vocab --kind=sentencepiece`, which adds them")
        if types[index["[UNK]"]] != _Piece.UNKNOWN:
            raise UserError(f"SentencePiece model {model_path}: [UNK] is not its unknown piece; "
                            "train it with unk_piece=[UNK]")
        for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"):
            if types[index[t]] not in (_Piece.CONTROL, _Piece.USER_DEFINED):
                raise UserError(f"SentencePiece model {model_path}: {t} is an ordinary piece; it "
                                "must be a control or user-defined symbol so plain text cannot "
                                "produce it")
        self._tokens = pieces
        self._vocab = index
        self.vocab_size = len(pieces)
        self.pad_id = index["[PAD]"]
        self.unk_id = index["[UNK]"]
        self.cls_id = index["[CLS]"]
        self.sep_id = index["[SEP]"]
        self.mask_id = index["[MASK]"]
        # Specials, unknown and byte pieces never continue a word, whatever their spelling.
        ordinary = (_Piece.NORMAL, _Piece.UNUSED)
        self._continuation = np.array(
            [ty in ordinary and not p.startswith(WORD_START)
             for p, ty in zip(pieces, types, strict=True)],
            dtype=bool)

    def _prepare(self, text: str) -> str:
        if not self.lower_case:
            return text
        # Lower-case around the special tokens, never inside them: "[MASK]" must stay one piece.
        parts = _SPECIAL_SPLIT.split(text)
        return "".join(p if p in SPECIAL_TOKENS else p.lower() for p in parts)

    def tokenize(self, text: str) -> list[str]:
        return self._sp.encode(self._prepare(text), out_type=str)

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(self._prepare(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode([self._prepare(t) for t in texts])


    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def identity(self) -> dict:
        return {
            "kind": "sentencepiece",
            "vocab_sha256": self._sha256,
            "vocab_size": self.vocab_size,
            "lower_case": self.lower_case,
            "strip_accents": self.strip_accents,
        }

    def save(self, out_dir: str) -> list[str]:
        """Writes spiece.model byte for byte (so the hash holds) and tokenizer_config.json."""
        with open(self.model_path, "rb") as f:
            blob = f.read()
        model_out = write_atomic(os.path.join(out_dir, "spiece.model"), blob)
        config_out = write_tokenizer_config(out_dir, self.lower_case, self.strip_accents)
        return [model_out, config_out]
