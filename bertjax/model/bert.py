"""Task models: the encoder plus the heads each task needs, and a registry to build them by name."""
from __future__ import annotations

import jax
from flax import nnx

from bertjax.model.electra import ElectraDiscriminator, ElectraForPretraining
from bertjax.model.encoder import BertConfig, BertModel, DropoutKeys
from bertjax.model.heads import Classifier, MaskedLM
from bertjax.model.sentence import BertForSentenceEmbedding

# The head's dropout key is folded from the step key with a constant no encoder site uses.
_HEAD_KEY = 0x7FFFFFFF
_LORA_STREAM = 0x4C6F5241  # "LoRA": the adapters' initialisation stream, apart from the params'


class BertForPretraining(nnx.Module):
    """MLM on gathered positions + next-sentence prediction on the pooled [CLS] vector."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, rngs=rngs)
        self.mlm = MaskedLM(cfg, rngs=rngs)
        # The original NSP head applies no dropout of its own (the pooled vector has none either).
        self.nsp = Classifier(cfg, 2, rngs=rngs, drop=False)

    def __call__(self, input_ids, segment_ids, input_mask, masked_lm_positions, *, dropout_key=None):
        seq, pooled = self.bert(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
        mlm_logits = self.mlm(seq, masked_lm_positions, self.bert.embeddings.word_embeddings)
        nsp_logits = self.nsp(pooled, DropoutKeys(None))
        return {"mlm_logits": mlm_logits, "nsp_logits": nsp_logits, "pooled_output": pooled}


class BertForMaskedLM(nnx.Module):
    """MLM only, no pooler (Hugging Face's BertForMaskedLM, e.g. bert-base-uncased's head)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, rngs=rngs, add_pooler=False)
        self.mlm = MaskedLM(cfg, rngs=rngs)

    def __call__(self, input_ids, segment_ids, input_mask, masked_lm_positions, *, dropout_key=None):
        seq, _ = self.bert(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
        return {"mlm_logits": self.mlm(seq, masked_lm_positions,
                                       self.bert.embeddings.word_embeddings)}


class BertForSequenceClassification(nnx.Module):
    """Single sentence or pair classification; num_labels == 1 is regression (STS-B)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, rngs=rngs)
        self.classifier = Classifier(cfg, cfg.num_labels, rngs=rngs)

    def __call__(self, input_ids, segment_ids, input_mask, *, dropout_key=None):
        _, pooled = self.bert(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
        head_key = None if dropout_key is None else jax.random.fold_in(dropout_key, _HEAD_KEY)
        return {"logits": self.classifier(pooled, DropoutKeys(head_key))}


class BertForTokenClassification(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, rngs=rngs, add_pooler=False)
        self.classifier = Classifier(cfg, cfg.num_labels, rngs=rngs)

    def __call__(self, input_ids, segment_ids, input_mask, *, dropout_key=None):
        seq, _ = self.bert(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
        head_key = None if dropout_key is None else jax.random.fold_in(dropout_key, _HEAD_KEY)
        return {"logits": self.classifier(seq, DropoutKeys(head_key))}


class BertForQuestionAnswering(nnx.Module):
    """Extractive QA: start and end logits over the sequence (no dropout before the span head, as
    in the original run_squad)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, rngs=rngs, add_pooler=False)
        self.qa = Classifier(cfg, 2, rngs=rngs, drop=False)

    def __call__(self, input_ids, segment_ids, input_mask, *, dropout_key=None):
        seq, _ = self.bert(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
        logits = self.qa(seq, DropoutKeys(None))
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1]}


TASK_MODELS = {
    "pretraining": BertForPretraining,
    "masked_lm": BertForMaskedLM,
    "base": None,  # filled below: BertModel takes the same constructor
    "sequence_classification": BertForSequenceClassification,
    "token_classification": BertForTokenClassification,
    "question_answering": BertForQuestionAnswering,
    "sentence_embedding": BertForSentenceEmbedding,
    "electra_pretraining": ElectraForPretraining,
    "replaced_token_detection": ElectraDiscriminator,
}


def _bare_encoder(cfg: BertConfig, *, rngs: nnx.Rngs) -> BertModel:
    # A tanh pooler belongs to the bare encoder (BertModel, RobertaModel); a GELU or ReLU one is
    # the first layer of ELECTRA's or DistilBERT's classifier head, which their bare models lack.
    return BertModel(cfg, rngs=rngs, add_pooler=cfg.pooler_act == "tanh")


TASK_MODELS["base"] = _bare_encoder


def build_model(task: str, cfg: BertConfig, seed: int = 0) -> nnx.Module:
    if task not in TASK_MODELS:
        raise ValueError(f"unknown task model {task!r}; choose one of {sorted(TASK_MODELS)}")
    # Sharding is applied by the trainer (jit out_shardings from the logical names), not eagerly at
    # creation, so the same model builds with or without a mesh.
    rngs = nnx.Rngs(params=seed)
    if cfg.lora_rank:
        # LoRA's A matrices draw from their own stream (model/lora.py): the other parameters
        # initialise as they would without adapters.
        rngs = nnx.Rngs(params=seed, lora=jax.random.fold_in(jax.random.key(seed), _LORA_STREAM))
    with nnx.use_eager_sharding(False):
        return TASK_MODELS[task](cfg, rngs=rngs)


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
