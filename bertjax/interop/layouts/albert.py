"""ALBERT's table. The computation is BERT's post-LN block; what differs is where HF keeps it:
- the embeddings are E wide, and `encoder.embedding_hidden_mapping_in` (our
  `embeddings/projection`) maps E -> H;
- the layers live once per group, `encoder.albert_layer_groups.G.albert_layers.0.*`, and layer l
  runs group l*G/L, which is our `num_hidden_groups` and `encoder/layers/G` as it stands;
- the MLM head is `predictions.{dense (H->E), LayerNorm, bias}` before the tied decoder;
- the pooler is a bare Linear (`albert.pooler`), tanh applied by the model, as ours;
- the pretraining pair head is `sop_classifier.classifier`: our `nsp` head, which SOP trains.

HF always has the E->H projection, while our encoder has one only when E != H, so an ALBERT with
embedding_size == hidden_size is refused both ways rather than converted wrongly. HF's
`inner_group_num` (several different layers inside a group) has no counterpart here and is
refused unless 1.
"""
from __future__ import annotations

import dataclasses

from bertjax.errors import UserError
from bertjax.interop.layouts import common

ARCHITECTURES = {
    "AlbertForPreTraining": "pretraining",
    "AlbertModel": "base",
    "AlbertForMaskedLM": "masked_lm",
    "AlbertForSequenceClassification": "sequence_classification",
    "AlbertForTokenClassification": "token_classification",
    "AlbertForQuestionAnswering": "question_answering",
}
POOLED = ("pretraining", "base", "sequence_classification", "sentence_embedding")


# ALBERT's names for the post-LN block inside `albert_layer_groups.G.albert_layers.0.`.
BLOCK = dict(query="attention.query", key="attention.key", value="attention.value",
             attention_out="attention.dense", attention_norm="attention.LayerNorm",
             intermediate="ffn", output="ffn_output", output_norm="full_layer_layer_norm")


def entries(cfg, task: str) -> list[common.Entry]:
    _check_projection(cfg.embedding_width, cfg.hidden_size)
    pre = "" if task == "base" else "albert."
    root = () if task == "base" else ("bert",)
    out = common.embedding_entries(cfg, root, pre)
    out += common.linear(root + ("embeddings", "projection"),
                         pre + "encoder.embedding_hidden_mapping_in")
    out += common.block_entries(cfg, root, pre + "encoder.albert_layer_groups.{}.albert_layers.0.",
                                BLOCK)
    if task in POOLED:
        out += common.linear(root + ("pooler", "dense"), pre + "pooler")
    if task in ("pretraining", "masked_lm"):
        out += common.mlm_entries("predictions")
    if task == "pretraining":
        out += common.linear(("nsp", "dense"), "sop_classifier.classifier")
    elif task in ("sequence_classification", "token_classification"):
        out += common.linear(("classifier", "dense"), "classifier")
    elif task == "question_answering":
        out += common.linear(("qa", "dense"), "qa_outputs")
    return out


def _check_projection(embedding: int, hidden: int) -> None:
    if embedding == hidden:
        raise UserError(f"an ALBERT with embedding_size == hidden_size ({hidden}): Hugging Face's "
                        "ALBERT always projects E -> H and bertjax's encoder only when they "
                        "differ; set model.embedding_size below hidden_size (ALBERT uses 128)")


def _config_out(hf: dict) -> dict:
    _check_projection(hf["embedding_size"] or hf["hidden_size"], hf["hidden_size"])
    # num_hidden_groups 0 (every layer its own) is HF's G = L.
    return {**hf, "num_hidden_groups": hf["num_hidden_groups"] or hf["num_hidden_layers"],
            "inner_group_num": 1}


# ALBERT's defaults where its config.json leaves a key out (transformers' AlbertConfig).
_DEFAULTS = {"hidden_dropout": 0.0, "attention_dropout": 0.0}
CONFIG = tuple((o, k, _DEFAULTS.get(o, d)) for o, k, d in common.BERT_CONFIG) + (
    ("embedding_size", "embedding_size", 128),
    ("num_hidden_groups", "num_hidden_groups", 1),
)


@dataclasses.dataclass(frozen=True)
class AlbertLayout(common.Layout):
    def config_from_hf(self, hf: dict) -> dict:
        if int(hf.get("inner_group_num", 1)) != 1:
            raise UserError(f"config.json has inner_group_num {hf['inner_group_num']}: several "
                            "different layers inside one ALBERT group, which bertjax's shared "
                            "layers do not express (it reads inner_group_num 1, every released "
                            "ALBERT)")
        out = super().config_from_hf({"hidden_act": "gelu_new", **hf})
        _check_projection(out["embedding_size"], out["hidden_size"])
        return out


LAYOUT = AlbertLayout(
    model_type="albert", arch="albert", encoder="albert", architectures=ARCHITECTURES,
    entries=entries, config=CONFIG,
    head_prefixes=("predictions.", "sop_classifier", "classifier", "qa_outputs"),
    ignored=("predictions.decoder.weight", "predictions.decoder.bias",
             "embeddings.position_ids", "embeddings.token_type_ids"),
    config_out=_config_out,
)
