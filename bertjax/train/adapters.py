"""Training with LoRA: any objective, with only the adapters and the task head trained.

`wrap(objective, model_cfg)` changes what an objective trains and nothing else, so every
fine-tuning objective (GLUE, SQuAD, NER, the embedding losses) takes LoRA without a copy. The
step (train/step.py) keeps the rest, the base model, in the frozen part of its state: no
gradient, no optimizer state, and not in checkpoints (`save_frozen` false). A resumed run takes
the base from init_from again, as it first did; the adapters refer to it by path and by the
fingerprint of its weights (`fingerprint`), checked wherever they are loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from flax import nnx
from flax.nnx import traversals

from bertjax.model import layer_stack

# The base model: the embeddings and the layer stack, as every task model names them. The heads
# are outside it and train with the adapters; so does the pooler where it feeds one (the
# sequence classifier: it is the first layer of RoBERTa's and ELECTRA's classifiers).
BASE_PARTS = ("embeddings", "encoder")
POOLED_TASKS = ("sequence_classification",)
BASE_FILE = "lora_base.json"


def _key(k: Any) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def in_base(path: tuple, task: str | None = None) -> bool:
    """Whether a parameter is the base's: the embeddings and the layers, and the pooler of a task
    model whose head does not read it (None: the embeddings and the layers only)."""
    names = [_key(k) for k in path]
    if any(n in BASE_PARTS for n in names):
        return True
    return task is not None and "pooler" in names and task not in POOLED_TASKS


def trainable_for(task: str) -> Callable[[tuple, Any], bool]:
    """The NNX filter of a LoRA run of task model `task`: the adapters and every parameter
    outside the base."""
    def trainable(path: tuple, value: Any) -> bool:
        if isinstance(value, nnx.LoRAParam):
            return True
        return isinstance(value, nnx.Param) and not in_base(path, task)
    return trainable


class LoraObjective:
    """`inner`, training only what `trainable` selects; everything else is the inner objective's."""

    save_frozen = False

    def __init__(self, inner):
        self.inner = inner
        self.trainable = trainable_for(inner.model_task)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"LoraObjective({self.inner!r})"


def wrap(objective, model: dict):
    """The objective a run trains: `objective` itself unless the model has adapters."""
    return LoraObjective(objective) if int(model.get("lora_rank", 0)) else objective


def base_flat(tree: Any) -> dict[str, np.ndarray]:
    """The base's weights of a model, a model's nnx.State or a pure dict, by "/"-joined path in the
    per-layer layout (so a scanned model fingerprints as its per-layer checkpoint does)."""
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree, nnx.Param)
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    flat = traversals.flatten_mapping(tree)
    flat = {tuple(map(_key, k)): v for k, v in flat.items()}
    flat = layer_stack.per_layer({k: v for k, v in flat.items() if in_base(k)
                                  and "lora" not in k})
    return {"/".join(map(str, k)): _host(v) for k, v in flat.items()}


def _host(x) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def fingerprint(flat: dict[str, np.ndarray]) -> str:
    """sha256 over the base's weights (path, dtype, shape and float32 bytes, in path order): the
    same weights give the same value whatever file format or layer layout holds them."""
    h = hashlib.sha256()
    for name in sorted(flat):
        x = np.ascontiguousarray(np.asarray(flat[name], np.float32))
        h.update(f"{name}|{x.dtype.str}|{x.shape}\n".encode())
        h.update(x.tobytes())
    return h.hexdigest()


def base_reference(base: str, frozen: Any, state: Any) -> dict:
    """What a LoRA checkpoint records of its base: where it was loaded from and the fingerprint
    of its weights, with the sizes of both parts."""
    flat = base_flat(frozen)
    return {"base": os.path.abspath(base) if "://" not in base else base,
            "sha256": fingerprint(flat),
            "base_params": int(sum(x.size for x in flat.values())),
            "trained_params": int(sum(x.size for x in jax.tree.leaves(state["params"])))}


def reference_json(ref: dict) -> bytes:
    return (json.dumps(ref, indent=2, sort_keys=True) + "\n").encode()


def read_reference(directory: str) -> dict | None:
    path = epath.Path(directory) / BASE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def dir_bytes(directory: str | epath.PathLike) -> int:
    """Bytes of every file under a directory (a checkpoint's size on disk)."""
    root = epath.Path(directory)
    if not root.exists():
        return 0
    total = 0
    for path, _, files in root.walk():
        total += sum((path / f).stat().length for f in files)
    return total
