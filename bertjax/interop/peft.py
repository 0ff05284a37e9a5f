"""LoRA adapters to and from PEFT's files, and merged into plain weights.

PEFT's LoRA directory holds `adapter_config.json` and `adapter_model.safetensors`, whose keys are
the Hugging Face module names under `base_model.model.`: `<module>.lora_A.weight` (r, in) and
`<module>.lora_B.weight` (out, r) for each adapted Linear, and the tensors of the modules trained
whole (`modules_to_save`: the task head) under their own names. The module names come from the
arch's layout table (interop/layouts/), so every member with a layout gets the same export.

Our adapter of a map from `in_shape` to `out_shape` holds A as in_shape + (r,) and B as
(r,) + out_shape; flattening the shapes gives PEFT's matrices transposed (the same transposition
the layout applies to the base kernels, whose input axis comes first here).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file

from bertjax.errors import UserError
from bertjax.interop import layouts
from bertjax.model import lora as lora_lib

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
# Our task model -> PEFT's task_type (which PeftModel class loads the adapter).
TASK_TYPES = {"sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
              "question_answering": "QUESTION_ANS", "base": "FEATURE_EXTRACTION"}
_QKV = ("attention", "qkv", "kernel")
_OUT = ("attention", "out", "kernel")


def is_peft_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG_FILE))


@dataclasses.dataclass(frozen=True)
class Site:
    target: str      # our target name (model/lora.py TARGETS)
    adapter: tuple   # our path of the adapter's node (its "a" and "b" sit below it)
    kernel: tuple    # our path of the kernel it adapts
    slot: int | None  # q/k/v's index in the fused kernel, else None
    module: str      # Hugging Face's module name


def sites(cfg, task: str) -> list[Site]:
    """Every map of the encoder's layers that LoRA can adapt, with its HF module name, from the
    arch's layout table (per-layer paths)."""
    out = []
    for ent in layouts.for_arch(cfg.arch).entries(cfg, task):
        p = ent.path
        if "layers" not in p:
            continue
        modules = [k.removesuffix(".weight") for k in ent.hf_keys]
        if p[-3:] == _QKV:
            out += [Site(t, p[:-3] + ("attention", "lora", t), p, i, modules[i])
                    for i, t in enumerate(lora_lib.QKV)]
        elif p[-3:] == _OUT:
            out.append(Site("attention_output", p[:-3] + ("attention", "lora", "attention_output"),
                            p, None, modules[0]))
        elif p[-2:] in (("intermediate", "kernel"), ("output", "kernel")):
            out.append(Site(p[-2], p[:-2] + ("lora", p[-2]), p, None, modules[0]))
    return out


def _key(path: tuple) -> tuple:
    return tuple(str(k) for k in path)


def merge(flat: dict, cfg, task: str) -> dict:
    """Per-layer params with adapters -> the plain model's: W = W0 + (alpha/r) B A on each adapted
    kernel, the adapters dropped. `flat` maps path tuples to arrays (interop.flat_params)."""
    flat = {_key(k): np.asarray(v) for k, v in flat.items()}
    scale = float(cfg.lora_alpha) / int(cfg.lora_rank)
    out = {k: v for k, v in flat.items() if "lora" not in k}
    chosen = lora_lib.parse_targets(cfg.lora_targets)
    for site in sites(cfg, task):
        adapter = _key(site.adapter)
        if site.target not in chosen or adapter + ("a",) not in flat:
            continue
        delta = np.tensordot(flat[adapter + ("a",)], flat[adapter + ("b",)], axes=1) * scale
        kernel = out[_key(site.kernel)].copy()
        if site.slot is None:
            kernel = kernel + delta.reshape(kernel.shape)
        else:
            kernel[:, site.slot] += delta
        out[_key(site.kernel)] = kernel.astype(flat[_key(site.kernel)].dtype)
    return out


def to_peft(flat: dict, cfg, task: str, base: str, head: list[tuple]) -> tuple[dict, dict]:
    """(adapter_config, tensors) of a LoRA model's per-layer params; `head` lists our paths of the
    parameters trained whole (the task head), exported as PEFT's modules_to_save."""
    if task not in TASK_TYPES:
        raise UserError(f"a {task} model has no PEFT task type; PEFT export covers "
                        f"{', '.join(sorted(TASK_TYPES))}")
    layout = layouts.for_arch(cfg.arch)
    flat = {_key(k): np.asarray(v) for k, v in flat.items()}
    chosen = lora_lib.parse_targets(cfg.lora_targets)
    tensors, modules = {}, []
    for site in sites(cfg, task):
        adapter = _key(site.adapter)
        if site.target not in chosen or adapter + ("a",) not in flat:
            continue
        a, b = flat[adapter + ("a",)], flat[adapter + ("b",)]
        r = a.shape[-1]
        tensors[f"{PREFIX}{site.module}.lora_A.weight"] = a.reshape(-1, r).T
        tensors[f"{PREFIX}{site.module}.lora_B.weight"] = b.reshape(r, -1).T
        modules.append(site.module)
    head_keys = {_key(p) for p in head}
    save = set()
    for ent in layout.entries(cfg, task):
        if _key(ent.path) not in head_keys:
            continue
        for key, value in zip(ent.hf_keys, ent.to_hf(flat[_key(ent.path)])):
            tensors[PREFIX + key] = value
            module = key.rsplit(".", 1)[0]
            # A head outside the encoder is saved whole by its top module (PEFT wraps
            # "classifier" itself for SEQ_CLS); one inside it (BERT's pooler) by its own name.
            inside = key.startswith(layout.encoder + ".") or task == "base"
            save.add(module if inside else module.split(".")[0])
    config = {
        "peft_type": "LORA", "task_type": TASK_TYPES[task], "r": int(cfg.lora_rank),
        "lora_alpha": float(cfg.lora_alpha), "lora_dropout": float(cfg.lora_dropout),
        # Full module names: PEFT matches a name by its ending, and "output.dense" alone would
        # also adapt every "attention.output.dense".
        "target_modules": sorted(modules), "modules_to_save": sorted(save) or None,
        "base_model_name_or_path": base, "bias": "none", "fan_in_fan_out": False,
        "use_rslora": False, "use_dora": False, "inference_mode": True,
        "init_lora_weights": True,
    }
    return config, {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def write(out_dir: str, config: dict, tensors: dict) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE))


def read_config(path: str) -> dict:
    with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as f:
        config = json.load(f)
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r} (only LORA)")
    for key, ok in (("use_rslora", False), ("use_dora", False), ("fan_in_fan_out", False)):
        if bool(config.get(key, False)) != ok:
            problems.append(f"{key}={config.get(key)}")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config.get('bias')!r}")
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("layers_to_transform"):
        problems.append("per-layer rank_pattern, alpha_pattern or layers_to_transform")
    if problems:
        raise UserError(f"{path}: a PEFT adapter bertjax cannot read ({'; '.join(problems)}); it "
                        "reads plain LoRA adapters on Linear layers")
    return config


def from_peft(path: str, base_cfg, task: str) -> tuple[dict, dict]:
    """A PEFT LoRA directory -> (the lora_* model fields, {our path: array} of the adapters and
    the head it holds), for a base whose config is `base_cfg`."""
    config = read_config(path)
    tensors = {k.removeprefix(PREFIX): v for k, v in load_file(os.path.join(path, WEIGHTS_FILE)).items()}
    by_module = {s.module: s for s in sites(base_cfg, task)}
    found, params = set(), {}
    for key in list(tensors):
        if not key.endswith(".lora_A.weight"):
            continue
        module = key.removesuffix(".lora_A.weight")
        site = by_module.get(module)
        if site is None:
            raise UserError(f"{path}: adapter on {module}, which is no linear map of a "
                            f"{base_cfg.arch} {task} model's layers")
        a, b = tensors.pop(key), tensors.pop(f"{module}.lora_B.weight")
        r = a.shape[0]
        in_shape, out_shape = _shapes(base_cfg, site.target)
        params[site.adapter + ("a",)] = a.T.reshape(*in_shape, r)
        params[site.adapter + ("b",)] = b.T.reshape(r, *out_shape)
        found.add(site.target)
    fields = {"lora_rank": int(config["r"]), "lora_alpha": float(config["lora_alpha"]),
              "lora_dropout": float(config.get("lora_dropout") or 0.0),
              "lora_targets": ",".join(t for t in lora_lib.TARGETS if t in found)}
    # Every layer must carry each target's adapter: ours are built on all layers alike.
    missing = [s.module for s in by_module.values() if s.target in found
               and s.adapter + ("a",) not in params]
    if missing:
        raise UserError(f"{path}: adapters on only some layers (none on {', '.join(missing[:4])}); "
                        "bertjax builds a target's adapters on every layer")
    layout = layouts.for_arch(base_cfg.arch)
    for ent in layout.entries(base_cfg, task):
        if all(k in tensors for k in ent.hf_keys):
            params[ent.path] = ent.to_ours(*(tensors.pop(k) for k in ent.hf_keys))
    if tensors:
        raise UserError(f"{path}: tensors bertjax does not place in a {task} model: "
                        f"{', '.join(sorted(tensors)[:5])}")
    return fields, params


def _shapes(cfg, target: str) -> tuple[tuple, tuple]:
    h, nh, hd, i = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
    return {"query": ((h,), (nh, hd)), "key": ((h,), (nh, hd)), "value": ((h,), (nh, hd)),
            "attention_output": ((nh, hd), (h,)), "intermediate": ((h,), (i,)),
            "output": ((i,), (h,))}[target]
