"""tokenizer_config.json: the casing and special tokens of a tokenizer, in the file and keys Hugging
Face uses, so a directory written by either side loads the same way."""
from __future__ import annotations

import json
import os

from bertjax.errors import UserError
from bertjax.store.files import write_atomic

CONFIG_NAME = "tokenizer_config.json"


def write_tokenizer_config(out_dir: str, lower_case: bool, strip_accents: bool) -> str:
    body = {"do_lower_case": bool(lower_case), "strip_accents": bool(strip_accents)}
    return write_atomic(os.path.join(out_dir, CONFIG_NAME), json.dumps(body, indent=2) + "\n")


def write_hf_config(out_dir: str, body: dict) -> str:
    """DIR/tokenizer_config.json holding `body` (a tokenizer's hf_tokenizer_config())."""
    return write_atomic(os.path.join(out_dir, CONFIG_NAME),
                        json.dumps(body, indent=2, sort_keys=True) + "\n")


def read_json(path: str):
    """The JSON value in `path`; None when the file is absent. Malformed JSON or text that is not
    UTF-8 is refused in one line naming the file."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); fix or delete it") from None


def read_config_body(directory: str) -> dict:
    """DIR/tokenizer_config.json as a dict; {} when the file is absent."""
    path = os.path.join(directory, CONFIG_NAME)
    body = read_json(path)
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise UserError(f"{path} must hold a JSON object such as {{\"do_lower_case\": true}}")
    return body


def read_tokenizer_config(directory: str) -> dict:
    """Returns {"lower_case": bool|None, "strip_accents": bool|None} from DIR/tokenizer_config.json;
    both None when the file is absent. A missing or null key means "not stated"."""
    body = read_config_body(directory)
    path = os.path.join(directory, CONFIG_NAME)
    out = {}
    for ours, theirs in (("lower_case", "do_lower_case"), ("strip_accents", "strip_accents")):
        value = body.get(theirs)
        if value is not None and not isinstance(value, bool):
            raise UserError(f"{path}: {theirs} must be true, false or null, not {value!r}")
        out[ours] = value
    return out


def stated_token(body: dict, key: str) -> tuple[str | None, dict]:
    """(content, AddedToken flags) of a special token in a tokenizer_config.json body: transformers
    writes either a plain string or an AddedToken object ({"content", "lstrip", ...})."""
    value = body.get(key)
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {k: value[k] for k in ("lstrip", "rstrip", "single_word", "normalized")
                 if isinstance(value.get(k), bool)}
        return value["content"], flags
    return None, {}
