"""Byte-level BPE (GPT-2 / RoBERTa) behind the bertjax Tokenizer protocol.

The vocabulary comes as RoBERTa ships it, vocab.json ({token: id}) + merges.txt (one "a b" merge a
line, in merge order, after an optional "#version" line), or as a BPE tokenizer.json (what
transformers 5 saves). Text is split by GPT-2's byte-level pre-tokenizer (bytes mapped to printable
characters, a space becomes the "Ġ" that starts a word) and merged by the BPE model; every byte is
in the alphabet, so there is no unknown token in practice. The pipeline is built as transformers'
RobertaTokenizer builds it, and the tests check its ids against AutoTokenizer's.

Special tokens are RoBERTa's: <s> (cls), </s> (sep), <pad>, <unk>, <mask>; tokenizer_config.json
may name others. <mask> strips the space before it (lstrip), as in RoBERTa, so "the <mask>" is
"Ġthe <mask>". The model input layout is RoBERTa's: `<s> A </s>` and `<s> A </s></s> B </s>`,
segment ids all 0. A piece continues the previous word unless it starts with "Ġ"; specials never
continue one.

Identity: kind "bpe" and the sha256 of the tokens in id order with the merges (a canonical JSON
spelling), so vocab.json + merges.txt and tokenizer.json of one vocabulary are one tokenizer.
"""
from __future__ import annotations

import json
import os

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from bertjax.errors import UserError
from bertjax.text.base import RustPipeline, VocabTable
from bertjax.text.config_file import stated_token, write_hf_config
from bertjax.text.tokenizer_json import (TOKENIZER_JSON, canonical_sha256, normalizer_steps,
                                         read_json, token_list)
from bertjax.store.files import write_atomic

VOCAB_JSON = "vocab.json"
MERGES_TXT = "merges.txt"
MERGES_HEADER = "#version: 0.2"
WORD_START = "\u0120"  # "Ġ": the byte-level spelling of a space
# role -> (tokenizer_config.json key, RoBERTa's token)
SPECIALS = {"cls": ("cls_token", "<s>"), "pad": ("pad_token", "<pad>"),
            "sep": ("sep_token", "</s>"), "unk": ("unk_token", "<unk>"),
            "mask": ("mask_token", "<mask>")}
_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


def read_merges(path: str) -> list[tuple[str, str]]:
    """merges.txt -> [(a, b), ...]; one UserError line for anything else."""
    if not os.path.isfile(path):
        raise UserError(f"merges file {path} does not exist; a byte-level BPE vocabulary is "
                        "vocab.json with merges.txt beside it")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"merges file {path} is not UTF-8 (bad byte at offset {e.start}); pass "
                        "the merges.txt of a byte-level BPE") from None
    lines = text.split("\n")
    merges = []
    for n, line in enumerate(lines, 1):
        line = line[:-1] if line.endswith("\r") else line
        if n == 1 and line.startswith("#version"):
            continue
        if not line:
            if any(rest.strip() for rest in lines[n:]):
                raise UserError(f"merges file {path} has an empty line {n}; merges.txt holds one "
                                "merge (two tokens and a space) a line")
            break
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise UserError(f"merges file {path} line {n} ({line[:40]!r}) is not two tokens "
                            "separated by one space; pass the merges.txt of a byte-level BPE")
        merges.append((parts[0], parts[1]))
    return merges


def _merge_pairs(path: str, merges) -> list[tuple[str, str]]:
    """tokenizer.json merges: "a b" strings (older files) or [a, b] pairs."""
    if not isinstance(merges, list):
        raise UserError(f"tokenizer file {path}: the model's \"merges\" must be a list")
    out = []
    for n, m in enumerate(merges):
        if isinstance(m, str) and len(m.split(" ")) == 2 and all(m.split(" ")):
            out.append(tuple(m.split(" ")))
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) and p for p in m):
            out.append((m[0], m[1]))
        else:
            raise UserError(f"tokenizer file {path}: merge {n} ({str(m)[:40]!r}) is not a pair "
                            "of tokens")
    return out


class ByteLevelBPETokenizer(RustPipeline, VocabTable):
    """The Tokenizer protocol for a byte-level BPE. Build it with from_files (vocab.json +
    merges.txt) or from_tokenizer_json; `config` is the directory's tokenizer_config.json body."""

    def __init__(self, source: str, tokens: list[str], merges: list[tuple[str, str]],
                 config: dict | None = None, added: list[dict] | None = None,
                 add_prefix_space: bool | None = None, lower_case: bool | None = None):
        config = config or {}
        if lower_case or config.get("do_lower_case"):
            raise UserError(f"{source} is a byte-level BPE, which is cased (RoBERTa's and "
                            "transformers' never lower-case); drop lower_case, or lower-case the "
                            "text before it is tokenized")
        self.source = source
        self.lower_case = False
        self.strip_accents = False
        self._tokens = list(tokens)
        self._merges = [tuple(m) for m in merges]
        self._vocab = {t: i for i, t in enumerate(self._tokens)}
        self.vocab_size = len(self._tokens)
        stated_space = config.get("add_prefix_space")
        if stated_space is not None and not isinstance(stated_space, bool):
            raise UserError(f"tokenizer_config.json beside {source}: add_prefix_space must be "
                            f"true or false, not {stated_space!r}")
        self.add_prefix_space = bool(stated_space if stated_space is not None
                                     else add_prefix_space or False)

        names, missing = {}, []
        for role, (key, default) in SPECIALS.items():
            name, _ = stated_token(config, key)
            name = name or default
            if name not in self._vocab:
                missing.append(name)
            names[role] = name
        if missing:
            raise UserError(f"byte-level BPE vocabulary {source} lacks the special token(s) "
                            f"{' '.join(missing)}; RoBERTa's vocabulary holds <s> <pad> </s> <unk> "
                            "<mask> (train one with `bertjax train-vocab --kind=bpe`)")
        self._names = names
        self.cls_id = self._vocab[names["cls"]]
        self.pad_id = self._vocab[names["pad"]]
        self.sep_id = self._vocab[names["sep"]]
        self.unk_id = self._vocab[names["unk"]]
        self.mask_id = self._vocab[names["mask"]]

        # Added tokens: those of the tokenizer.json as they are; else the five specials, <mask>
        # with RoBERTa's lstrip unless tokenizer_config.json says otherwise.
        if added is None:
            added = []
            for role, name in names.items():
                flags = {"lstrip": role == "mask", "normalized": False}
                flags.update(stated_token(config, SPECIALS[role][0])[1])
                added.append({"content": name, "special": True, **flags})
        self._added = [{"content": a["content"], "single_word": bool(a.get("single_word")),
                        "lstrip": bool(a.get("lstrip")), "rstrip": bool(a.get("rstrip")),
                        "normalized": bool(a.get("normalized")), "special": bool(a.get("special"))}
                       for a in added]
        self._tok = self._build()
        special = {a["content"] for a in self._added} | set(names.values())
        self._continuation = np.array(
            [not t.startswith(WORD_START) and t not in special for t in self._tokens], dtype=bool)

    # ------------------------------------------------------------------------------ building

    @classmethod
    def from_files(cls, vocab_path: str, merges_path: str, config: dict | None = None,
                   lower_case: bool | None = None) -> ByteLevelBPETokenizer:
        body = read_json(vocab_path, "vocabulary file")
        if not isinstance(body, dict):
            raise UserError(f"vocabulary file {vocab_path} must hold a {{token: id}} object, as "
                            "RoBERTa's vocab.json does")
        tokens = token_list(vocab_path, body, [])
        return cls(vocab_path, tokens, read_merges(merges_path), config, lower_case=lower_case)

    @classmethod
    def from_tokenizer_json(cls, path: str, body: dict, config: dict | None = None,
                            lower_case: bool | None = None) -> ByteLevelBPETokenizer:
        model = body["model"]
        pre = body.get("pre_tokenizer") or {}
        steps = [pre] if pre.get("type") != "Sequence" else pre.get("pretokenizers", [])
        if [s.get("type") for s in steps] != ["ByteLevel"]:
            kinds = "+".join(str(s.get("type")) for s in steps) or "none"
            raise UserError(f"tokenizer file {path} holds a BPE model that is not byte-level "
                            f"(pre-tokenizer {kinds}); bertjax reads byte-level BPE (GPT-2, "
                            "RoBERTa)")
        odd = [k for k in ("continuing_subword_prefix", "end_of_word_suffix", "dropout")
               if model.get(k)]
        odd += [t["type"] for t in normalizer_steps(body.get("normalizer"))]
        if odd:
            raise UserError(f"tokenizer file {path}: a byte-level BPE with {', '.join(odd)} is "
                            "not RoBERTa's; bertjax reads RoBERTa's byte-level BPE only")
        added = body.get("added_tokens") or []
        tokens = token_list(path, model.get("vocab"), added)
        merges = _merge_pairs(path, model.get("merges", []))
        return cls(path, tokens, merges, config, added=added,
                   add_prefix_space=bool(steps[0].get("add_prefix_space", False)),
                   lower_case=lower_case)

    def _build(self) -> Tokenizer:
        try:
            model = models.BPE(vocab=dict(self._vocab), merges=list(self._merges), dropout=None,
                               fuse_unk=False)
        except Exception as e:  # tokenizers raises a bare Exception for a merge out of vocabulary
            raise UserError(f"byte-level BPE vocabulary {self.source} does not load: {e}; the "
                            "merges must join tokens of the vocabulary") from None
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=self.add_prefix_space,
                                                     use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(a["content"], **{k: a[k] for k in _FLAGS})
                                for a in self._added if a["special"]])
        tok.add_tokens([AddedToken(a["content"], **{k: a[k] for k in _FLAGS})
                        for a in self._added if not a["special"]])
        return tok

    # ------------------------------------------------------------------------------ protocol


    def build_inputs(self, ids_a, ids_b=None):
        ids = [self.cls_id, *ids_a, self.sep_id]
        if ids_b is not None:
            ids += [self.sep_id, *ids_b, self.sep_id]
        return ids, [0] * len(ids)

    def num_special(self, pair: bool) -> int:
        return 4 if pair else 2

    def identity(self) -> dict:
        ident = {
            "kind": "bpe",
            "vocab_sha256": canonical_sha256({"vocab": self._tokens,
                                              "merges": [list(m) for m in self._merges]}),
            "vocab_size": self.vocab_size,
            "lower_case": False,
            "strip_accents": False,
        }
        if self.add_prefix_space:
            ident["add_prefix_space"] = True
        return ident

    def hf_tokenizer_config(self) -> dict:
        n = self._names
        mask = next(a for a in self._added if a["content"] == n["mask"])
        return {
            "tokenizer_class": "RobertaTokenizer",
            "bos_token": n["cls"], "eos_token": n["sep"], "cls_token": n["cls"],
            "sep_token": n["sep"], "unk_token": n["unk"], "pad_token": n["pad"],
            # An AddedToken object, so that transformers keeps its lstrip when it builds the
            # tokenizer from vocab.json + merges.txt (without tokenizer.json).
            "mask_token": {"__type": "AddedToken", **mask},
            "add_prefix_space": self.add_prefix_space,
            "trim_offsets": True,
            "errors": "replace",
        }

    def backend(self) -> Tokenizer:
        """The pipeline with RoBERTa's post-processor: what tokenizer.json holds."""
        tok = Tokenizer.from_str(self._tok.to_str())
        tok.post_processor = processors.RobertaProcessing(
            (self._names["sep"], self.sep_id), (self._names["cls"], self.cls_id),
            trim_offsets=True, add_prefix_space=self.add_prefix_space)
        return tok

    def vocab_json(self) -> str:
        return json.dumps({t: i for i, t in enumerate(self._tokens)}, ensure_ascii=False,
                          indent=1) + "\n"

    def merges_txt(self) -> str:
        bad = next((m for m in self._merges if " " in m[0] or " " in m[1]), None)
        if bad is not None:
            raise UserError(f"the merge {bad} holds a space, which merges.txt cannot spell; "
                            f"{self.source} is not a byte-level BPE")
        return "\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in self._merges)]) + "\n"

    def save(self, out_dir: str) -> list[str]:
        """vocab.json + merges.txt (RoBERTa's files), tokenizer.json and tokenizer_config.json."""
        return [
            write_atomic(os.path.join(out_dir, VOCAB_JSON), self.vocab_json()),
            write_atomic(os.path.join(out_dir, MERGES_TXT), self.merges_txt()),
            write_atomic(os.path.join(out_dir, TOKENIZER_JSON), self.backend().to_str()),
            write_hf_config(out_dir, self.hf_tokenizer_config()),
        ]
