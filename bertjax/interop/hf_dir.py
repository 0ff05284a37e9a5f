"""Reading and writing Hugging Face BERT directories (config.json, weights, tokenizer files)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

from bertjax.errors import UserError

# added_tokens.json: where DeBERTa-v3 states its [MASK], which its spm.model lacks.
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "tokenizer.json", "spiece.model", "spm.model", "vocab.json",
                   "merges.txt")


def read_config(hf_dir: str) -> dict:
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{hf_dir} is not a Hugging Face model directory: no config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None


def read_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    st = os.path.join(hf_dir, "model.safetensors")
    pt = os.path.join(hf_dir, "pytorch_model.bin")
    if os.path.isfile(st):
        try:
            return dict(load_file(st))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise UserError(f"cannot read {st}: {e}") from None
    if os.path.isfile(pt):
        try:
            import torch  # optional: only old pytorch_model.bin directories need it
        except ImportError:
            raise UserError(f"{pt} needs torch to read; install torch or convert to safetensors") from None
        state = torch.load(pt, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
                for k, v in state.items()}
    raise UserError(f"{hf_dir} has neither model.safetensors nor pytorch_model.bin")


def tokenizer_files(src_dir: str) -> list[str]:
    return [os.path.join(src_dir, n) for n in TOKENIZER_FILES if os.path.isfile(os.path.join(src_dir, n))]


def write_dir(out_dir: str, config: dict, tensors: dict[str, np.ndarray], extra_files=()) -> None:
    """Writes into a temporary sibling and renames, so a crash never leaves a half-written model."""
    parent = os.path.dirname(os.path.abspath(out_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-hf-", dir=parent)
    try:
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
                  os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        for src in extra_files:
            shutil.copy(src, os.path.join(tmp, os.path.basename(src)))
        old = None
        if os.path.exists(out_dir):
            # Move the old directory aside first: at every moment one complete model exists.
            old = tempfile.mkdtemp(prefix=".old-hf-", dir=parent)
            os.rmdir(old)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
