"""sentence-transformers directories, both ways.

Writing (`bertjax export --format=sentence-transformers`): the encoder as a plain Hugging Face
model directory (`BertModel`, `RobertaModel`, ... through the arch's layout table) plus the
classic module files that sentence-transformers 2.x to 6.x all load:
  modules.json                      Transformer (path ""), Pooling ("1_Pooling"),
                                    Normalize ("2_Normalize") when normalised;
  sentence_bert_config.json         {"max_seq_length": N, "do_lower_case": false};
  1_Pooling/config.json             the pooling mode flags and the hidden size;
  config_sentence_transformers.json the prompts ({"query": ..., "document": ...}) and cosine.

Reading (`read_config`): the same files turned into bertjax's sentence config (pooling,
normalize, max_seq_length, prompts), so `embed` and fine-tuning reproduce what
`SentenceTransformer(dir).encode` computes.

A sentence config is {"pooling": "mean"|"cls"|"last", "normalize": bool, "max_seq_length": int,
"prompts": {"query": str, "document": str}}; a fine-tuned checkpoint stores it as
sentence_config.json.
"""
from __future__ import annotations

import json
import os

from bertjax.errors import UserError

SENTENCE_CONFIG = "sentence_config.json"
MODULES = "modules.json"
_MODE_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token",
              "last": "pooling_mode_lasttoken"}
_ALL_MODES = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
              "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
              "pooling_mode_lasttoken")


def is_st_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MODULES))


def _json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write(path: str, body) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=2)
        f.write("\n")


def write_modules(directory: str, hidden_size: int, sentence: dict) -> None:
    """Adds the sentence-transformers module files to an exported HF model directory."""
    pooling = sentence.get("pooling", "mean")
    if pooling not in _MODE_KEYS:
        raise UserError(f"pooling {pooling!r} has no sentence-transformers equivalent; use "
                        f"{', '.join(_MODE_KEYS)}")
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    if sentence.get("normalize", True):
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
        os.makedirs(os.path.join(directory, "2_Normalize"), exist_ok=True)
    _write(os.path.join(directory, MODULES), modules)
    _write(os.path.join(directory, "sentence_bert_config.json"),
           {"max_seq_length": int(sentence["max_seq_length"]), "do_lower_case": False})
    os.makedirs(os.path.join(directory, "1_Pooling"), exist_ok=True)
    flags = {k: k == _MODE_KEYS[pooling] for k in _ALL_MODES}
    _write(os.path.join(directory, "1_Pooling", "config.json"),
           {"word_embedding_dimension": int(hidden_size), **flags, "include_prompt": True})
    prompts = {k: v for k, v in (sentence.get("prompts") or {}).items() if v}
    _write(os.path.join(directory, "config_sentence_transformers.json"),
           {"prompts": prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"})


def read_config(path: str) -> dict | None:
    """The sentence config of a sentence-transformers directory or of a checkpoint holding
    sentence_config.json; None when `path` has neither."""
    own = os.path.join(path, SENTENCE_CONFIG)
    if os.path.isfile(own):
        return _json(own)
    if not is_st_dir(path):
        return None
    modules = _json(os.path.join(path, MODULES))
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    pooling, normalize = "cls", "Normalize" in kinds
    for m in modules:
        if m.get("type", "").endswith("Pooling"):
            pcfg = _json(os.path.join(path, m["path"], "config.json"))
            mode = pcfg.get("pooling_mode")
            on = [k for k in _ALL_MODES if pcfg.get(k)]
            if mode is None and len(on) == 1:
                mode = {v: k for k, v in _MODE_KEYS.items()}.get(on[0])
            if mode in ("mean", "cls", "lasttoken", "last"):
                pooling = "last" if mode == "lasttoken" else mode
            else:
                raise UserError(f"{path}: pooling {mode or on} is not supported (mean, cls, "
                                "last are)")
    max_len = 0
    sb = os.path.join(path, "sentence_bert_config.json")
    if os.path.isfile(sb):
        max_len = int(_json(sb).get("max_seq_length") or 0)
    prompts = {}
    cs = os.path.join(path, "config_sentence_transformers.json")
    if os.path.isfile(cs):
        prompts = dict(_json(cs).get("prompts") or {})
    return {"pooling": pooling, "normalize": normalize, "max_seq_length": max_len,
            "prompts": {"query": prompts.get("query", ""),
                        "document": prompts.get("document", prompts.get("passage", ""))}}
