"""Reading checkpoints in the original google-research/bert TensorFlow format: a directory with
bert_config.json, vocab.txt and a name-based checkpoint (bert_model.ckpt.index / .data-*).

The original variable names map one to one onto the Hugging Face names (HF's own converter was
written for exactly these files), so a TF checkpoint is renamed into the HF layout and then goes
through BERT's layout table (interop/layouts/bert.py) like any HF directory. TensorFlow is imported only here and only when
a checkpoint is read (`tf.train.load_checkpoint`).
"""
from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

from bertjax.errors import UserError
from bertjax.interop import params as interop
from bertjax.interop.layouts import bert as bert_layout
from bertjax.model.encoder import BertConfig
from bertjax.store.workdir import IDENTITY_FILE
from bertjax.text import load_tokenizer

CONFIG_FILE = "bert_config.json"
VOCAB_FILE = "vocab.txt"
# Optimizer slots and counters that training checkpoints carry beside the weights.
_TRAINING_STATE = re.compile(r"(^|/)(adam_m|adam_v|global_step|bad_steps|loss_scale)$")


def _tf_to_hf_name(name: str) -> tuple[str, bool] | None:
    """(HF tensor name, transpose?) for one original variable, None when it is not a BERT weight.
    TF dense kernels are [in, out] and HF Linear weights [out, in]; the NSP, classifier and
    SQuAD `output_weights` are already stored [out, in] (the original multiplies with
    transpose_b=True)."""
    if name == "cls/predictions/output_bias":
        return "cls.predictions.bias", False
    if name == "cls/seq_relationship/output_weights":
        return "cls.seq_relationship.weight", False
    if name == "cls/seq_relationship/output_bias":
        return "cls.seq_relationship.bias", False
    if name == "output_weights":  # run_classifier.py's classification layer
        return "classifier.weight", False
    if name == "output_bias":
        return "classifier.bias", False
    if name == "cls/squad/output_weights":  # run_squad.py's start/end layer
        return "qa_outputs.weight", False
    if name == "cls/squad/output_bias":
        return "qa_outputs.bias", False
    if not name.startswith(("bert/", "cls/predictions/transform/")):
        return None
    parts = name.split("/")
    leaf = parts[-1]
    transpose = leaf == "kernel"
    suffix = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}.get(leaf)
    if len(parts) == 3 and parts[1] == "embeddings" and leaf.endswith("_embeddings"):
        return f"bert.embeddings.{leaf}.weight", False
    if suffix is None:
        return None
    path = [re.sub(r"^layer_(\d+)$", r"layer.\1", p) for p in parts[:-1]]
    return ".".join(path + [suffix]), transpose


def _task_of(names: set[str]) -> str:
    if any(n.startswith("cls/predictions/") for n in names):
        return "pretraining" if any(n.startswith("cls/seq_relationship/") for n in names) \
            else "masked_lm"
    if "cls/squad/output_weights" in names:
        return "question_answering"
    if "output_weights" in names:
        return "sequence_classification"
    return "base"


def checkpoint_prefix(directory: str) -> str:
    """The checkpoint inside `directory`: bert_model.ckpt when present, else the one named by a
    TF `checkpoint` file, else the only *.index there."""
    if os.path.isfile(os.path.join(directory, "bert_model.ckpt.index")):
        return os.path.join(directory, "bert_model.ckpt")
    state = os.path.join(directory, "checkpoint")
    if os.path.isfile(state):
        m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', open(state, encoding="utf-8").read(),
                      re.M)
        if m:
            prefix = m.group(1)
            prefix = prefix if os.path.isabs(prefix) else os.path.join(directory, prefix)
            if os.path.isfile(prefix + ".index"):
                return prefix
    found = sorted(glob.glob(os.path.join(directory, "*.index")))
    if len(found) == 1:
        return found[0][:-len(".index")]
    what = "no" if not found else f"{len(found)}"
    raise UserError(f"{directory} holds {what} TF checkpoint (*.index) files; expected "
                    f"bert_model.ckpt.index and .data-* as in the original BERT releases")


def read_variables(prefix: str) -> dict[str, np.ndarray]:
    from bertjax.data.tf_runtime import tf  # seconds to import; only this reader needs it

    try:
        reader = tf.train.load_checkpoint(prefix)
    except Exception as e:  # noqa: BLE001 - TF raises several types for unreadable files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"cannot read TF checkpoint {prefix} ({first}); expected a complete "
                        f"bert_model.ckpt.index and .data-* pair") from None
    return {name: np.asarray(reader.get_tensor(name))
            for name in reader.get_variable_to_shape_map()}


def read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{directory} has no {CONFIG_FILE}; an original BERT checkpoint directory "
                        f"holds bert_config.json, vocab.txt and bert_model.ckpt.*")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None


def tokenizer_extras(directory: str) -> dict:
    """vocab.txt, a tokenizer_config.json stating the casing, and the tokenizer identity, stored
    with the converted checkpoint as the HF import stores them. The original files do not record
    the casing; it is read off the vocabulary (bertjax.text's rule, as for any vocab.txt)."""
    vocab = os.path.join(directory, VOCAB_FILE)
    if not os.path.isfile(vocab):
        raise UserError(f"{directory} has no {VOCAB_FILE}; the original BERT releases ship it "
                        f"beside bert_config.json")
    tok = load_tokenizer(directory)
    stated = {"do_lower_case": tok.lower_case, "strip_accents": tok.strip_accents}
    return {VOCAB_FILE: vocab,
            "tokenizer_config.json": json.dumps(stated, indent=2).encode(),
            IDENTITY_FILE: json.dumps(tok.identity(), indent=2).encode()}


def load_tf(directory: str, task: str | None = None):
    """Reads an original TF BERT directory into a bertjax model: (model, cfg, task).

    Every variable must be used (optimizer slots and step counters aside), every model parameter
    must be found and every shape must fit; otherwise one UserError lists the unknown, missing
    and mis-shaped variables by their TF names."""
    hf_cfg = read_config(directory)
    try:
        cfg = BertConfig.from_dict(bert_layout.LAYOUT.config_from_hf(hf_cfg))
    except KeyError as e:
        raise UserError(f"{os.path.join(directory, CONFIG_FILE)} lacks {e}") from None
    variables = read_variables(checkpoint_prefix(directory))
    names = {n for n in variables if not _TRAINING_STATE.search(n)}
    task = task or _task_of(names)
    if task == "sequence_classification":
        cfg = BertConfig.from_dict({**cfg.to_dict(), "num_labels": int(
            variables["output_weights"].shape[0])})
    renamed, origin, unknown = {}, {}, []
    for name in sorted(names):
        hf = _tf_to_hf_name(name)
        if hf is None:
            unknown.append(name)
            continue
        value = variables[name]
        renamed[hf[0]] = value.T if hf[1] else value
        origin[hf[0]] = name
    if task == "base":
        renamed = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in renamed.items()}
        origin = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in origin.items()}
    shapes = interop.param_shapes(task, cfg)
    params, missing, bad, used = {}, [], [], set()
    for ent in bert_layout.entries(cfg, task):
        absent = [k for k in ent.hf_keys if k not in renamed]
        if absent:
            missing.extend(_tf_name_of(k) for k in absent)
            continue
        try:
            value = ent.to_ours(*(renamed[k] for k in ent.hf_keys))
        except ValueError:  # a reshape that cannot work: the tensors do not fit the config
            value = None
        want = shapes[ent.path]
        if value is None or tuple(value.shape) != tuple(want):
            bad.append(", ".join(f"{origin[k]} {tuple(variables[origin[k]].shape)}"
                                 for k in ent.hf_keys))
            continue
        used.update(ent.hf_keys)
        params[ent.path] = value
    wanted = {k for ent in bert_layout.entries(cfg, task) for k in ent.hf_keys}
    unknown += sorted(origin[k] for k in renamed if k not in wanted)
    problems = []
    if unknown:
        problems.append(f"unknown variables {', '.join(unknown)}")
    if missing:
        problems.append(f"missing variables {', '.join(missing)}")
    if bad:
        problems.append(f"variables whose shapes do not fit {CONFIG_FILE}: {'; '.join(bad)}")
    if problems:
        raise UserError(f"{directory} is not a {task} BERT checkpoint this config describes: "
                        + "; ".join(problems))
    return interop.model_from_flat(task, cfg, params), cfg, task


def _tf_name_of(hf_key: str) -> str:
    """The original variable name an HF key comes from, for messages about missing ones."""
    fixed = {"cls.predictions.bias": "cls/predictions/output_bias",
             "cls.seq_relationship.weight": "cls/seq_relationship/output_weights",
             "cls.seq_relationship.bias": "cls/seq_relationship/output_bias",
             "classifier.weight": "output_weights", "classifier.bias": "output_bias",
             "qa_outputs.weight": "cls/squad/output_weights",
             "qa_outputs.bias": "cls/squad/output_bias"}
    if hf_key in fixed:
        return fixed[hf_key]
    if not hf_key.startswith(("bert.", "cls.")):
        hf_key = "bert." + hf_key  # a bare encoder's names lack the prefix its TF names have
    parts = hf_key.split(".")
    if parts[-2].endswith("_embeddings"):
        return "/".join(parts[:-1])
    leaf = {"weight": "gamma" if parts[-2] == "LayerNorm" else "kernel",
            "bias": "beta" if parts[-2] == "LayerNorm" else "bias"}[parts[-1]]
    out, i = [], 0
    while i < len(parts) - 1:
        if parts[i] == "layer" and i + 1 < len(parts) and parts[i + 1].isdigit():
            out.append(f"layer_{parts[i + 1]}")
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return "/".join(out + [leaf])
