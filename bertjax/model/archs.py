"""The family members the one encoder can be: each is a Hugging Face `model_type` and the knob
values that member fixes (the rest comes from a size preset or the user). A member adds a line
here, a layout table in interop/layouts/, and a recipe in configs/; never a copy of the encoder."""
from __future__ import annotations

ARCHS: dict[str, dict] = {
    "bert": {},
    # fairseq's positions start after the pad id (1 for GPT-2's BPE), so 512 tokens need 514 rows;
    # one segment type, LayerNorm eps 1e-5.
    "roberta": dict(type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, position_offset=2,
                    max_position_embeddings=514),
    # ELECTRA's encoder is BERT's; its sequence classifier (our pooler) uses gelu, not tanh.
    "electra": dict(pooler_act="gelu"),
    # ALBERT: a 128-wide factorised embedding projected to H, one layer shared by the whole depth
    # and the tanh GELU (Hugging Face's "gelu_new"), as every released ALBERT.
    "albert": dict(embedding_size=128, num_hidden_groups=1, hidden_act="gelu_tanh"),
    # DistilBERT: BERT's block without segment embeddings or pooler. Its sequence classifier's
    # pre_classifier (dense -> ReLU on the first token) is our pooler with a ReLU.
    "distilbert": dict(type_vocab_size=0, pooler_act="relu"),
    # DeBERTa-v2 and v3 (one model_type): no absolute positions or segments in the input;
    # disentangled attention (c2p + p2c) over log-bucketed distances (256 buckets spanning 512)
    # with a LayerNorm'd relative table shared by every layer; LayerNorm eps 1e-7; the sequence
    # classifier's ContextPooler is dense -> GELU on the first token.
    "deberta-v2": dict(type_vocab_size=0, position_biased_input=False, relative_attention=True,
                       pos_att_type="c2p|p2c", position_buckets=256, norm_rel_ebd="layer_norm",
                       layer_norm_eps=1e-7, pooler_act="gelu"),
}


def with_pad_id(model: dict, pad_id: int) -> dict:
    """`model` (config fields) for a tokenizer whose padding id is `pad_id`: where positions
    count from the pad id (position_offset > 0), the offset and the table follow it, keeping the
    number of usable positions."""
    model = {**model, "pad_token_id": int(pad_id)}
    offset = int(model.get("position_offset", 0))
    if offset:
        usable = int(model["max_position_embeddings"]) - offset
        model["position_offset"] = int(pad_id) + 1
        model["max_position_embeddings"] = usable + model["position_offset"]
    return model
