"""BERT's table: `bert.*` encoder names, the `cls.*` MLM/NSP heads, `classifier`, `qa_outputs`."""
from __future__ import annotations

from bertjax.interop.layouts import common

ARCHITECTURES = {
    "BertForPreTraining": "pretraining",
    "BertModel": "base",
    "BertForMaskedLM": "masked_lm",
    "BertForSequenceClassification": "sequence_classification",
    "BertForTokenClassification": "token_classification",
    "BertForQuestionAnswering": "question_answering",
}
# The task models whose HF class has a pooler (for the others HF builds the encoder without one).
POOLED = ("pretraining", "base", "sequence_classification", "sentence_embedding")


def encoder_entries(cfg, task: str, encoder: str, pooled=POOLED) -> list[common.Entry]:
    """The encoder as HF names it inside a task model (`{encoder}.`) or alone (no prefix)."""
    pre = "" if task == "base" else encoder + "."
    root = () if task == "base" else ("bert",)
    out = common.embedding_entries(cfg, root, pre) + common.bert_block_entries(cfg, root, pre)
    if task in pooled:
        out += common.linear(root + ("pooler", "dense"), pre + "pooler.dense")
    return out


def entries(cfg, task: str) -> list[common.Entry]:
    out = encoder_entries(cfg, task, "bert")
    if task in ("pretraining", "masked_lm"):
        out += common.mlm_entries("cls.predictions", dense="transform.dense",
                                  norm="transform.LayerNorm")
    if task == "pretraining":
        out += common.linear(("nsp", "dense"), "cls.seq_relationship")
    return out + common.fine_tuning_heads(task, two_layer_classifier=False)


LAYOUT = common.Layout(
    model_type="bert", arch="bert", encoder="bert", architectures=ARCHITECTURES, entries=entries,
    head_prefixes=("cls.", "classifier", "qa_outputs"),
    # Tensors HF stores that bertjax derives (the tied decoder) or does not use (buffers).
    ignored=("cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
             "embeddings.position_ids", "embeddings.token_type_ids"),
)
