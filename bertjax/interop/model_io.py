"""Loading a whole task model from either a bertjax checkpoint or a Hugging Face directory, and
saving one as a params-only bertjax checkpoint. Used by convert, export, embed and fill_mask."""
from __future__ import annotations

import json
import os

from etils import epath
from flax import nnx

from bertjax.errors import UserError
from bertjax.interop import hf_dir, params as interop
from bertjax.model.bert import TASK_MODELS, build_model
from bertjax.model.encoder import BertConfig
from bertjax.text import load_tokenizer
from bertjax.train import checkpoint as ckpt_lib

IDENTITY_FILE = "tokenizer_identity.json"


def is_hf_dir(path: str) -> bool:
    # A training workdir also holds a config.json (the run's), but never HF weight files.
    p = epath.Path(path)
    return (p / "config.json").exists() and any(
        (p / n).exists() for n in ("model.safetensors", "pytorch_model.bin"))


def save_checkpoint(out_dir: str, model: nnx.Module, cfg: BertConfig, task: str,
                    extra_files: dict | None = None, overwrite: bool = False) -> None:
    config = {**cfg.to_dict(), "task": task}
    ckpt_lib.save_params(out_dir, nnx.state(model, nnx.Param), config, extra_files=extra_files,
                         overwrite=overwrite)


def _tokenizer_extras(src: str) -> dict:
    """Vocabulary files found beside a model, plus the tokenizer identity computed from them."""
    extras = {os.path.basename(p): p for p in hf_dir.tokenizer_files(src)}
    if extras:
        try:
            extras[IDENTITY_FILE] = json.dumps(load_tokenizer(src).identity(), indent=2).encode()
        except UserError:
            pass  # a directory with only a tokenizer.json: copied as is, no identity
    return extras


def load_model(path: str, task: str | None = None, allow_missing: bool = False):
    """Returns (model, cfg, task, report, source_dir) from an HF dir, a params-only checkpoint or
    a training workdir (its latest committed step)."""
    if not epath.Path(path).exists():
        raise UserError(f"checkpoint {path} does not exist")
    if is_hf_dir(path):
        model, cfg, task, report = interop.load_hf(path, task=task, allow_missing=allow_missing)
        return model, cfg, task, report, path
    model_cfg = _read_model_config(path)
    task = task or model_cfg.pop("task", "pretraining")
    model_cfg.pop("task", None)
    if task not in TASK_MODELS:
        raise UserError(f"unknown task {task!r} in {path}; expected one of {sorted(TASK_MODELS)}")
    cfg = BertConfig.from_dict(model_cfg)
    # Restore into an abstract model: no initialiser runs unless a weight is missing.
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(task, cfg)))
    params, report = ckpt_lib.load_params(path, abstract)
    if report.missing:
        if not allow_missing:
            raise UserError(f"{path} has no weights for {len(report.missing)} parameters of a "
                            f"{task} model: {', '.join(report.missing[:10])}")
        fresh = nnx.state(build_model(task, cfg), nnx.Param)
        params, report = ckpt_lib.load_params(path, fresh, fallback=fresh)
    model = nnx.merge(graphdef, params)
    return model, cfg, task, {"missing": report.missing, "unexpected": report.unexpected}, path


def _read_model_config(path: str) -> dict:
    p = epath.Path(path)
    direct = p / ckpt_lib.MODEL_CONFIG_FILE
    if direct.exists():
        return json.loads(direct.read_text())
    root = p / ckpt_lib.CHECKPOINT_SUBDIR
    if root.exists():
        steps = sorted(int(s.name) for s in root.iterdir() if s.name.isdigit())
        if steps:
            run_cfg = json.loads((root / str(steps[-1]) / "config" / "metadata").read_text())
            model = dict(run_cfg["model"])
            model["task"] = run_cfg.get("task", {}).get("model_task", "pretraining") \
                if isinstance(run_cfg.get("task"), dict) else "pretraining"
            return model
    raise UserError(f"{path} is neither a Hugging Face model directory (config.json) nor a bertjax "
                    f"checkpoint ({ckpt_lib.MODEL_CONFIG_FILE} or checkpoints/<step>)")


def vocab_source(path: str) -> str | None:
    """The directory holding the vocabulary for a checkpoint: itself, or a run's workdir copy."""
    for d in (path, os.path.join(path, "vocab")):
        if hf_dir.tokenizer_files(d):
            return d
    return None


def tokenizer_extras(path: str) -> dict:
    src = vocab_source(path)
    return _tokenizer_extras(src) if src else {}
