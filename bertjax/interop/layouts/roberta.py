"""RoBERTa's table. The encoder is BERT's under `roberta.*`; the differences are the heads and
the positions:
- `lm_head.{dense, layer_norm, bias}` is BERT's MLM transform under other names (the decoder is
  tied, and `lm_head.decoder.bias` is the same tensor as `lm_head.bias`);
- sequence classification has no pooler: `classifier.dense` -> tanh -> `classifier.out_proj` on
  `<s>`. That is our pooler followed by our classifier, so it maps onto them (HF applies dropout
  before `classifier.dense` too; ours, like BERT, does not: training-time only);
- positions count from pad_token_id + 1 (fairseq), so position_offset follows the pad id.
"""
from __future__ import annotations

from bertjax.interop.layouts import bert, common

ARCHITECTURES = {
    "RobertaModel": "base",
    "RobertaForMaskedLM": "masked_lm",
    "RobertaForSequenceClassification": "sequence_classification",
    "RobertaForTokenClassification": "token_classification",
    "RobertaForQuestionAnswering": "question_answering",
}


def entries(cfg, task: str) -> list[common.Entry]:
    out = bert.encoder_entries(cfg, task, "roberta", pooled=("base", "sentence_embedding"))
    if task == "masked_lm":
        out += common.mlm_entries("lm_head", norm="layer_norm")
    return out + common.fine_tuning_heads(task, two_layer_classifier=True)


def _positions_from_pad(model: dict) -> dict:
    return {**model, "position_offset": int(model["pad_token_id"]) + 1}


def _hf_extras(hf: dict) -> dict:
    return {**hf, "bos_token_id": 0, "eos_token_id": 2}


LAYOUT = common.Layout(
    model_type="roberta", arch="roberta", encoder="roberta", architectures=ARCHITECTURES,
    entries=entries,
    config=tuple((o, k, {"type_vocab_size": 1, "layer_norm_eps": 1e-5, "pad_token_id": 1,
                         "max_position_embeddings": 514}.get(o, d))
                 for o, k, d in common.BERT_CONFIG),
    head_prefixes=("lm_head", "classifier", "qa_outputs"),
    ignored=("lm_head.decoder.weight", "lm_head.decoder.bias", "embeddings.position_ids",
             "embeddings.token_type_ids"),
    config_in=_positions_from_pad, config_out=_hf_extras,
)
