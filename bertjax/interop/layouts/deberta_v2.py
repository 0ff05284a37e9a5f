"""DeBERTa-v2's table (v3 too: one model_type). The block is BERT's post-LN block with the
disentangled attention; what differs is where HF keeps things:
- no position or segment tables in v3 (`position_biased_input` false, `type_vocab_size` 0);
- `encoder.rel_embeddings` (2 x span rows) and `encoder.LayerNorm` (norm_rel_ebd=layer_norm):
  our `encoder/relative/{table, layer_norm}`;
- q/k/v are `attention.self.{query,key,value}_proj`; with share_att_key they also map the
  relative embeddings, so there are no `pos_{key,query}_proj` (share_att_key false is refused);
- the MLM head is the legacy `cls.predictions.transform.*` + `cls.predictions.bias` (HF's
  default `legacy: true`), the decoder tied;
- sequence classification is `pooler.dense` -> GELU (ContextPooler) -> `classifier`: our
  pooler with pooler_act=gelu, then our classifier. DebertaV2Model itself has no pooler.
- the discriminator of a v3 (ELECTRA-objective) run: HF has no RTD class for DeBERTa, so it is
  written as `DebertaV2Model` (architectures) with the encoder under `deberta.` and our RTD head,
  ELECTRA's, as `discriminator_predictions.{dense, dense_prediction}`. HF's DebertaV2Model and
  its task classes load the encoder and leave the head unused; bertjax reads the head back when
  the task replaced_token_detection is asked for (an exported pair's discriminator/). Microsoft's
  v3 release names its own head (dense, LayerNorm, classifier) `mask_predictions.*`; ours has no
  LayerNorm, so it is not written under those names.
Refused in one line, both ways: the nGiE convolution (conv_kernel_size > 0), an embedding width
other than H (HF projects E -> H *before* its LayerNorm, ours after), share_att_key false, and a
pooler activation other than GELU.
"""
from __future__ import annotations

import dataclasses

from bertjax.errors import UserError
from bertjax.interop.layouts import common

ARCHITECTURES = {
    "DebertaV2Model": "base",
    "DebertaV2ForMaskedLM": "masked_lm",
    "DebertaV2ForSequenceClassification": "sequence_classification",
    "DebertaV2ForTokenClassification": "token_classification",
    "DebertaV2ForQuestionAnswering": "question_answering",
}
BLOCK = dict(query="attention.self.query_proj", key="attention.self.key_proj",
             value="attention.self.value_proj", attention_out="attention.output.dense",
             attention_norm="attention.output.LayerNorm", intermediate="intermediate.dense",
             output="output.dense", output_norm="output.LayerNorm")


def _check(cfg) -> None:
    bad = []
    if cfg.embedding_width != cfg.hidden_size:
        bad.append(f"embedding_size={cfg.embedding_size}")
    if cfg.num_hidden_groups not in (0, cfg.num_layers):
        bad.append(f"num_hidden_groups={cfg.num_hidden_groups}")
    if cfg.position_offset:
        bad.append(f"position_offset={cfg.position_offset}")
    if cfg.pooler_act != "gelu":
        bad.append(f"pooler_act={cfg.pooler_act!r}")
    if bad:
        raise UserError(f"a deberta-v2 model with {', '.join(bad)}: Hugging Face's DeBERTa-v2 "
                        "has no E->H projection after its LayerNorm, shared layers or position "
                        "offset, and a GELU ContextPooler; set model.embedding_size=0, "
                        "num_hidden_groups=0, position_offset=0, pooler_act=gelu")


def entries(cfg, task: str) -> list[common.Entry]:
    _check(cfg)
    pre = "" if task == "base" else "deberta."
    root = () if task == "base" else ("bert",)
    e = root + ("embeddings",)
    out = common.embed(e + ("word_embeddings",), pre + "embeddings.word_embeddings")
    if cfg.position_biased_input:
        out += common.embed(e + ("position_embeddings",), pre + "embeddings.position_embeddings")
    if cfg.type_vocab_size:
        out += common.embed(e + ("token_type_embeddings",), pre + "embeddings.token_type_embeddings")
    out += common.layer_norm(e + ("layer_norm",), pre + "embeddings.LayerNorm")
    out += common.block_entries(cfg, root, pre + "encoder.layer.{}.", BLOCK)
    if cfg.relative_attention:
        rel = root + ("encoder", "relative")
        out += common.embed(rel + ("table",), pre + "encoder.rel_embeddings")
        if cfg.norm_rel_ebd == "layer_norm":
            out += common.layer_norm(rel + ("layer_norm",), pre + "encoder.LayerNorm")
    if task == "masked_lm":
        out += common.mlm_entries("cls.predictions", dense="transform.dense",
                                  norm="transform.LayerNorm")
    elif task == "replaced_token_detection":
        out += common.rtd_head_entries()
    return out + common.fine_tuning_heads(task, two_layer_classifier=True,
                                          two_layer_names=("pooler.dense", "classifier"))


# DeBERTa-v2's defaults where its config.json leaves a key out (transformers' DebertaV2Config
# and the getattr defaults of its modeling code): -1 is "off" for buckets and distances.
_DEFAULTS = {"type_vocab_size": 0, "layer_norm_eps": 1e-7}
CONFIG = tuple((o, k, _DEFAULTS.get(o, d)) for o, k, d in common.BERT_CONFIG) + (
    ("position_biased_input", "position_biased_input", True),
    ("relative_attention", "relative_attention", False),
    ("pos_att_type", "pos_att_type", ""),
    ("position_buckets", "position_buckets", -1),
    ("max_relative_positions", "max_relative_positions", -1),
    ("norm_rel_ebd", "norm_rel_ebd", "none"),
)


def _terms(value) -> str:
    """pos_att_type (HF: a list or "p2c|c2p") as ours: "c2p|p2c" order, unknown terms kept so
    that the model config names them."""
    parts = value if isinstance(value, (list, tuple)) else str(value or "").split("|")
    parts = {p.strip().lower() for p in parts if p and p.strip()}
    return "|".join([t for t in ("c2p", "p2c") if t in parts] + sorted(parts - {"c2p", "p2c"}))


def _config_in(model: dict) -> dict:
    norms = {p.strip() for p in str(model["norm_rel_ebd"]).lower().split("|")}
    return {**model, "pos_att_type": _terms(model["pos_att_type"]),
            "position_buckets": max(0, int(model["position_buckets"])),
            "max_relative_positions": max(0, int(model["max_relative_positions"])),
            "norm_rel_ebd": "layer_norm" if "layer_norm" in norms else "none",
            "pooler_act": "gelu"}


def _config_out(hf: dict) -> dict:
    terms = [t for t in hf["pos_att_type"].split("|") if t]
    return {**hf, "pos_att_type": terms or None,
            "position_buckets": hf["position_buckets"] or -1,
            "max_relative_positions": hf["max_relative_positions"] or -1,
            "share_att_key": True, "pooler_hidden_act": "gelu",
            "pooler_hidden_size": hf["hidden_size"], "pooler_dropout": 0.0, "legacy": True}


def _tokenizer_config(config: dict) -> dict:
    # DebertaV2Tokenizer reads the exported tokenizer.json as written (spm.model when there is
    # none), so the generic class's files load as DeBERTa's own; WordPiece and BPE keep theirs.
    if config.get("tokenizer_class") == "PreTrainedTokenizerFast":
        return {**config, "tokenizer_class": "DebertaV2Tokenizer"}
    return config


@dataclasses.dataclass(frozen=True)
class DebertaV2Layout(common.Layout):
    def config_from_hf(self, hf: dict) -> dict:
        if int(hf.get("conv_kernel_size") or 0) > 0:
            raise UserError(f"config.json has conv_kernel_size {hf['conv_kernel_size']} (DeBERTa-v2's "
                            "nGiE convolution in layer 1), which bertjax does not support yet; it "
                            "reads DeBERTa-v2/v3 models without it (every v3, v2 base)")
        terms = _terms(hf.get("pos_att_type"))
        if hf.get("relative_attention") and terms and not hf.get("share_att_key", False):
            raise UserError("config.json has share_att_key false (separate pos_key_proj/"
                            "pos_query_proj), which bertjax does not support yet; it reads "
                            "DeBERTa-v2/v3 with share_att_key true, as every released one")
        width = hf.get("embedding_size") or hf.get("hidden_size")
        pooler_width = hf.get("pooler_hidden_size") or hf.get("hidden_size")
        if width != hf.get("hidden_size") or pooler_width != hf.get("hidden_size"):
            raise UserError(f"config.json has embedding_size {width} / pooler_hidden_size "
                            f"{pooler_width} against hidden_size {hf.get('hidden_size')}; bertjax "
                            "reads DeBERTa-v2 with both equal to hidden_size")
        if hf.get("pooler_hidden_act", "gelu") != "gelu":
            raise UserError(f"config.json has pooler_hidden_act {hf['pooler_hidden_act']!r}; "
                            "bertjax reads DeBERTa-v2's GELU ContextPooler only")
        if hf.get("attention_head_size") not in (None, hf.get("hidden_size", 0)
                                                 // max(1, hf.get("num_attention_heads", 1))):
            raise UserError(f"config.json has attention_head_size {hf['attention_head_size']}, "
                            "not hidden_size / num_attention_heads, which bertjax does not "
                            "express")
        if hf.get("legacy") is False:
            raise UserError("config.json has legacy false (the lm_predictions MLM head); bertjax "
                            "reads DeBERTa-v2 with the default legacy true (cls.predictions)")
        return super().config_from_hf(hf)


LAYOUT = DebertaV2Layout(
    model_type="deberta-v2", arch="deberta-v2", encoder="deberta", architectures=ARCHITECTURES,
    entries=entries, config=CONFIG,
    head_prefixes=("cls.", "pooler.", "classifier", "qa_outputs", "discriminator_predictions"),
    ignored=("cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
             "embeddings.position_ids"),
    config_in=_config_in, config_out=_config_out, tokenizer_config=_tokenizer_config,
    tokenizer_renames=(("spiece.model", "spm.model"),),
    written_as={"replaced_token_detection": "DebertaV2Model"},
)
