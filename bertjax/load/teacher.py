"""A distillation run's teacher (train/distill.py): its vocabulary check, and the arrays it puts
into the run's state.

The teacher is any checkpoint `model_files.load_model` opens: a run workdir, a params-only
checkpoint, or a Hugging Face directory of a family member. `init_parts` is what the training
loop calls where a run is initialised from `init_from` (train/loop.py), at the first start and
again on every resume, because checkpoints leave the teacher out: it fills the frozen part with
the teacher's weights and, with `distill.init=teacher`, the student with the teacher's
embeddings, the layers of `distill.layer_map` and the MLM head. The run records the sha256 of
the teacher's weights (`teacher.json` in the workdir), so a resume refuses a teacher that changed
under the same path: the run it continued would not be the one it started. `save_truncated`
writes the same start as a checkpoint of its own (any task model, the teacher's other weights
as they are), for runs that take a student by `init_from` (embedding distillation).
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import numpy as np
from etils import epath
from flax import nnx
from flax.nnx import traversals

from bertjax.errors import UserError
from bertjax.model import layer_stack
from bertjax.model.bert import build_model
from bertjax.model.distill import TEACHER
from bertjax.store import workdir as wd
from bertjax.text import check_identity, load_tokenizer
from bertjax.train import adapters
from bertjax.train import checkpoint as ckpt_lib

_LAYERS = ("bert", "encoder", "layers")
RECORD_FILE = "teacher.json"


def check_vocabulary(teacher: str, identity: dict) -> None:
    """Refuses a teacher whose tokenizer is not the prepared data's (so not the student's): the
    KL term compares the two models token by token over one vocabulary."""
    recorded = wd.inspect(teacher).identity
    if recorded is None:
        src = wd.vocab_dir(teacher)
        if src is None:
            raise UserError(f"the teacher {teacher} holds no vocabulary or tokenizer identity, so "
                            "its vocabulary cannot be checked against the data's; use a teacher "
                            "saved with its vocabulary (a run workdir or an export)")
        recorded = load_tokenizer(src).identity()
    check_identity(recorded, identity, f"the teacher {teacher}")


def _name(k: Any) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _leaves(tree: Any) -> tuple[list[tuple[str, ...]], list[Any], Any]:
    """(key tuples, leaves, treedef) of a state part; a Variable's trailing "value" dropped, as
    the checkpoint loader names them."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    keys = []
    for path, _ in flat:
        names = tuple(_name(p) for p in path)
        keys.append(names[:-1] if names and names[-1] == "value" else names)
    return keys, [leaf for _, leaf in flat], treedef


def teacher_arrays(model: nnx.Module) -> dict[tuple[str, ...], np.ndarray]:
    """A loaded teacher's weights by per-layer key (a scanned model is unstacked)."""
    flat = traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    flat = layer_stack.per_layer({tuple(map(_name, k)): v for k, v in flat.items()})
    return {tuple(map(str, k)): np.asarray(jax.device_get(v)) for k, v in flat.items()}


def student_source(key: tuple[str, ...], layer_map: tuple[int, ...],
                   teacher_layer: Callable[[int], int]) -> tuple[str, ...] | None:
    """The teacher weight a student weight starts from (None: it keeps its fresh value): the
    embeddings and the MLM head as they are, student layer i from teacher layer layer_map[i]."""
    if key[:2] == ("bert", "embeddings") or key[:1] == ("mlm",):
        return key
    if key[:3] == _LAYERS and len(key) > 3 and key[3].isdigit():
        return _LAYERS + (str(teacher_layer(layer_map[int(key[3])])),) + key[4:]
    return None


def _place(source: dict, key: tuple, src, leaf, what: str):
    """The teacher array `src` (a list of them, one per layer, for a scanned stack) as the state
    leaf `key` wants it, on the leaf's sharding; None if the teacher lacks it."""
    parts = [source.get(s) for s in (src if isinstance(src, list) else [src])]
    if any(p is None for p in parts):
        return None
    x = np.stack(parts) if isinstance(src, list) else parts[0]
    if tuple(x.shape) != tuple(leaf.shape):
        raise UserError(f"{what}: the student's {'/'.join(key)} is {tuple(leaf.shape)} but the "
                        f"teacher's is {tuple(x.shape)}; give the student the teacher's sizes "
                        "or set --config.distill.init=random")
    return jax.device_put(x.astype(leaf.dtype), getattr(leaf, "sharding", None))


def _sources(key: tuple, leaf, one: Callable[[tuple], tuple | None]):
    """`one(per-layer key)` for a per-layer leaf; a list, layer by layer, for a stacked one."""
    split = layer_stack.split_layer_key(key)
    if split is not None and split[1] and not split[1][0].isdigit():
        srcs = [one(split[0] + (str(i),) + split[1]) for i in range(leaf.shape[0])]
        return None if any(s is None for s in srcs) else srcs
    return one(key)


def fill(part: Any, fresh: Any, source: dict, one: Callable[[tuple], tuple | None],
         what: str) -> tuple[Any, list[str], list[str]]:
    """`part`'s structure with each leaf taken from `source` where `one` names a source for it,
    else from `fresh`; returns (tree, copied keys, kept keys)."""
    keys, leaves, treedef = _leaves(part)
    _, fresh_leaves, _ = _leaves(fresh)
    out, copied, kept = [], [], []
    for key, leaf, fresh_leaf in zip(keys, leaves, fresh_leaves):
        src = _sources(key, leaf, one)
        x = None if src is None else _place(source, key, src, leaf, what)
        if x is None:
            out.append(fresh_leaf)
            kept.append("/".join(key))
        else:
            out.append(x)
            copied.append("/".join(key))
    return jax.tree_util.tree_unflatten(treedef, out), copied, kept


def check_record(workdir: str, path: str, source: dict) -> None:
    """Refuses, on resume, a teacher whose weights are not those the run started with; records
    them at a start (rewritten until the run has a checkpoint)."""
    sha = adapters.fingerprint({"/".join(k): v for k, v in source.items()})
    record = epath.Path(workdir) / RECORD_FILE
    if wd.committed_steps(workdir) and record.exists():
        was = json.loads(record.read_text())
        if was.get("sha256") != sha:
            raise UserError(f"the teacher at {path} is not the one this run started from "
                            f"({was.get('path')}, weights sha256 {was.get('sha256', '?')[:12]}, "
                            f"now {sha[:12]}); resume with that teacher, or start a new workdir")
        return
    if jax.process_index() == 0:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        wd.write_atomic(record, json.dumps({"path": path, "sha256": sha}, indent=2))


def init_parts(objective, workdir: str | None = None
               ) -> Callable[[dict, dict], tuple[dict, ckpt_lib.LoadReport]]:
    """The loop's initialiser for a distillation run in `workdir`: (abstract parts, fresh
    parts) -> ({"params", "frozen"}, report)."""
    path = objective.teacher_path

    def load(abstract: dict, fresh: dict):
        # Orbax and the Hugging Face readers come with it (tests/test_imports.py: LAZY_OK).
        from bertjax.load import model_files

        model, cfg, _, _, _ = model_files.load_model(path, task="masked_lm")
        source = teacher_arrays(model)
        if workdir is not None:
            check_record(workdir, path, source)
        stored = cfg.num_hidden_groups or cfg.num_layers

        def as_teacher(key):
            return key[1:] if key[:1] == (TEACHER,) else None

        frozen, loaded, missing = fill(abstract["frozen"], fresh["frozen"], source, as_teacher,
                                       f"the teacher {path}")
        if missing:
            raise UserError(f"the teacher {path} has no weights for {len(missing)} parameters "
                            f"of its masked-LM model: {', '.join(missing[:6])}")
        params, copied, kept = fresh["params"], [], []
        if objective.init == "teacher":
            def as_student(key):
                return student_source(key, objective.layer_map,
                                      lambda depth: depth * stored // cfg.num_layers)

            params, copied, kept = fill(abstract["params"], fresh["params"], source, as_student,
                                        f"distill.init=teacher from {path}")
        else:
            kept = _leaves(abstract["params"])[0]
            kept = ["/".join(k) for k in kept]
        report = ckpt_lib.LoadReport(source=path, loaded=sorted(copied + loaded),
                                     missing=sorted(kept), unexpected=[])
        return {"params": params, "frozen": frozen}, report

    return load


def save_truncated(path: str, layer_map: tuple[int, ...], out_dir: str, task: str | None = None,
                   extra_files: dict | None = None) -> tuple[list[str], list[str]]:
    """Writes to out_dir a params-only checkpoint of the model at `path` as a `task` model (None:
    its own), with its vocabulary, cut to len(layer_map) layers: student layer i is teacher layer
    layer_map[i] (student_source, as distill.init=teacher starts), every other weight the
    teacher's. Returns (copied keys, keys left at their fresh value)."""
    from bertjax.load import model_files

    model, cfg, task, _, _ = model_files.load_model(path, task=task)
    if cfg.num_hidden_groups:
        raise UserError(f"{path} shares its layers (num_hidden_groups={cfg.num_hidden_groups}); "
                        "a layer map picks layers of a model that has its own per layer")
    student_cfg = dataclasses.replace(cfg, num_layers=len(layer_map))
    student = build_model(task, student_cfg)
    state = nnx.state(student, nnx.Param)

    def one(key):
        if key[:3] == _LAYERS:
            return student_source(key, layer_map, lambda depth: depth)
        return key

    params, copied, kept = fill(state, state, teacher_arrays(model), one,
                                f"layers {list(layer_map)} of {path}")
    if not any(k.startswith("/".join(_LAYERS) + "/") for k in copied):
        raise UserError(f"{path} as a {task} model has no {'/'.join(_LAYERS)} weights to map; "
                        "pass a task model built on a BERT encoder (e.g. sentence_embedding)")
    nnx.update(student, params)
    model_files.save_checkpoint(out_dir, student, student_cfg, task, overwrite=True, extra_files={
        **model_files.tokenizer_extras(path), **(extra_files or {})})
    return copied, kept
