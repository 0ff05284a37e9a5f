"""What every layout table shares: the entry type, the Linear/LayerNorm/Embedding transforms, the
post-LN encoder block every BERT-family member names the same way, and the two directions of a
conversion (pure numpy). Round trips are exact: transposes, stacks and reshapes, never arithmetic.

A layout module (bert.py, roberta.py) holds one member's table as a `Layout`: its model_type,
its Hugging Face classes and the task model each is, the config key table, and `entries(cfg,
task)`, the weights.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from bertjax.errors import UserError


@dataclasses.dataclass
class Entry:
    path: tuple  # bertjax leaf path, e.g. ("bert", "pooler", "dense", "kernel")
    hf_keys: tuple[str, ...]
    to_ours: Callable[..., np.ndarray]
    to_hf: Callable[[np.ndarray], tuple[np.ndarray, ...]]


def same(x):
    return np.asarray(x)


def one(fn):
    return lambda x: (fn(x),)


def linear(ours: tuple, hf: str) -> list[Entry]:
    """HF Linear weight is [out, in]; ours is [in, out]."""
    return [
        Entry(ours + ("kernel",), (hf + ".weight",), lambda w: np.asarray(w).T, one(lambda k: k.T)),
        Entry(ours + ("bias",), (hf + ".bias",), same, one(same)),
    ]


def layer_norm(ours: tuple, hf: str) -> list[Entry]:
    return [
        Entry(ours + ("norm", "scale"), (hf + ".weight",), same, one(same)),
        Entry(ours + ("norm", "bias"), (hf + ".bias",), same, one(same)),
    ]


def embed(ours: tuple, hf: str) -> list[Entry]:
    return [Entry(ours + ("embedding",), (hf + ".weight",), same, one(same))]


def embedding_entries(cfg, root: tuple, pre: str) -> list[Entry]:
    """Word, position and (when the config has them) segment embeddings plus their LayerNorm."""
    e = root + ("embeddings",)
    out = (embed(e + ("word_embeddings",), pre + "embeddings.word_embeddings")
           + embed(e + ("position_embeddings",), pre + "embeddings.position_embeddings"))
    if cfg.type_vocab_size:
        out += embed(e + ("token_type_embeddings",), pre + "embeddings.token_type_embeddings")
    return out + layer_norm(e + ("layer_norm",), pre + "embeddings.LayerNorm")


def attention_entries(cfg, lo: tuple, names: tuple[str, str, str], out: str) -> list[Entry]:
    """Our fused [H, 3, heads, head_dim] q/k/v from three HF Linears, and the output projection."""
    h, nh, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim

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

    return [
        Entry(lo + ("attention", "qkv", "kernel"), tuple(n + ".weight" for n in names),
              qkv_kernel_to_ours, qkv_kernel_to_hf),
        Entry(lo + ("attention", "qkv", "bias"), tuple(n + ".bias" for n in names),
              qkv_bias_to_ours, qkv_bias_to_hf),
        Entry(lo + ("attention", "out", "kernel"), (out + ".weight",),
              lambda w: np.asarray(w).T.reshape(nh, hd, h),
              one(lambda k: np.ascontiguousarray(k.reshape(h, h).T))),
        Entry(lo + ("attention", "out", "bias"), (out + ".bias",), same, one(same)),
    ]


# The post-LN block's HF names inside one layer, as BERT spells them (RoBERTa and ELECTRA too).
BERT_BLOCK = dict(query="attention.self.query", key="attention.self.key",
                  value="attention.self.value", attention_out="attention.output.dense",
                  attention_norm="attention.output.LayerNorm", intermediate="intermediate.dense",
                  output="output.dense", output_norm="output.LayerNorm")


def block_entries(cfg, root: tuple, layer: str, names: dict) -> list[Entry]:
    """Every layer's post-LN block: `layer` is the HF prefix of layer (or shared group) N with
    `{}` for N, `names` the block's tensors in it (BERT_BLOCK's keys)."""
    out = []
    for i in range(cfg.num_hidden_groups or cfg.num_layers):
        lo = root + ("encoder", "layers", i)
        lh = layer.format(i)
        out += attention_entries(cfg, lo, tuple(lh + names[n] for n in ("query", "key", "value")),
                                 lh + names["attention_out"])
        out += layer_norm(lo + ("attention_layer_norm",), lh + names["attention_norm"])
        out += linear(lo + ("intermediate",), lh + names["intermediate"])
        out += linear(lo + ("output",), lh + names["output"])
        out += layer_norm(lo + ("output_layer_norm",), lh + names["output_norm"])
    return out


def bert_block_entries(cfg, root: tuple, pre: str) -> list[Entry]:
    """`{pre}encoder.layer.N.*` as BERT names it (RoBERTa, ELECTRA and others reuse the names)."""
    return block_entries(cfg, root, pre + "encoder.layer.{}.", BERT_BLOCK)


def mlm_entries(prefix: str, dense: str = "dense", norm: str = "LayerNorm",
                bias: str = "bias") -> list[Entry]:
    """The MLM transform, its LayerNorm and the output bias (the decoder is tied), under
    `{prefix}.`, or as named with prefix "" (DistilBERT's heads sit at the top level)."""
    pre = f"{prefix}." if prefix else ""
    return (linear(("mlm", "transform"), pre + dense)
            + layer_norm(("mlm", "layer_norm"), pre + norm)
            + [Entry(("mlm", "bias"), (pre + bias,), same, one(same))])


def rtd_head_entries() -> list[Entry]:
    """ELECTRA's replaced-token-detection head (dense -> activation -> dense to one logit) under
    the names ElectraForPreTraining gives it; DeBERTa-v3's pretraining reuses the head."""
    return (linear(("discriminator", "dense"), "discriminator_predictions.dense")
            + linear(("discriminator", "dense_prediction"),
                     "discriminator_predictions.dense_prediction"))


def fine_tuning_heads(task: str, two_layer_classifier: bool,
                      two_layer_names: tuple[str, str] = ("classifier.dense",
                                                          "classifier.out_proj")) -> list[Entry]:
    """The heads of sequence and token classification and QA as HF names them. A two-layer
    sequence classifier (RoBERTa, ELECTRA: `classifier.dense` -> activation ->
    `classifier.out_proj` on the first token; DistilBERT: `pre_classifier` -> ReLU ->
    `classifier`) is our pooler followed by our classifier."""
    if task == "sequence_classification" and two_layer_classifier:
        first, second = two_layer_names
        return (linear(("bert", "pooler", "dense"), first)
                + linear(("classifier", "dense"), second))
    if task in ("sequence_classification", "token_classification"):
        return linear(("classifier", "dense"), "classifier")
    if task == "question_answering":
        return linear(("qa", "dense"), "qa_outputs")
    return []


# --- configs -------------------------------------------------------------------------------------

HF_ACT = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}
OUR_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
           "relu": "relu"}

# (our field, HF key, default when absent) for the keys BERT-style configs share.
BERT_CONFIG = (
    ("vocab_size", "vocab_size", None),
    ("hidden_size", "hidden_size", None),
    ("num_layers", "num_hidden_layers", None),
    ("num_heads", "num_attention_heads", None),
    ("intermediate_size", "intermediate_size", None),
    ("max_position_embeddings", "max_position_embeddings", 512),
    ("type_vocab_size", "type_vocab_size", 2),
    ("hidden_dropout", "hidden_dropout_prob", 0.1),
    ("attention_dropout", "attention_probs_dropout_prob", 0.1),
    ("layer_norm_eps", "layer_norm_eps", 1e-12),
    ("initializer_range", "initializer_range", 0.02),
    ("pad_token_id", "pad_token_id", 0),
)


def _normalise_hf_key(key: str) -> str:
    # Checkpoints from the TF era name LayerNorm params gamma/beta.
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta",
                                                                      "LayerNorm.bias")


def _identity(d: dict) -> dict:
    return d


@dataclasses.dataclass(frozen=True)
class Layout:
    """One member's two-way table with Hugging Face."""

    model_type: str  # HF's config.json "model_type"
    arch: str  # our model.arch
    encoder: str  # HF's attribute for the encoder inside task models ("bert", "roberta")
    # HF class -> our task model (bertjax.model.TASK_MODELS)
    architectures: dict[str, str]
    entries: Callable[..., list[Entry]]  # (cfg, task) -> the weights
    config: Sequence[tuple] = BERT_CONFIG  # (our field, HF key, default when absent)
    head_prefixes: tuple[str, ...] = ()  # HF keys of heads, never under the encoder prefix
    ignored: tuple[str, ...] = ()  # suffixes of HF tensors we derive (tied) or do not use
    config_in: Callable[[dict], dict] = _identity  # after the table, HF -> ours
    config_out: Callable[[dict], dict] = _identity  # after the table, ours -> HF
    act_key: str = "hidden_act"  # the config.json key of the encoder's activation
    # The tokenizer's tokenizer_config.json -> what an export of this member writes (a member
    # whose HF tokenizer class differs from the tokenizer's, e.g. one without token types).
    tokenizer_config: Callable[[dict], dict] = _identity
    # Tokenizer files an export of this member names as HF's tokenizer class expects
    # (ours -> HF's), e.g. DeBERTa-v2's spm.model for our spiece.model.
    tokenizer_renames: tuple[tuple[str, str], ...] = ()
    # Our tasks that HF has no class for, written under the class that runs their encoder
    # (DeBERTa's discriminator as DebertaV2Model); read back only when the task is asked for.
    written_as: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def task_to_arch(self) -> dict[str, str]:
        return {**self.written_as, **{task: name for name, task in self.architectures.items()}}

    def task_from_hf_config(self, hf: dict) -> str:
        names = hf.get("architectures") or [self.task_to_arch["base"]]
        for name in names:
            if name in self.architectures:
                return self.architectures[name]
        raise UserError(f"architecture {names} is not supported for model_type "
                        f"{self.model_type!r}; supported: {sorted(self.architectures)}")

    def add_prefix(self, tensors: dict, task: str) -> dict:
        """A bare encoder's weights (an XModel directory) read as a task model's: prefixed; and a
        task model's read as the bare encoder: unprefixed (its heads then come out unexpected)."""
        prefix = self.encoder + "."
        if task == "base":
            return {k.removeprefix(prefix): v for k, v in tensors.items()}
        if any(k.startswith(prefix) for k in tensors):
            return tensors
        return {(k if k.startswith(self.head_prefixes) else f"{self.encoder}.{k}"): v
                for k, v in tensors.items()}

    def hf_to_ours(self, tensors: dict, cfg, task: str,
                   expected_shapes: dict) -> tuple[dict, dict]:
        """HF tensors -> {bertjax path: array}. Returns (params, report) where report lists
        missing keys (bertjax leaves with no HF source; the caller keeps their fresh init only if
        allowed) and unexpected HF keys. A shape mismatch raises UserError listing every
        mismatched tensor."""
        tensors = self.add_prefix({_normalise_hf_key(k): v for k, v in tensors.items()}, task)
        params, missing, used, bad = {}, [], set(), []
        for ent in self.entries(cfg, task):
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
            raise UserError("shape mismatch between the Hugging Face weights and the model "
                            "config: " + "; ".join(bad))
        unexpected = sorted(k for k in tensors if k not in used and not k.endswith(self.ignored))
        return params, {"missing": missing, "unexpected": unexpected}

    def ours_to_hf(self, params: dict, cfg, task: str) -> dict:
        """{bertjax path: array} -> HF tensors."""
        out = {}
        for ent in self.entries(cfg, task):
            if ent.path not in params:
                raise UserError(f"the checkpoint has no parameter {'/'.join(map(str, ent.path))}; "
                                f"it does not hold a complete {task} model")
            for key, value in zip(ent.hf_keys, ent.to_hf(np.asarray(params[ent.path]))):
                out[key] = np.ascontiguousarray(value)
        return out

    def config_from_hf(self, hf: dict) -> dict:
        """HF config.json -> our model fields."""
        act = hf.get(self.act_key, "gelu")
        if act not in OUR_ACT:
            raise UserError(f"config.json {self.act_key} {act!r} is not supported; use one of "
                            f"{sorted(OUR_ACT)}")
        out = {"arch": self.arch, "hidden_act": OUR_ACT[act]}
        for ours, key, default in self.config:
            if key not in hf and default is None:
                raise UserError(f"config.json of a {self.model_type} model has no {key!r}")
            value = hf.get(key)
            out[ours] = default if value is None else value
        out["num_labels"] = int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)
        return self.config_in(out)

    def config_to_hf(self, cfg, task: str, id2label: dict | None = None) -> dict:
        out = {"architectures": [self.task_to_arch[task]], "model_type": self.model_type,
               self.act_key: HF_ACT[cfg.hidden_act], "tie_word_embeddings": True}
        for ours, key, _ in self.config:
            out[key] = getattr(cfg, ours)
        if task in ("sequence_classification", "token_classification"):
            labels = id2label or {i: f"LABEL_{i}" for i in range(cfg.num_labels)}
            out["id2label"] = {str(k): v for k, v in labels.items()}
            out["label2id"] = {v: int(k) for k, v in labels.items()}
            if task == "sequence_classification" and cfg.num_labels == 1:
                out["problem_type"] = "regression"
        return self.config_out(out)
