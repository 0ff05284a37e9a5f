"""The workdir and checkpoint contract, in one place: the file names, the tokenizer identity,
which steps are committed, and what model and tokenizer a checkpoint holds. Every reader (resume,
init_from, export, embed, fill-mask, fine-tuning) goes through `inspect`; paths are local or any
etils.epath URL (gs://...), and every small file is written all-or-nothing.

A run's workdir:
    config.json              the config as the user gave it (nothing writes to it after parsing)
    run_plan.json            what the run derived: steps, warmup, model shape, init_from, attention
    tokenizer_identity.json  the tokenizer every checkpoint here was trained with
    vocab/                   its vocabulary files
    checkpoints/<step>/      Orbax: state, data (input position), config ({"config", "plan"})
    best/                    fine-tuning: the best dev checkpoint (params only) and best.json
    COMPLETED                written last, when training finished
    .lock                    the one-job lease (store/lock.py)
A params-only checkpoint: params/ (Orbax), model_config.json (with "task"), vocabulary files and
tokenizer_identity.json. A Hugging Face directory: config.json, model.safetensors or
pytorch_model.bin, and its tokenizer files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from etils import epath

from bertjax.errors import UserError
from bertjax.interop import electra_pair, hf_dir, layouts
from bertjax.store.files import write_atomic  # also wd.write_atomic for the workdir's writers
from bertjax.text import check_identity as compare

CONFIG_FILE = "config.json"
RUN_PLAN_FILE = "run_plan.json"
IDENTITY_FILE = "tokenizer_identity.json"
VOCAB_DIR = "vocab"
CHECKPOINT_SUBDIR = "checkpoints"
COMPLETED_FILE = "COMPLETED"
MODEL_CONFIG_FILE = "model_config.json"
PARAMS_ITEM = "params"
BEST_DIR = "best"
BEST_FILE = "best.json"
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_json(path: str | epath.PathLike) -> dict | None:
    path = epath.Path(path)
    return json.loads(path.read_text()) if path.exists() else None


# --------------------------------------------------------------------------- tokenizer identity


def read_identity(directory: str | epath.PathLike) -> dict | None:
    return read_json(epath.Path(directory) / IDENTITY_FILE)


def write_identity(directory: str | epath.PathLike, identity: dict) -> None:
    write_atomic(epath.Path(directory) / IDENTITY_FILE, json.dumps(identity, indent=2))


def check_identity(directory: str | epath.PathLike, identity: dict, what: str) -> None:
    """Refuses a tokenizer other than the one `directory` was made with (when it records one)."""
    stored = read_identity(directory)
    if stored is not None:
        compare(stored, identity, what)


# --------------------------------------------------------------------------- steps and markers


def checkpoint_root(workdir: str | epath.PathLike) -> epath.Path:
    return epath.Path(workdir) / CHECKPOINT_SUBDIR


def committed_steps(workdir: str | epath.PathLike) -> list[int]:
    """Steps Orbax has finalised (a save killed midway, or still uploading, is not one)."""
    # Orbax (and TensorStore) only for a run's steps: reading an export never loads it (see
    # tools/export.load_export).
    import orbax.checkpoint as ocp

    root = checkpoint_root(workdir)
    return sorted(ocp.path.step.checkpoint_steps(root)) if root.exists() else []


def completed_step(workdir: str | epath.PathLike) -> int | None:
    """The step recorded in COMPLETED (None while the run is unfinished)."""
    marker = read_json(epath.Path(workdir) / COMPLETED_FILE)
    return int(marker["step"]) if marker else None


def write_completed(workdir: str | epath.PathLike, step: int) -> None:
    write_atomic(epath.Path(workdir) / COMPLETED_FILE,
                 json.dumps({"step": int(step), "time": time.time()}) + "\n")


def clear_completed(workdir: str | epath.PathLike) -> None:
    marker = epath.Path(workdir) / COMPLETED_FILE
    if marker.exists():
        marker.unlink()


# --------------------------------------------------------------------------- what is in it


@dataclasses.dataclass(frozen=True)
class Contents:
    """What a checkpoint path holds. kind: "hf", "params" (params-only) or "run" (a training
    workdir, read at its newest committed step)."""

    kind: str
    path: str
    model: dict        # the model section (BertConfig fields) it was trained with
    task: str          # the task model (bertjax.model.TASK_MODELS)
    step: int | None   # run: the committed step read
    vocab_dir: str | None
    identity: dict | None


def is_hf_dir(path: str | epath.PathLike) -> bool:
    # A training workdir also holds a config.json (the run's), but never HF weight files.
    p = epath.Path(path)
    return (p / CONFIG_FILE).exists() and any((p / n).exists() for n in HF_WEIGHT_FILES)


def vocab_dir(path: str | epath.PathLike) -> str | None:
    """The directory holding a checkpoint's vocabulary: itself, or a run's vocab/ copy."""
    # An ELECTRA pair export holds its tokenizer in each network's directory.
    for d in (os.fspath(path), os.path.join(os.fspath(path), VOCAB_DIR),
              os.path.join(os.fspath(path), "discriminator")):
        if hf_dir.tokenizer_files(d):
            return d
    return None


def step_config(workdir: str | epath.PathLike, step: int) -> dict:
    """The {"config", "plan"} a run saved with `step`."""
    return json.loads((checkpoint_root(workdir) / str(step) / "config" / "metadata").read_text())


def inspect(path: str | epath.PathLike) -> Contents:
    text = os.fspath(path)
    p = epath.Path(text)
    if not p.exists():
        raise UserError(f"checkpoint {text} does not exist")
    vocab = vocab_dir(text)
    identity = read_identity(vocab) if vocab else None
    if identity is None:
        identity = read_identity(p)
    if is_hf_dir(p):
        hf = hf_dir.read_config(text)
        return Contents("hf", text, layouts.config_from_hf(hf), layouts.task_from_hf_config(hf), None,
                        vocab, identity)
    if electra_pair.is_pair_dir(text):
        return Contents("hf_pair", text, electra_pair.model_config(text), electra_pair.PRETRAINING,
                        None, vocab, identity)
    model = read_json(p / MODEL_CONFIG_FILE)
    if model is not None:
        task = model.pop("task", "pretraining")
        return Contents("params", text, model, task, None, vocab, identity)
    steps = committed_steps(p)
    if steps:
        plan = step_config(p, steps[-1])["plan"]
        return Contents("run", text, dict(plan["model"]), plan["task_model"], steps[-1], vocab,
                        identity)
    raise UserError(f"{text} is neither a Hugging Face model directory (config.json and weights), "
                    f"a params-only bertjax checkpoint ({MODEL_CONFIG_FILE}) nor a run workdir "
                    f"with a committed step ({CHECKPOINT_SUBDIR}/<step>)")
