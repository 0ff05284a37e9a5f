"""DistilBERT's table. The computation is BERT's post-LN block without segment embeddings or
pooler; what differs is the names:
- the encoder sits under `distilbert.`, its layers at `transformer.layer.N.` with
  `attention.{q,k,v,out}_lin`, `sa_layer_norm`, `ffn.lin1`, `ffn.lin2`, `output_layer_norm`;
- the MLM head is `vocab_transform` -> activation -> `vocab_layer_norm` -> `vocab_projector`
  (its weight tied to the word embeddings, its bias ours), at the top level;
- sequence classification is `pre_classifier` -> ReLU -> dropout -> `classifier` on the first
  token: our pooler (pooler_act=relu) followed by our classifier.
The config speaks its own keys (dim, n_layers, n_heads, hidden_dim, activation, dropout). HF fixes
every LayerNorm eps at 1e-12 and counts positions from 0, so a bertjax model with other knobs is
refused rather than exported wrong. HF's seq_classif_dropout and qa_dropout are training-time
rates of its heads; ours drop at hidden_dropout and not before QA, as BERT's do.
"""
from __future__ import annotations

import dataclasses

from bertjax.errors import UserError
from bertjax.interop.layouts import common
from bertjax.model.archs import ARCHS

ARCHITECTURES = {
    "DistilBertModel": "base",
    "DistilBertForMaskedLM": "masked_lm",
    "DistilBertForSequenceClassification": "sequence_classification",
    "DistilBertForTokenClassification": "token_classification",
    "DistilBertForQuestionAnswering": "question_answering",
}
BLOCK = dict(query="attention.q_lin", key="attention.k_lin", value="attention.v_lin",
             attention_out="attention.out_lin", attention_norm="sa_layer_norm",
             intermediate="ffn.lin1", output="ffn.lin2", output_norm="output_layer_norm")
# Knobs HF's DistilBERT has no way to vary (its LayerNorms hard-code eps 1e-12).
FIXED = {**ARCHS["distilbert"], "position_offset": 0, "layer_norm_eps": 1e-12}


def _check(cfg) -> None:
    bad = [f"{k}={getattr(cfg, k)!r}" for k, v in FIXED.items() if getattr(cfg, k) != v]
    if cfg.embedding_width != cfg.hidden_size:
        bad.append(f"embedding_size={cfg.embedding_size}")
    if cfg.num_hidden_groups not in (0, cfg.num_layers):
        bad.append(f"num_hidden_groups={cfg.num_hidden_groups}")
    if bad:
        raise UserError(f"a distilbert model with {', '.join(bad)}: Hugging Face's DistilBERT has "
                        "no segment embeddings, projection or shared layers, positions from 0, "
                        "LayerNorm eps 1e-12 and a ReLU pre_classifier; set "
                        + ", ".join(f"model.{k}={v}" for k, v in FIXED.items())
                        + ", embedding_size=0, num_hidden_groups=0")


def entries(cfg, task: str) -> list[common.Entry]:
    _check(cfg)
    pre = "" if task == "base" else "distilbert."
    root = () if task == "base" else ("bert",)
    out = common.embedding_entries(cfg, root, pre)
    out += common.block_entries(cfg, root, pre + "transformer.layer.{}.", BLOCK)
    if task == "masked_lm":
        out += common.mlm_entries("", "vocab_transform", "vocab_layer_norm", "vocab_projector.bias")
    return out + common.fine_tuning_heads(task, two_layer_classifier=True,
                                          two_layer_names=("pre_classifier", "classifier"))


# DistilBERT's config keys are BERT's renamed, less the segment table and the eps it lacks.
_KEYS = {"hidden_size": "dim", "num_hidden_layers": "n_layers", "num_attention_heads": "n_heads",
         "intermediate_size": "hidden_dim", "hidden_dropout_prob": "dropout",
         "attention_probs_dropout_prob": "attention_dropout"}
CONFIG = tuple((ours, _KEYS.get(key, key), default) for ours, key, default in common.BERT_CONFIG
               if ours not in ("type_vocab_size", "layer_norm_eps"))


def _config_in(model: dict) -> dict:
    return {**model, **ARCHS["distilbert"]}


def _config_out(hf: dict) -> dict:
    return {**hf, "sinusoidal_pos_embds": False}


def _tokenizer_config(config: dict) -> dict:
    # DistilBERT takes no token_type_ids: its tokenizer class (a BertTokenizer that omits them)
    # and, for any other tokenizer, the input names keep transformers from passing them.
    out = {**config, "model_input_names": ["input_ids", "attention_mask"]}
    if config.get("tokenizer_class") == "BertTokenizer":
        out["tokenizer_class"] = "DistilBertTokenizer"
    return out


@dataclasses.dataclass(frozen=True)
class DistilBertLayout(common.Layout):
    def config_from_hf(self, hf: dict) -> dict:
        if hf.get("sinusoidal_pos_embds"):
            raise UserError("config.json has sinusoidal_pos_embds true (fixed sine positions), "
                            "which bertjax's learned position table does not keep fixed; it reads "
                            "DistilBERTs with sinusoidal_pos_embds false, as every released one")
        return super().config_from_hf(hf)


LAYOUT = DistilBertLayout(
    model_type="distilbert", arch="distilbert", encoder="distilbert",
    architectures=ARCHITECTURES, entries=entries, config=CONFIG,
    head_prefixes=("vocab_transform", "vocab_layer_norm", "vocab_projector", "pre_classifier",
                   "classifier", "qa_outputs"),
    ignored=("vocab_projector.weight", "embeddings.position_ids"),
    config_in=_config_in, config_out=_config_out, act_key="activation",
    tokenizer_config=_tokenizer_config,
)
