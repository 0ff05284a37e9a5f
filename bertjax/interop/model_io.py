"""Loading a whole task model from either a bertjax checkpoint or a Hugging Face directory, and
saving one as a params-only bertjax checkpoint. Used by convert, export, embed and fill_mask."""
from __future__ import annotations

import json
import os

from flax import nnx

from bertjax.errors import UserError
from bertjax.interop import hf_dir, params as interop
from bertjax.model.bert import TASK_MODELS, build_model
from bertjax.model.encoder import BertConfig
from bertjax.store import workdir as wd
from bertjax.text import load_tokenizer
from bertjax.train import checkpoint as ckpt_lib

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
            extras[wd.IDENTITY_FILE] = json.dumps(load_tokenizer(src).identity(), indent=2).encode()
        except UserError:
            pass  # a directory with only a tokenizer.json: copied as is, no identity
    return extras


def load_model(path: str, task: str | None = None, allow_missing: bool = False):
    """Returns (model, cfg, task, report, source_dir) from an HF dir, a params-only checkpoint or
    a training workdir (its latest committed step)."""
    contents = wd.inspect(path)
    if contents.kind == "hf":
        model, cfg, task, report = interop.load_hf(path, task=task, allow_missing=allow_missing)
        return model, cfg, task, report, path
    model_cfg = dict(contents.model)
    task = task or contents.task
    if task not in TASK_MODELS:
        raise UserError(f"unknown task {task!r} in {path}; expected one of {sorted(TASK_MODELS)}")
    model_cfg.pop("id2label", None)  # label names, read by export
    cfg = BertConfig.from_dict(model_cfg, what=f"the model config of {path}")
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


def tokenizer_extras(path: str) -> dict:
    src = wd.vocab_dir(path)
    return _tokenizer_extras(src) if src else {}
