"""Unigram tokenizer.json files (what transformers 5 saves for ALBERT, DeBERTa and other
SentencePiece tokenizers) behind the bertjax Tokenizer protocol.

The file's own pipeline runs in the Rust `tokenizers` library, as AutoTokenizer runs it; only the
casing may be changed (tokenizer_config.json's do_lower_case, or the lower_case argument, adds or
removes a Lowercase step). Special tokens are named by tokenizer_config.json, else found among
[CLS]/<s>, [SEP]/</s>, [PAD]/<pad>, [UNK]/<unk>, [MASK]/<mask>. The input layout is BERT's
(ALBERT and DeBERTa use it): [CLS] A [SEP] (B [SEP]). A piece continues the previous word unless
it starts with the Metaspace replacement ("▁"); specials and the unknown piece never do. Added
tokens are pieces of the model or follow its last piece without a gap (DeBERTa-v3's [MASK] at id
len(vocab)); the latter are ids too, and named in the identity.

Identity: kind "unigram" and the sha256 of the model (pieces and scores), normaliser and
pre-tokenizer in a canonical JSON spelling.
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np
from tokenizers import Tokenizer, processors

from bertjax.errors import UserError
from bertjax.text.base import BertLayout, RustPipeline, VocabTable
from bertjax.text.config_file import stated_token, write_hf_config
from bertjax.text.tokenizer_json import TOKENIZER_JSON, canonical_sha256, normalizer_steps
from bertjax.store.files import write_atomic

WORD_START = "\u2581"
# role -> (tokenizer_config.json key, candidates in order)
SPECIALS = {"cls": ("cls_token", ("[CLS]", "<s>")), "sep": ("sep_token", ("[SEP]", "</s>")),
            "pad": ("pad_token", ("[PAD]", "<pad>")), "unk": ("unk_token", ("[UNK]", "<unk>")),
            "mask": ("mask_token", ("[MASK]", "<mask>"))}


def _replacement(pre) -> str:
    if not pre:
        return WORD_START
    if pre.get("type") == "Sequence":
        for p in pre.get("pretokenizers", []):
            if p.get("type") == "Metaspace":
                return p.get("replacement", WORD_START)
        return WORD_START
    return pre.get("replacement", WORD_START) if pre.get("type") == "Metaspace" else WORD_START


def _with_casing(normalizer, lower: bool):
    """The normaliser with its Lowercase steps removed, and one put first when lower."""
    steps = [s for s in normalizer_steps(normalizer) if s.get("type") != "Lowercase"]
    if lower:
        steps.insert(0, {"type": "Lowercase"})
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else {"type": "Sequence", "normalizers": steps}


class UnigramTokenizer(RustPipeline, BertLayout, VocabTable):
    def __init__(self, path: str, body: dict, config: dict | None = None,
                 lower_case: bool | None = None):
        config = config or {}
        self.source = path
        body = copy.deepcopy(body)
        model = body["model"]
        vocab = model.get("vocab")
        if not isinstance(vocab, list) or not vocab or not all(
                isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                and isinstance(v[1], (int, float)) for v in vocab):
            raise UserError(f"tokenizer file {path}: a Unigram model's \"vocab\" must be a "
                            "non-empty list of [piece, score] pairs")
        tokens = [p for p, _ in vocab]
        if len(set(tokens)) != len(tokens):
            raise UserError(f"tokenizer file {path} lists a piece twice; every piece must appear "
                            "once")
        pieces = len(tokens)
        beyond = []
        for a in body.get("added_tokens") or []:
            if a["id"] >= pieces:
                beyond.append(a)
            elif a["id"] < 0 or tokens[a["id"]] != a["content"]:
                raise UserError(f"tokenizer file {path}: added token {a['content']!r} (id "
                                f"{a['id']}) is not the model's piece of that id; bertjax reads "
                                "Unigram files whose added tokens are pieces of the model or "
                                "follow its last piece")
        # Tokens added after the last piece (DeBERTa-v3's [MASK] at id len(vocab)) are ids of
        # the model too: they must continue the pieces without a gap, or an id would name no
        # token; the file's own pipeline then encodes them as Hugging Face does.
        beyond.sort(key=lambda a: a["id"])
        for n, a in enumerate(beyond, start=pieces):
            if a["id"] != n:
                raise UserError(f"tokenizer file {path}: added token {a['content']!r} has id "
                                f"{a['id']}, but the ids before it end at {n - 1}; bertjax reads "
                                "added tokens that continue the vocabulary without a gap")
            if a["content"] in tokens:
                raise UserError(f"tokenizer file {path}: added token {a['content']!r} (id "
                                f"{a['id']}) is also a piece of the model; every token must "
                                "appear once")
            tokens.append(a["content"])

        file_lower = any(s.get("type") == "Lowercase" for s in normalizer_steps(body.get("normalizer")))
        stated = config.get("do_lower_case")
        if stated is not None and not isinstance(stated, bool):
            raise UserError(f"tokenizer_config.json beside {path}: do_lower_case must be true, "
                            f"false or null, not {stated!r}")
        want = lower_case if lower_case is not None else stated if stated is not None else file_lower
        self.lower_case = bool(want)
        if self.lower_case != file_lower:
            body["normalizer"] = _with_casing(body.get("normalizer"), self.lower_case)
        self.strip_accents = any(s.get("type") == "StripAccents"
                                 for s in normalizer_steps(body.get("normalizer")))
        # Encoding here never adds specials, truncates or pads: build_inputs and the callers do.
        body["truncation"] = None
        body["padding"] = None
        try:
            self._tok = Tokenizer.from_str(json.dumps(body))
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            detail = " ".join(str(e).split())[:200]
            raise UserError(f"tokenizer file {path} does not load in tokenizers ({detail}); "
                            "pass a tokenizer.json written by Hugging Face") from None

        self._tokens = tokens
        self._vocab = {t: i for i, t in enumerate(tokens)}
        self.vocab_size = len(tokens)
        unk_id = model.get("unk_id")
        names, missing = {}, []
        for role, (key, candidates) in SPECIALS.items():
            name, _ = stated_token(config, key)
            if name is None and role == "unk" and isinstance(unk_id, int) and 0 <= unk_id < len(tokens):
                name = tokens[unk_id]
            if name is None:
                name = next((c for c in candidates if c in self._vocab), candidates[0])
            if name not in self._vocab:
                missing.append(name)
            names[role] = name
        if missing:
            raise UserError(f"tokenizer file {path} lacks the special token(s) {' '.join(missing)}; "
                            "name them in tokenizer_config.json (cls_token, sep_token, pad_token, "
                            "unk_token, mask_token)")
        self._names = names
        self.cls_id = self._vocab[names["cls"]]
        self.sep_id = self._vocab[names["sep"]]
        self.pad_id = self._vocab[names["pad"]]
        self.unk_id = self._vocab[names["unk"]]
        self.mask_id = self._vocab[names["mask"]]
        special = {a["content"] for a in body.get("added_tokens") or []} | set(names.values())
        start = _replacement(body.get("pre_tokenizer"))
        self._continuation = np.array(
            [not t.startswith(start) and t not in special for t in tokens], dtype=bool)
        # Hashed as the tokenizers library writes the loaded pipeline back, not as the file
        # spells it, so a tokenizer.json written by save() has the identity of its source.
        written = json.loads(self._tok.to_str())
        self._hashed = {k: written.get(k) for k in ("model", "normalizer", "pre_tokenizer")}
        if beyond:
            # The model's pieces do not cover them; only here, so other files keep their hash.
            self._hashed["added_tokens"] = [[a["id"], a["content"]] for a in beyond]


    def identity(self) -> dict:
        return {
            "kind": "unigram",
            "vocab_sha256": canonical_sha256(self._hashed),
            "vocab_size": self.vocab_size,
            "lower_case": self.lower_case,
            "strip_accents": self.strip_accents,
        }

    def hf_tokenizer_config(self) -> dict:
        n = self._names
        # The generic class loads tokenizer.json as it is, so AutoTokenizer runs this pipeline.
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "do_lower_case": self.lower_case,
            "cls_token": n["cls"], "sep_token": n["sep"], "pad_token": n["pad"],
            "unk_token": n["unk"], "mask_token": n["mask"],
        }

    def backend(self) -> Tokenizer:
        tok = Tokenizer.from_str(self._tok.to_str())
        cls, sep = self._names["cls"], self._names["sep"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, self.cls_id), (sep, self.sep_id)])
        return tok

    def save(self, out_dir: str) -> list[str]:
        """tokenizer.json (this tokenizer's only spelling) and tokenizer_config.json."""
        return [write_atomic(os.path.join(out_dir, TOKENIZER_JSON), self.backend().to_str()),
                write_hf_config(out_dir, self.hf_tokenizer_config())]
