"""ELECTRA's table. The encoder is BERT's under `electra.*`, without a pooler, at the embedding
width E with `electra.embeddings_project` (E->H) when E differs from H. The heads:
- `discriminator_predictions.{dense, dense_prediction}`: our `discriminator` head
  (ElectraForPreTraining, task replaced_token_detection);
- `generator_predictions.{dense, LayerNorm}` and `generator_lm_head` (its weight tied to the word
  embeddings, its bias ours): the generator's MLM head (ElectraForMaskedLM, task masked_lm). A
  generator is its own HF model at its own width; interop/electra_pair.py splits and joins the
  pretraining model's two networks;
- sequence classification: `classifier.dense` -> GELU -> `classifier.out_proj` on the first
  token, which is our pooler (pooler_act=gelu) followed by our classifier.
HF's config always holds embedding_size (128 when absent); ours says 0 when it equals H.
"""
from __future__ import annotations

from bertjax.interop.layouts import bert, common

ARCHITECTURES = {
    "ElectraModel": "base",
    "ElectraForPreTraining": "replaced_token_detection",
    "ElectraForMaskedLM": "masked_lm",
    "ElectraForSequenceClassification": "sequence_classification",
    "ElectraForTokenClassification": "token_classification",
    "ElectraForQuestionAnswering": "question_answering",
}


def entries(cfg, task: str) -> list[common.Entry]:
    # No pooler anywhere: sequence classification's first dense layer maps onto ours below.
    out = bert.encoder_entries(cfg, task, "electra", pooled=())
    if cfg.embedding_width != cfg.hidden_size:
        root, pre = ((), "") if task == "base" else (("bert",), "electra.")
        out += common.linear(root + ("embeddings", "projection"), pre + "embeddings_project")
    if task == "replaced_token_detection":
        out += common.rtd_head_entries()
    elif task == "masked_lm":
        out += common.linear(("mlm", "transform"), "generator_predictions.dense")
        out += common.layer_norm(("mlm", "layer_norm"), "generator_predictions.LayerNorm")
        out += [common.Entry(("mlm", "bias"), ("generator_lm_head.bias",), common.same,
                             common.one(common.same))]
    return out + common.fine_tuning_heads(task, two_layer_classifier=True)


def _config_in(model: dict) -> dict:
    # ELECTRA's classifier head uses GELU where BERT's pooler has tanh; E = H is our 0.
    out = {**model, "pooler_act": "gelu"}
    if out.get("embedding_size") == out["hidden_size"]:
        out["embedding_size"] = 0
    return out


def _config_out(hf: dict) -> dict:
    hf = dict(hf)
    if not hf.get("embedding_size"):
        hf["embedding_size"] = hf["hidden_size"]
    return hf


LAYOUT = common.Layout(
    model_type="electra", arch="electra", encoder="electra", architectures=ARCHITECTURES,
    entries=entries,
    config=common.BERT_CONFIG + (("embedding_size", "embedding_size", 128),),
    head_prefixes=("discriminator_predictions", "generator_predictions", "generator_lm_head",
                   "classifier", "qa_outputs"),
    ignored=("generator_lm_head.weight", "embeddings.position_ids", "embeddings.token_type_ids"),
    config_in=_config_in, config_out=_config_out,
)
