"""ELECTRA's task models (Clark et al., 2020): a discriminator that tells replaced tokens from
original ones, and the small masked-LM generator that replaces them.

Both are the one encoder (model/encoder.py). The discriminator sits under `bert` and its head
under `discriminator`, so the same paths hold the weights in `ElectraForPretraining` (generator
and discriminator, trained together) and in `ElectraDiscriminator` (Hugging Face's
`ElectraForPreTraining`), and fine-tuning reads `bert/*` from either. The generator is the
encoder at `cfg.generator_config()`'s width (and, for DeBERTa-v3, a shallower depth); each
network keeps its own E->H projection. How the two share their embeddings is `sharing`:
- "plain" (ELECTRA's default tying): the generator's token, position and segment tables and their
  LayerNorm ARE the discriminator's (one set of arrays);
- "gdes" (DeBERTa-v3's gradient-disentangled embedding sharing): the discriminator's token table
  is stop_gradient(the generator's) + a residual that starts at zero, so the MLM loss alone
  trains the shared table and the RTD loss alone the residual; the rest of the embeddings are
  each network's own, as in DeBERTa's RTD code;
- "none": two separate sets of embeddings.
Sampling the replacements is the objective's business (train/rtd.py): these modules only compute
logits.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax.model.encoder import ACTIVATIONS, BertConfig, BertModel, ModelConfigError, dense
from bertjax.model.heads import MaskedLM

# What the generator reads from the discriminator's embeddings under "plain"; the projection
# stays its own.
SHARED_EMBEDDINGS = ("word_embeddings", "position_embeddings", "token_type_embeddings",
                     "layer_norm")
SHARING = ("plain", "gdes", "none")
# Under "gdes" the discriminator's token table is (shared, residual) at these names, both under
# bert/embeddings/word_embeddings: the shared array sits at its first path in the tree, the
# discriminator's (nnx keeps a shared variable once), as under "plain".
GDES_SHARED, GDES_RESIDUAL = "embedding", "residual"


class DiscriminatorHead(nnx.Module):
    """dense(H->H) -> hidden_act -> dense(H->1): one replaced-or-not logit per token."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs=rngs)
        self.dense_prediction = dense(cfg, cfg.hidden_size, 1, ("embed", None), rngs=rngs)
        self.act = cfg.hidden_act

    def __call__(self, sequence_output):
        x = ACTIVATIONS[self.act](self.dense(sequence_output))
        return self.dense_prediction(x)[..., 0].astype(jnp.float32)


class DisentangledEmbed(nnx.Module):
    """GDES's token table for the discriminator: rows of stop_gradient(shared) + residual. It
    holds the generator's table variable itself (so there is one array) and reads it cut off
    from the discriminator's gradient; the residual is the discriminator's own, zero at start."""

    def __init__(self, shared: nnx.Embed, param_dtype):
        self.embedding = shared.embedding
        self.residual = nnx.Param(jnp.zeros(shared.embedding.shape, param_dtype),
                                  out_sharding=("vocab", "embed"))
        self.dtype = shared.dtype

    def table(self):
        """The discriminator's effective table (what the export writes)."""
        return self.embedding[...] + self.residual[...]

    def __call__(self, ids):
        rows = jax.lax.stop_gradient(jnp.take(self.embedding[...], ids, axis=0))
        rows = rows + jnp.take(self.residual[...], ids, axis=0)
        return rows.astype(self.dtype) if self.dtype is not None else rows


class ElectraDiscriminator(nnx.Module):
    """The discriminator alone: per-token logits that the token was replaced."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, rngs=rngs, add_pooler=False)
        self.discriminator = DiscriminatorHead(cfg, rngs=rngs)

    def __call__(self, input_ids, segment_ids, input_mask, *, dropout_key=None):
        seq, _ = self.bert(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
        return {"rtd_logits": self.discriminator(seq)}


def generator_config(cfg: BertConfig, generator_layers: int = 0) -> BertConfig:
    """The generator's encoder config: `cfg.generator_config()` (its width), at
    `generator_layers` deep (0 = the discriminator's depth, ELECTRA; DeBERTa-v3 uses half)."""
    gen = cfg.generator_config()
    if generator_layers < 0 or generator_layers > cfg.num_layers:
        raise ModelConfigError(f"objective.generator_num_layers={generator_layers} must be in "
                               f"[0, {cfg.num_layers}] (0 = the discriminator's depth; "
                               "DeBERTa-v3 uses half of it)")
    if not generator_layers or generator_layers == gen.num_layers:
        return gen
    groups = gen.num_hidden_groups
    if groups and generator_layers % groups:
        raise ModelConfigError(f"objective.generator_num_layers={generator_layers} is not a "
                               f"multiple of model.num_hidden_groups={groups}")
    return dataclasses.replace(gen, num_layers=generator_layers)


class ElectraForPretraining(ElectraDiscriminator):
    """Generator and discriminator. `__call__` is the discriminator; `generate` is the
    generator's masked-LM logits at the given positions."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, sharing: str = "plain",
                 generator_layers: int = 0):
        if sharing not in SHARING:
            raise ModelConfigError(f"objective.embedding_sharing={sharing!r} is not one of "
                                   f"{', '.join(SHARING)}")
        super().__init__(cfg, rngs=rngs)
        self.embedding_sharing = sharing
        gen_cfg = generator_config(cfg, generator_layers)
        self.generator = BertModel(gen_cfg, rngs=rngs, add_pooler=False)
        mine, theirs = self.bert.embeddings, self.generator.embeddings
        if sharing == "plain":
            for name in SHARED_EMBEDDINGS:
                if hasattr(mine, name):
                    setattr(theirs, name, getattr(mine, name))
        elif sharing == "gdes":
            mine.word_embeddings = DisentangledEmbed(theirs.word_embeddings,
                                                     jnp.dtype(cfg.param_dtype))
        self.mlm = MaskedLM(gen_cfg, rngs=rngs)

    def generate(self, input_ids, segment_ids, input_mask, masked_lm_positions, *,
                 dropout_key=None):
        seq, _ = self.generator(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
        # The generator's own table under every sharing (under "plain" it is also the
        # discriminator's; under "gdes" the shared half of it).
        return {"mlm_logits": self.mlm(seq, masked_lm_positions,
                                       self.generator.embeddings.word_embeddings)}


def options(model: ElectraForPretraining) -> dict:
    """The objective knobs a built pair was made with ({} for plain sharing at full depth, the
    registry's model): what a params-only checkpoint records so that it is read back as built."""
    out = {}
    if model.embedding_sharing != "plain":
        out["embedding_sharing"] = model.embedding_sharing
    if model.generator.config.num_layers != model.bert.config.num_layers:
        out["generator_num_layers"] = model.generator.config.num_layers
    return out


def build_pretraining(cfg: BertConfig, seed: int = 0, sharing: str = "plain",
                      generator_layers: int = 0) -> ElectraForPretraining:
    """`build_model("electra_pretraining", cfg, seed)` with the objective's two structural
    knobs; "plain" at full depth is exactly that model."""
    with nnx.use_eager_sharding(False):
        return ElectraForPretraining(cfg, rngs=nnx.Rngs(params=seed), sharing=sharing,
                                     generator_layers=generator_layers)
