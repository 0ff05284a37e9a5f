"""Reading Hugging Face tokenizer.json files, what transformers 5 saves for every tokenizer class
(it writes no vocab.txt, vocab.json, merges.txt or .model any more).

Only the file's structure is checked here; the tokenizer classes (wordpiece.py, bpe.py,
unigram.py) take what they need from it. Identities of tokenizers read from such a file hash a
canonical form of their content (the tokens in id order, and so on), never the file's bytes, so the
same vocabulary written as vocab.txt or as tokenizer.json, pretty-printed or not, is one tokenizer.
"""
from __future__ import annotations

import hashlib
import json
import os

from bertjax.errors import UserError

TOKENIZER_JSON = "tokenizer.json"
MODEL_TYPES = ("WordPiece", "BPE", "Unigram")


def read_json(path: str, what: str) -> object:
    """A JSON file's content; one UserError line for a missing, non-UTF-8 or malformed file."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 (bad byte at offset {e.start}); pass the "
                        "file as Hugging Face writes it") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno} column "
                        f"{e.colno}); pass the file as Hugging Face writes it") from None


def read_tokenizer_json(path: str) -> dict:
    """The body of a tokenizer.json, checked to hold a model of a type bertjax reads."""
    body = read_json(path, "tokenizer file")
    if not isinstance(body, dict) or not isinstance(body.get("model"), dict):
        raise UserError(f"tokenizer file {path} holds no \"model\" object; pass a tokenizer.json "
                        "written by Hugging Face tokenizers or transformers")
    kind = model_type(body["model"])
    if kind not in MODEL_TYPES:
        raise UserError(f"tokenizer file {path} holds a {kind} model; bertjax reads WordPiece, "
                        "BPE and Unigram tokenizer.json files")
    added = body.get("added_tokens") or []
    if not isinstance(added, list) or not all(
            isinstance(t, dict) and isinstance(t.get("id"), int)
            and isinstance(t.get("content"), str) for t in added):
        raise UserError(f"tokenizer file {path}: \"added_tokens\" must be a list of "
                        "{\"id\", \"content\", ...} objects")
    return body


def model_type(model: dict) -> str:
    """The model's "type"; files of older tokenizers versions omit it, then it is inferred."""
    kind = model.get("type")
    if isinstance(kind, str):
        return kind
    if "merges" in model:
        return "BPE"
    if isinstance(model.get("vocab"), list):
        return "Unigram"
    if "continuing_subword_prefix" in model or "max_input_chars_per_word" in model:
        return "WordPiece"
    return "unknown"


def token_list(path: str, vocab: dict, added: list) -> list[str]:
    """The tokens in id order from a {token: id} vocabulary and the added tokens; the ids must run
    0..n-1 without gaps, as every bertjax table assumes."""
    if not isinstance(vocab, dict) or not vocab:
        raise UserError(f"tokenizer file {path}: the model's \"vocab\" must be a non-empty "
                        "{token: id} object")
    by_id: dict[int, str] = {}
    for tok, i in [*vocab.items(), *((t["content"], t["id"]) for t in added)]:
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise UserError(f"tokenizer file {path}: token {tok!r} has the id {i!r}; ids are "
                            "integers from 0")
        if by_id.setdefault(i, tok) != tok:
            raise UserError(f"tokenizer file {path}: id {i} is given to both {by_id[i]!r} and "
                            f"{tok!r}; every id must name one token")
    n = len(by_id)
    if max(by_id) != n - 1:
        missing = next(i for i in range(n) if i not in by_id)
        raise UserError(f"tokenizer file {path}: no token has the id {missing} (ids run to "
                        f"{max(by_id)}); the ids must run 0..{n - 1} without gaps")
    tokens = [by_id[i] for i in range(n)]
    if len(set(tokens)) != n:
        seen: dict[str, int] = {}
        for i, tok in enumerate(tokens):
            if tok in seen:
                raise UserError(f"tokenizer file {path} gives {tok!r} two ids ({seen[tok]} and "
                                f"{i}); every token must appear once")
            seen[tok] = i
    return tokens


def normalizer_steps(normalizer) -> list[dict]:
    """A normalizer as a flat list of steps (a Sequence is unrolled); [] for none."""
    if not normalizer:
        return []
    if normalizer.get("type") == "Sequence":
        return [s for n in normalizer.get("normalizers", []) for s in normalizer_steps(n)]
    return [normalizer]


def canonical_sha256(obj) -> str:
    """sha256 of a canonical JSON spelling of obj (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
