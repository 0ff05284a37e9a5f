"""SentencePiece models (`.model` files) behind the bertjax Tokenizer protocol.

The model must carry the BERT special pieces itself: [UNK] as its unknown piece and [PAD] [CLS]
[SEP] [MASK] as control or user-defined symbols (train_vocab makes them user-defined, so a
"[MASK]" typed in the text stays one piece). The one exception is DeBERTa-v3's layout: its
spm.model has no [MASK] piece and Hugging Face adds "[MASK]" as a token after the last piece (id =
number of pieces), which the directory states (added_tokens.json, tokenizer_config.json's
added_tokens_decoder or mask_token, special_tokens_map.json); that token is read the same way, and
only a typed "[MASK]" gives its id, as in Hugging Face. SentencePiece marks a word start with "▁";
a piece without it continues the previous word. lower_case lower-cases the text before the model sees it,
as ALBERT does; accents are left to the model's own normalisation.

save() also writes tokenizer.json, the same pipeline in the Rust `tokenizers` library (the model's
precompiled normaliser, whitespace handling as SentencePiece's, Metaspace pieces), so transformers'
AutoTokenizer loads it without sentencepiece. A literal [PAD] or [UNK] typed in the text is one
special token there but characters here; plain text gives the same ids (tested).
"""
from __future__ import annotations

import os
import re

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors)

from bertjax.errors import UserError
from bertjax.text.base import BertLayout, VocabTable
from bertjax.text.config_file import (CONFIG_NAME, read_config_body, read_json, stated_token,
                                      write_hf_config)
from bertjax.text.tokenizer_json import TOKENIZER_JSON
from bertjax.store.files import sha256_file, write_atomic

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")
WORD_START = "\u2581"
MASK = "[MASK]"
_Piece = sentencepiece_model_pb2.ModelProto.SentencePiece


def directory_added_tokens(directory: str) -> dict[str, int | None]:
    """Tokens a Hugging Face directory puts on top of its SentencePiece model: content -> the id it
    states, None where it only names the token (mask_token). Every spelling transformers has
    written is read, since DeBERTa-v3's own directories state [MASK] in older ones
    (added_tokens.json, special_tokens_map.json) and newer ones (added_tokens_decoder)."""
    added: dict[str, int | None] = {}

    def read(name):
        body = read_json(os.path.join(directory, name))
        return body if isinstance(body, dict) else {}

    def note(content, token_id, where):
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            raise UserError(f"{os.path.join(directory, where)}: the id of {content!r} must be an "
                            f"integer, not {token_id!r}")
        if added.get(content) not in (None, token_id):
            raise UserError(f"tokenizer directory {directory} gives {content!r} two ids "
                            f"({added[content]} and {token_id}); make its files agree")
        added[content] = token_id

    config = read_config_body(directory)
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("content"), str):
            note(entry["content"], int(key) if str(key).isdigit() else key, CONFIG_NAME)
    for content, token_id in read("added_tokens.json").items():
        note(content, token_id, "added_tokens.json")
    for body in (config, read("special_tokens_map.json")):
        name, _ = stated_token(body, "mask_token")
        if name == MASK:  # another name was never read from here: the model must hold [MASK]
            added.setdefault(name, None)
    return added


class SentencePieceTokenizer(BertLayout, VocabTable):
    def __init__(self, model_path: str, lower_case: bool = False,
                 added: dict[str, int | None] | None = None):
        """`added`: directory_added_tokens() of the model's directory; only [MASK] may be a token
        the model lacks, and only at the id after the last piece."""
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
        self._proto = proto
        self._sha256 = sha256_file(model_path)
        self.lower_case = bool(lower_case)
        self.strip_accents = False

        pieces = [p.piece for p in proto.pieces]
        types = [p.type for p in proto.pieces]
        index = {p: i for i, p in enumerate(pieces)}
        added = added or {}
        for content, token_id in added.items():
            if content in index and token_id not in (None, index[content]):
                raise UserError(f"tokenizer directory of {model_path} gives {content!r} the id "
                                f"{token_id}, but it is piece {index[content]} of the model; use "
                                "the directory the model came with")
        extra = [c for c in added if c not in index]
        # DeBERTa-v3: [MASK] is no piece; transformers appends it after the last piece, and the
        # model's embedding row of that id is [MASK]'s, so no other id would read it right.
        self._mask_added = MASK in extra
        if self._mask_added:
            stated = added[MASK]
            if stated not in (None, len(pieces)):
                raise UserError(f"tokenizer directory of {model_path} gives the added token [MASK] "
                                f"the id {stated}, but the model has {len(pieces)} pieces, so "
                                f"Hugging Face gives it {len(pieces)}; fix the directory's "
                                "added_tokens.json / tokenizer_config.json")
            extra.remove(MASK)
        if extra:
            raise UserError(f"tokenizer directory of {model_path} adds the token(s) "
                            f"{' '.join(map(repr, extra))} that its model lacks; bertjax reads "
                            "[MASK] alone as an added token")
        missing = [t for t in SPECIAL_TOKENS if t not in index
                   and not (t == MASK and self._mask_added)]
        if missing:
            raise UserError(f"SentencePiece model {model_path} lacks the special piece(s) "
                            f"{' '.join(missing)}; train it with `python -m "
                            "bertjax.text.train_vocab --kind=sentencepiece`, which adds them")
        if types[index["[UNK]"]] != _Piece.UNKNOWN:
            raise UserError(f"SentencePiece model {model_path}: [UNK] is not its unknown piece; "
                            "train it with unk_piece=[UNK]")
        for t in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"):
            if t not in index:  # the added [MASK]
                continue
            if types[index[t]] not in (_Piece.CONTROL, _Piece.USER_DEFINED):
                raise UserError(f"SentencePiece model {model_path}: {t} is an ordinary piece; it "
                                "must be a control or user-defined symbol so plain text cannot "
                                "produce it")
        if self._mask_added:
            index[MASK] = len(pieces)
            pieces, types = [*pieces, MASK], [*types, _Piece.USER_DEFINED]
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

    def _encode(self, text: str, out_type):
        text = self._prepare(text)
        if not (self._mask_added and MASK in text):
            return self._sp.encode(text, out_type=out_type)
        # The added [MASK] is no piece the model could produce: like transformers, split the text
        # at every typed "[MASK]" and encode each stretch on its own (each one a fresh start,
        # with its own word-start mark, as Hugging Face's Metaspace gives every stretch).
        stretches = self._sp.encode(text.split(MASK), out_type=out_type)
        mask = MASK if out_type is str else self.mask_id
        out = list(stretches[0])
        for stretch in stretches[1:]:
            out.append(mask)
            out.extend(stretch)
        return out

    def tokenize(self, text: str) -> list[str]:
        return self._encode(text, str)

    def encode(self, text: str) -> list[int]:
        return self._encode(text, int)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self._mask_added and any(MASK in t for t in texts):
            return [self._encode(t, int) for t in texts]
        return self._sp.encode([self._prepare(t) for t in texts])

    def decode(self, ids: list[int]) -> str:
        ids = [int(i) for i in ids]
        if not self._mask_added:
            return self._sp.decode(ids)
        # SentencePiece knows no id past its last piece: decode the stretches between masks.
        parts, run = [], []
        for i in ids:
            if i == self.mask_id:
                parts += [self._sp.decode(run), MASK]
                run = []
            else:
                run.append(i)
        parts.append(self._sp.decode(run))
        return " ".join(p for p in parts if p)

    def identity(self) -> dict:
        ident = {
            "kind": "sentencepiece",
            "vocab_sha256": self._sha256,
            "vocab_size": self.vocab_size,
            "lower_case": self.lower_case,
            "strip_accents": self.strip_accents,
        }
        if self._mask_added:
            # The model file's hash does not cover a token the directory adds; name it (only
            # here, so the identities of models that carry [MASK] stay as they were).
            ident["added_tokens"] = {MASK: self.mask_id}
        return ident

    def hf_tokenizer_config(self) -> dict:
        # The generic class loads tokenizer.json as it is. AlbertTokenizer would rebuild the
        # pipeline with ALBERT's own text rules (``/'' -> ", accents stripped unless keep_accents),
        # which are not this tokenizer's.
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "do_lower_case": self.lower_case,
            "strip_accents": self.strip_accents,
            "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
            "cls_token": "[CLS]", "mask_token": "[MASK]",
            # The generic class returns no segment ids unless told to, and a pair fed to the
            # model without them reads B as segment 0, not the 1 it was trained with.
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
        }

    def backend(self) -> Tokenizer:
        """The model as a tokenizers.Tokenizer (what tokenizer.json holds), after transformers'
        SpmConverter: Unigram pieces and scores, or BPE with merges recovered from the pieces."""
        proto = self._proto
        vocab = [(p.piece, p.score) for p in proto.pieces]
        if proto.trainer_spec.model_type == 1:  # UNIGRAM
            tok = Tokenizer(models.Unigram(vocab, unk_id=self.unk_id, byte_fallback=False))
        elif proto.trainer_spec.model_type == 2:  # BPE
            tok = Tokenizer(models.BPE({p: i for i, (p, _) in enumerate(vocab)},
                                       _spm_bpe_merges(vocab), unk_token="[UNK]", fuse_unk=True,
                                       byte_fallback=False, dropout=None))
        else:
            raise UserError(f"{self.model_path} is a SentencePiece model of type "
                            f"{proto.trainer_spec.model_type}; only unigram and bpe models can be "
                            "written as tokenizer.json")
        steps = [normalizers.Lowercase()] if self.lower_case else []
        if proto.normalizer_spec.precompiled_charsmap:
            steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
        steps += [normalizers.Strip(left=False, right=True),
                  normalizers.Replace(Regex(" {2,}"), WORD_START)]
        tok.normalizer = normalizers.Sequence(steps)
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
        tok.add_special_tokens(
            [AddedToken(t, normalized=False, special=True) for t in SPECIAL_TOKENS])
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)])
        return tok

    def save(self, out_dir: str) -> list[str]:
        """Writes spiece.model byte for byte (so the hash holds), tokenizer.json and
        tokenizer_config.json."""
        with open(self.model_path, "rb") as f:
            blob = f.read()
        model_out = write_atomic(os.path.join(out_dir, "spiece.model"), blob)
        json_out = write_atomic(os.path.join(out_dir, TOKENIZER_JSON), self.backend().to_str())
        config_out = write_hf_config(out_dir, self.hf_tokenizer_config())
        return [model_out, json_out, config_out]


def _spm_bpe_merges(vocab: list[tuple[str, float]]) -> list[tuple[str, str]]:
    """The merges of a SentencePiece BPE model, recovered from its pieces as transformers'
    generate_merges does: every split of a piece into two pieces, in the order of the merged
    piece's id (SentencePiece BPE numbers pieces in merge order), then by the parts' lengths."""
    ids = {p: i for i, (p, _) in enumerate(vocab)}
    merges = []
    for piece, i in ids.items():
        if piece in SPECIAL_TOKENS:
            continue
        local = [(piece[:k], piece[k:], i) for k in range(1, len(piece))
                 if piece[:k] in ids and piece[k:] in ids]
        local.sort(key=lambda m: (ids[m[0]], ids[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])))
    return [(a, b) for a, b, _ in merges]
