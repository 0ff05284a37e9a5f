"""Opening LoRA adapters: a bertjax LoRA checkpoint (adapters and head, with lora_base.json naming
its base) or a PEFT LoRA directory, over a base model loaded as any checkpoint is. The base's
weights must have the fingerprint the adapters were trained on (train/adapters.py); a different
base ends in one line. model_files.load_model comes here for both; `load_model` is passed in,
since the base is opened by it."""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from flax import nnx

from bertjax.errors import UserError
from bertjax.interop import params as interop
from bertjax.interop import peft
from bertjax.model.bert import build_model
from bertjax.model.encoder import BertConfig, arch_fields
from bertjax.store import workdir as wd
from bertjax.train import adapters
from bertjax.train import checkpoint as ckpt_lib

PEFT_TASKS = {v: k for k, v in peft.TASK_TYPES.items()}


def _base(path: str, base: str | None, recorded: str | None, what: str) -> str:
    chosen = base or recorded
    if not chosen:
        raise UserError(f"{path} holds LoRA adapters but names no base ({what}); pass the base "
                        "model they were trained on with --base=DIR")
    if "://" not in chosen and not os.path.exists(chosen):
        raise UserError(f"the base of the adapters in {path}, {chosen}, does not exist; pass the "
                        "base model they were trained on with --base=DIR")
    return chosen


def _base_weights(base_model, task: str) -> dict:
    flat = interop.flat_params(base_model)
    return {k: v for k, v in flat.items() if adapters.in_base(k, task)}


def load(path: str, cfg, task: str, base: str | None, load_model: Callable):
    """The LoRA model of a bertjax LoRA checkpoint at `path` over `base` (default: the base it
    names). Refused in one line when the base's weights are not the ones it was trained on."""
    ref = adapters.read_reference(path)
    base_path = _base(path, base, ref and ref.get("base"), adapters.BASE_FILE + " is missing")
    base_model, *_ = load_model(base_path, task=task, allow_missing=True)
    return _attach_checkpoint(path, cfg, task, base_model, base_path)


def _attach_checkpoint(path: str, cfg, task: str, base_model, base_name: str):
    ref = adapters.read_reference(path)
    if ref is not None:
        found = adapters.fingerprint(adapters.base_flat(base_model))
        if found != ref["sha256"]:
            named = " or ".join(dict.fromkeys(p for p in (ref.get("base"), ref.get("init_from"))
                                              if p))
            raise UserError(
                f"the adapters in {path} were trained on a base whose weights have fingerprint "
                f"{ref['sha256'][:16]}, but {base_name} has {found[:16]}; pass the base they "
                f"were trained on ({named}) with --base=DIR")
    model = build_model(task, cfg)
    interop.set_flat_params(model, _base_weights(base_model, task))
    trained, report = ckpt_lib.load_params(path, nnx.state(model, adapters.trainable_for(task)))
    if report.missing:
        raise UserError(f"{path} lacks {len(report.missing)} adapter or head weights of its "
                        f"model config: {', '.join(report.missing[:6])}")
    nnx.update(model, trained)
    return model


def load_peft(path: str, base: str | None, load_model: Callable, task: str | None = None):
    """(model, cfg, task) of a PEFT LoRA directory over `base` (default: its
    base_model_name_or_path, when that is a directory here)."""
    config = peft.read_config(path)
    task = task or _peft_task(path, config)
    recorded = config.get("base_model_name_or_path")
    base_path = _base(path, base, recorded if recorded and os.path.isdir(recorded) else None,
                      "its base_model_name_or_path is no directory here")
    base_model, base_cfg, *_ = load_model(base_path, task=task, allow_missing=True)
    return _attach_peft(path, base_model, base_cfg, task)


def _peft_task(path: str, config: dict) -> str:
    task = PEFT_TASKS.get(config.get("task_type") or "FEATURE_EXTRACTION")
    if task is None:
        raise UserError(f"{path}: PEFT task_type {config.get('task_type')!r} has no bertjax task "
                        f"model; bertjax reads {', '.join(sorted(PEFT_TASKS))}")
    return task


def _attach_peft(path: str, base_model, base_cfg, task: str):
    fields, params = peft.from_peft(path, base_cfg, task)
    labels = params.get(("classifier", "dense", "kernel"))
    changes = dict(fields, **({"num_labels": int(labels.shape[-1])} if labels is not None else {}))
    cfg = dataclasses.replace(base_cfg, **changes)
    model = build_model(task, cfg)
    interop.set_flat_params(model, {**_base_weights(base_model, task), **params})
    return model, cfg, task


def attach(base_model, base_cfg, adapter: str, base_name: str = "the base"):
    """(model, cfg, task): the adapters in `adapter` (a bertjax LoRA checkpoint or a PEFT
    directory) over a base model already loaded, so one loaded base serves several adapters.
    The base's architecture and, for a bertjax checkpoint, its weights' fingerprint must be the
    ones the adapters were trained on."""
    if peft.is_peft_dir(adapter):
        return _attach_peft(adapter, base_model, base_cfg,
                            _peft_task(adapter, peft.read_config(adapter)))
    contents = wd.inspect(adapter)
    model_cfg = dict(contents.model or {})
    model_cfg.pop("id2label", None)
    cfg = BertConfig.from_dict(model_cfg, what=f"the model config of {adapter}")
    if not cfg.lora_rank:
        raise UserError(f"--adapter={adapter} holds no LoRA adapters (its model config has no "
                        "lora_rank); pass a checkpoint fine-tuned with lora.enabled=true or a "
                        "PEFT LoRA directory")
    arch = {k: getattr(cfg, k) for k in arch_fields()}
    have = {k: getattr(base_cfg, k) for k in arch_fields()}
    differ = [f"{k}={arch[k]} vs {have[k]}" for k in arch if k != "num_labels" and arch[k] != have[k]]
    if differ:
        raise UserError(f"the adapters in {adapter} were trained on another architecture than "
                        f"{base_name} ({'; '.join(differ[:4])}); pass the base they were "
                        "trained on")
    task = contents.task
    return _attach_checkpoint(adapter, cfg, task, base_model, base_name), cfg, task
