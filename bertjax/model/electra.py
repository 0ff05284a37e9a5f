"""ELECTRA's task models (Clark et al., 2020): a discriminator that tells replaced tokens from
original ones, and the small masked-LM generator that replaces them.

Both are the one encoder (model/encoder.py). The discriminator sits under `bert` and its head
under `discriminator`, so the same paths hold the weights in `ElectraForPretraining` (generator
and discriminator, trained together) and in `ElectraDiscriminator` (Hugging Face's
`ElectraForPreTraining`), and fine-tuning reads `bert/*` from either. The generator is the
encoder at `cfg.generator_config()`'s width; its token, position and segment tables and their
LayerNorm ARE the discriminator's (one set of arrays, ELECTRA's default tying), while each
network keeps its own E->H projection. Sampling the replacements is the objective's business
(train/rtd.py): these modules only compute logits.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from bertjax.model.encoder import ACTIVATIONS, BertConfig, BertModel, dense
from bertjax.model.heads import MaskedLM

# What the generator reads from the discriminator's embeddings; the projection stays its own.
SHARED_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings",
                     "layer_norm")


class DiscriminatorHead(nnx.Module):
    """dense(H->H) -> hidden_act -> dense(H->1): one replaced-or-not logit per token."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs=rngs)
        self.dense_prediction = dense(cfg, cfg.hidden_size, 1, ("embed", None), rngs=rngs)
        self.act = cfg.hidden_act

    def __call__(self, sequence_output):
        x = ACTIVATIONS[self.act](self.dense(sequence_output))
        return self.dense_prediction(x)[..., 0].astype(jnp.float32)


class ElectraDiscriminator(nnx.Module):
    """The discriminator alone: per-token logits that the token was replaced."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, rngs=rngs, add_pooler=False)
        self.discriminator = DiscriminatorHead(cfg, rngs=rngs)

    def __call__(self, input_ids, segment_ids, input_mask, *, dropout_key=None):
        seq, _ = self.bert(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
        return {"rtd_logits": self.discriminator(seq)}


class ElectraForPretraining(ElectraDiscriminator):
    """Generator and discriminator with shared embeddings. `__call__` is the discriminator;
    `generate` is the generator's masked-LM logits at the given positions."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        gen_cfg = cfg.generator_config()
        self.generator = BertModel(gen_cfg, rngs=rngs, add_pooler=False)
        for name in SHARED_EMBEDDINGS:
            if hasattr(self.bert.embeddings, name):
                setattr(self.generator.embeddings, name, getattr(self.bert.embeddings, name))
        self.mlm = MaskedLM(gen_cfg, rngs=rngs)

    def generate(self, input_ids, segment_ids, input_mask, masked_lm_positions, *,
                 dropout_key=None):
        seq, _ = self.generator(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
        return {"mlm_logits": self.mlm(seq, masked_lm_positions,
                                       self.bert.embeddings.word_embeddings)}
