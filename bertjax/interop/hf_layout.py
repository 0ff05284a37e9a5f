"""The mapping between bertjax parameters and the Hugging Face BERT layout (pure numpy).

Each bertjax leaf corresponds to one or more HF tensors; fused q/k/v is the only many-to-one case.
Round trips are exact: the transforms are transposes, stacks and reshapes, never arithmetic.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from bertjax.errors import UserError
from bertjax.model.encoder import BertConfig

# HF architecture name -> (bertjax task model, HF prefix of the encoder, has pooler, head kind)
ARCHITECTURES = {
    "BertForPreTraining": ("pretraining", "bert.", True, "pretraining"),
    "BertModel": ("base", "", True, None),
    "BertForMaskedLM": ("masked_lm", "bert.", False, "mlm"),
    "BertForSequenceClassification": ("sequence_classification", "bert.", True, "classifier"),
    "BertForTokenClassification": ("token_classification", "bert.", False, "classifier"),
    "BertForQuestionAnswering": ("question_answering", "bert.", False, "qa"),
}
TASK_TO_ARCH = {v[0]: k for k, v in ARCHITECTURES.items()}


@dataclasses.dataclass
class Entry:
    path: tuple  # bertjax leaf path, e.g. ("bert", "pooler", "dense", "kernel")
    hf_keys: tuple[str, ...]
    to_ours: Callable[..., np.ndarray]
    to_hf: Callable[[np.ndarray], tuple[np.ndarray, ...]]


def _same(x):
    return np.asarray(x)


def _one(fn):
    return lambda x: (fn(x),)


def _linear(path, hf, ours=None):
    """HF Linear weight is [out, in]; ours is [in, out]."""
    ours = ours or path
    return [
        Entry(ours + ("kernel",), (hf + ".weight",), lambda w: np.asarray(w).T, _one(lambda k: k.T)),
        Entry(ours + ("bias",), (hf + ".bias",), _same, _one(_same)),
    ]


def _layer_norm(ours, hf):
    return [
        Entry(ours + ("norm", "scale"), (hf + ".weight",), _same, _one(_same)),
        Entry(ours + ("norm", "bias"), (hf + ".bias",), _same, _one(_same)),
    ]


def _embed(ours, hf):
    return [Entry(ours + ("embedding",), (hf + ".weight",), _same, _one(_same))]


def _encoder_entries(cfg: BertConfig, root: tuple, pre: str, pooler: bool) -> list[Entry]:
    h, nh, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    e = root + ("embeddings",)
    out = (
        _embed(e + ("word_embeddings",), pre + "embeddings.word_embeddings")
        + _embed(e + ("position_embeddings",), pre + "embeddings.position_embeddings")
        + _embed(e + ("token_type_embeddings",), pre + "embeddings.token_type_embeddings")
        + _layer_norm(e + ("layer_norm",), pre + "embeddings.LayerNorm")
    )

    def qkv_kernel_to_ours(q, k, v):
        return np.stack([np.asarray(t).T for t in (q, k, v)], axis=1).reshape(h, 3, nh, hd)

    def qkv_kernel_to_hf(w):
        w = w.reshape(h, 3, h)
        return tuple(np.ascontiguousarray(w[:, i].T) for i in range(3))

    def qkv_bias_to_ours(q, k, v):
        return np.stack([q, k, v], axis=0).reshape(3, nh, hd)

    def qkv_bias_to_hf(b):
        b = b.reshape(3, h)
        return tuple(np.ascontiguousarray(b[i]) for i in range(3))

    for i in range(cfg.num_layers):
        lo = root + ("encoder", "layers", i)
        lh = f"{pre}encoder.layer.{i}."
        names = tuple(f"{lh}attention.self.{n}" for n in ("query", "key", "value"))
        out += [
            Entry(lo + ("attention", "qkv", "kernel"), tuple(n + ".weight" for n in names),
                  qkv_kernel_to_ours, qkv_kernel_to_hf),
            Entry(lo + ("attention", "qkv", "bias"), tuple(n + ".bias" for n in names),
                  qkv_bias_to_ours, qkv_bias_to_hf),
            Entry(lo + ("attention", "out", "kernel"), (lh + "attention.output.dense.weight",),
                  lambda w: np.asarray(w).T.reshape(nh, hd, h),
                  _one(lambda k: np.ascontiguousarray(k.reshape(h, h).T))),
            Entry(lo + ("attention", "out", "bias"), (lh + "attention.output.dense.bias",),
                  _same, _one(_same)),
        ]
        out += _layer_norm(lo + ("attention_layer_norm",), lh + "attention.output.LayerNorm")
        out += _linear(None, lh + "intermediate.dense", lo + ("intermediate",))
        out += _linear(None, lh + "output.dense", lo + ("output",))
        out += _layer_norm(lo + ("output_layer_norm",), lh + "output.LayerNorm")
    if pooler:
        out += _linear(None, pre + "pooler.dense", root + ("pooler", "dense"))
    return out


def entries(cfg: BertConfig, task: str) -> list[Entry]:
    arch = TASK_TO_ARCH[task]
    _, pre, pooler, head = ARCHITECTURES[arch]
    root = () if task == "base" else ("bert",)
    out = _encoder_entries(cfg, root, pre, pooler)
    if head in ("pretraining", "mlm"):
        out += _linear(None, "cls.predictions.transform.dense", ("mlm", "transform"))
        out += _layer_norm(("mlm", "layer_norm"), "cls.predictions.transform.LayerNorm")
        out += [Entry(("mlm", "bias"), ("cls.predictions.bias",), _same, _one(_same))]
    if head == "pretraining":
        out += _linear(None, "cls.seq_relationship", ("nsp", "dense"))
    elif head == "classifier":
        out += _linear(None, "classifier", ("classifier", "dense"))
    elif head == "qa":
        out += _linear(None, "qa_outputs", ("qa", "dense"))
    return out


# Tensors HF stores that bertjax derives (tied decoder) or does not use (buffers).
_IGNORED_HF = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
               "embeddings.position_ids", "embeddings.token_type_ids")


def _normalise_hf_key(key: str) -> str:
    # Checkpoints from the TF era name LayerNorm params gamma/beta.
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def hf_to_ours(tensors: dict, cfg: BertConfig, task: str, expected_shapes: dict) -> tuple[dict, dict]:
    """HF tensors -> {bertjax path: array}. Returns (params, report) where report lists missing keys
    (bertjax leaves with no HF source; the caller keeps their fresh init only if allowed) and
    unexpected HF keys. A shape mismatch raises UserError listing every mismatched tensor."""
    tensors = {_normalise_hf_key(k): v for k, v in tensors.items()}
    if task != "base" and not any(k.startswith("bert.") for k in tensors):
        tensors = {("bert." + k if not k.startswith(("cls.", "classifier", "qa_outputs")) else k): v
                   for k, v in tensors.items()}
    params, missing, used, bad = {}, [], set(), []
    for ent in entries(cfg, task):
        if not all(k in tensors for k in ent.hf_keys):
            missing.append("/".join(map(str, ent.path)) + " <- " + ", ".join(
                k for k in ent.hf_keys if k not in tensors))
            continue
        value = ent.to_ours(*(np.asarray(tensors[k]) for k in ent.hf_keys))
        want = expected_shapes.get(ent.path)
        if want is not None and tuple(value.shape) != tuple(want):
            bad.append(f"{', '.join(ent.hf_keys)}: HF gives {tuple(value.shape)}, "
                       f"model needs {tuple(want)}")
            continue
        used.update(ent.hf_keys)
        params[ent.path] = value
    if bad:
        raise UserError("shape mismatch between the Hugging Face weights and the model config: "
                        + "; ".join(bad))
    unexpected = sorted(k for k in tensors if k not in used and not k.endswith(_IGNORED_HF))
    return params, {"missing": missing, "unexpected": unexpected}


def ours_to_hf(params: dict, cfg: BertConfig, task: str) -> dict:
    """{bertjax path: array} -> HF tensors, including the tied decoder names HF expects."""
    out = {}
    for ent in entries(cfg, task):
        if ent.path not in params:
            raise UserError(f"the checkpoint has no parameter {'/'.join(map(str, ent.path))}; "
                            f"it does not hold a complete {task} model")
        for key, value in zip(ent.hf_keys, ent.to_hf(np.asarray(params[ent.path]))):
            out[key] = np.ascontiguousarray(value)
    return out


# --- configs -------------------------------------------------------------------------------------

_HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
_OUR_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
            "relu": "relu"}


def config_from_hf(hf: dict) -> dict:
    if hf.get("model_type", "bert") != "bert":
        raise UserError(f"config.json has model_type {hf.get('model_type')!r}; only 'bert' converts")
    act = hf.get("hidden_act", "gelu")
    if act not in _OUR_ACT:
        raise UserError(f"config.json hidden_act {act!r} is not supported; use one of {sorted(_OUR_ACT)}")
    num_labels = hf.get("num_labels") or len(hf.get("id2label") or {}) or 2
    return dict(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        initializer_range=hf.get("initializer_range", 0.02),
        hidden_act=_OUR_ACT[act],
        num_labels=int(num_labels),
    )


def config_to_hf(cfg: BertConfig, task: str, id2label: dict | None = None) -> dict:
    out = {
        "architectures": [TASK_TO_ARCH[task]],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": _HF_ACT[cfg.hidden_act],
        "hidden_dropout_prob": cfg.hidden_dropout,
        "attention_probs_dropout_prob": cfg.attention_dropout,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": cfg.initializer_range,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": 0,
        "tie_word_embeddings": True,
    }
    if task in ("sequence_classification", "token_classification"):
        labels = id2label or {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
        out["id2label"] = {str(k): v for k, v in labels.items()}
        out["label2id"] = {v: int(k) for k, v in labels.items()}
        if task == "sequence_classification" and cfg.num_labels == 1:
            out["problem_type"] = "regression"
    return out
