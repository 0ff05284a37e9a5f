"""ELECTRA's replaced-token detection (`objective.name=electra`, Clark et al., 2020).

One step, one optimizer, two networks (model/electra.py):
1. The data's masks are undone: the originals come back from `masked_lm_ids`, so the same
   prepared data (`prepare --no_nsp`, static or dynamic masks) feeds BERT and ELECTRA, and the
   step draws its own masks, fresh every step, as the reference does.
2. Masking: per sequence, round(mask_rate x real tokens) positions, at least 1 and at most
   N = int((mask_rate + 0.005) x S) (19 at 128, the reference's cap), drawn uniformly WITHOUT
   replacement among real tokens that are not [CLS], [SEP], [PAD] or [MASK]. (The reference
   samples with replacement and drops repeats, so it masks slightly fewer: without replacement
   the rate is the one asked for.) 85% of them become [MASK], 15% keep their token; no random
   replacement.
3. The generator predicts the masked tokens (its MLM loss), and replacements are drawn from its
   softmax at temperature 1 by Gumbel-max on stop_gradient(logits): the discriminator's loss can
   never reach the generator (the sample is an integer, and the logits are cut besides).
4. The discriminator reads the corrupted sequence; its label is 1 only where the sample differs
   from the original (a correct guess counts as real), with sigmoid cross-entropy over every real
   token ([CLS] and [SEP] included, as the reference's input_mask).
5. Loss = MLM mean over masked positions + disc_weight (50) x discriminator mean over real tokens.

Two knobs shape the networks (model/electra.py): `embedding_sharing` (plain: ELECTRA's one set
of embeddings; gdes: DeBERTa-v3's gradient-disentangled sharing, where the discriminator's token
table is stop_gradient(the generator's) + a zero-initialised residual; none: separate) and
`generator_num_layers` (0 = the discriminator's depth; DeBERTa-v3: half). They live in the
objective section, not the model's: they say how the pretraining pair is tied, not what either
exported network is, and a run's checkpoints are read back with them (`model_options`).

Eval draws masks and samples from a fixed key, so a held-out number is comparable across evals.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bertjax.errors import UserError
from bertjax.model import electra as electra_lib
from bertjax.train import flops as flops_lib
from bertjax.train.objectives import (Objective, _accuracy, _loss_sum, _rows_of, _weighted_ce,
                                      encoder_spec, register)

I32, F32 = jnp.int32, jnp.float32
KEEP_SHARE = 0.15  # of the chosen positions keep their token; the rest become [MASK]
_EVAL_KEY = 0  # the fixed key held-out evals mask and sample with
_MASK, _KEEP, _SAMPLE, _GEN_DROPOUT, _DISC_DROPOUT = range(5)


def max_masked(mask_rate: float, seq: int) -> int:
    """The reference's cap on masked positions per sequence (19 of 128 at 15%)."""
    return max(1, min(seq, int((mask_rate + 0.005) * seq)))


def row_keys(key, ids):
    """One key per row, from the step's key and the row's tokens: a sequence is masked and
    corrupted the same way wherever it sits in the global batch, so one process and two (whose
    hosts interleave the rows) train on the same corruption."""
    mult = (jnp.arange(ids.shape[1], dtype=jnp.uint32) * jnp.uint32(2654435761)) | jnp.uint32(1)
    digest = jnp.sum(ids.astype(jnp.uint32) * mult[None, :], axis=1, dtype=jnp.uint32)
    return jax.vmap(lambda d: jax.random.fold_in(key, d))(digest)


def _row_uniform(keys, salt: int, shape):
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, salt), shape))(keys)


def restore_originals(batch):
    """The uncorrupted input: the prepared data's masked positions put back to their ids."""
    ids = batch["input_ids"]
    pos = batch["masked_lm_positions"].astype(I32)
    held = jnp.take_along_axis(ids, pos, axis=1)
    values = jnp.where(batch["masked_lm_weights"] > 0, batch["masked_lm_ids"].astype(ids.dtype), held)
    rows = jnp.arange(ids.shape[0])[:, None]
    return ids.at[rows, pos].set(values)


@register("electra")
@dataclasses.dataclass(frozen=True)
class ReplacedTokenDetection(Objective):
    model_task: str = "electra_pretraining"
    mask_rate: float = 0.15
    disc_weight: float = 50.0
    # The tokenizer's ids; the run takes them from the prepared data's metadata. The defaults
    # are BERT's uncased vocabulary's, which is all `plan` and `bench` need (shapes only).
    pad_id: int = 0
    cls_id: int = 101
    sep_id: int = 102
    mask_id: int = 103
    embedding_sharing: str = "plain"
    generator_num_layers: int = 0
    metrics = ("loss", "mlm_accuracy", "disc_accuracy", "disc_precision", "disc_recall",
               "replaced_fraction")

    def __post_init__(self):
        if not 0.0 < float(self.mask_rate) < 1.0:
            raise UserError(f"objective.mask_rate={self.mask_rate} must be in (0, 1); ELECTRA "
                            "masks 0.15 (0.25 for large)")
        if float(self.disc_weight) <= 0.0:
            raise UserError(f"objective.disc_weight={self.disc_weight} must be > 0 (ELECTRA: 50)")
        if self.embedding_sharing not in electra_lib.SHARING:
            raise UserError(f"objective.embedding_sharing={self.embedding_sharing!r} is not one of "
                            f"{', '.join(electra_lib.SHARING)} (plain: ELECTRA's shared "
                            "embeddings; gdes: DeBERTa-v3's; none: separate)")
        if int(self.generator_num_layers) < 0:
            raise UserError(f"objective.generator_num_layers={self.generator_num_layers} must be "
                            ">= 0 (0 = the discriminator's depth; DeBERTa-v3 uses half)")

    @classmethod
    def configure(cls, cfg, special_ids):
        ids = {f"{k}_id": int(v) for k, v in (special_ids or {}).items()
               if k in ("pad", "cls", "sep", "mask")}
        return cls(mask_rate=float(cfg.objective.mask_rate),
                   disc_weight=float(cfg.objective.disc_weight), **model_options(cfg), **ids)

    def build(self, task: str, model_cfg, seed: int = 0):
        if task != self.model_task:
            return super().build(task, model_cfg, seed=seed)
        return electra_lib.build_pretraining(model_cfg, seed, self.embedding_sharing,
                                             int(self.generator_num_layers))

    def batch_spec(self, batch, seq, preds):
        return {**encoder_spec(batch, seq), "masked_lm_positions": ((batch, preds), I32),
                "masked_lm_ids": ((batch, preds), I32), "masked_lm_weights": ((batch, preds), F32)}

    # --- masking: a pure function of (key, batch) --------------------------------------------

    def candidates(self, ids, input_mask):
        special = (ids == self.cls_id) | (ids == self.sep_id) | (ids == self.pad_id) | \
            (ids == self.mask_id)
        return (input_mask > 0) & ~special

    def num_to_mask(self, input_mask, cap: int):
        real = jnp.sum(input_mask > 0, axis=1).astype(F32)
        return jnp.clip(jnp.round(real * self.mask_rate).astype(I32), 1, cap)

    def choose(self, key, ids, input_mask):
        """(positions [B,N], weights [B,N], to_mask [B,N]): N = max_masked slots per row, the
        first `num_to_mask` of them real (weight 1) and distinct."""
        _, s = ids.shape
        cap = max_masked(self.mask_rate, s)
        cand = self.candidates(ids, input_mask)
        keys = row_keys(key, ids)
        # Uniform scores, candidates first: top-k of them is a uniform draw without replacement.
        scores = _row_uniform(keys, 0, (s,)) + cand.astype(F32)
        _, positions = jax.lax.top_k(scores, cap)
        taken = jnp.take_along_axis(cand, positions, axis=1)
        slot = jnp.arange(cap)[None, :]
        weights = (slot < self.num_to_mask(input_mask, cap)[:, None]) & taken
        to_mask = _row_uniform(keys, 1, (cap,)) >= KEEP_SHARE
        positions = jnp.where(weights, positions, 0)
        return positions.astype(I32), weights.astype(F32), to_mask & weights

    def forward(self, model, batch, dropout_key):
        key = jax.random.key(_EVAL_KEY) if dropout_key is None else dropout_key
        keys = {i: jax.random.fold_in(key, 1000 + i) for i in range(5)}
        drop = (lambda i: None) if dropout_key is None else (lambda i: keys[i])  # noqa: E731
        originals = restore_originals(batch)
        seg, mask = batch["segment_ids"], batch["input_mask"]
        positions, weights, to_mask = self.choose(keys[_MASK], originals, mask)
        rows = jnp.arange(originals.shape[0])[:, None]
        at_pos = jnp.take_along_axis(originals, positions, axis=1)
        masked = originals.at[rows, positions].set(
            jnp.where(to_mask, self.mask_id, at_pos).astype(originals.dtype))
        gen = model.generate(masked, seg, mask, positions, dropout_key=drop(_GEN_DROPOUT))
        logits = gen["mlm_logits"]
        sampled = jax.vmap(lambda k, z: jax.random.categorical(k, z, axis=-1))(
            row_keys(keys[_SAMPLE], originals), jax.lax.stop_gradient(logits))
        corrupted = originals.at[rows, positions].set(
            jnp.where(weights > 0, sampled, at_pos).astype(originals.dtype))
        disc = model(corrupted, seg, mask, dropout_key=drop(_DISC_DROPOUT))
        return {"mlm_logits": logits, "rtd_logits": disc["rtd_logits"], "positions": positions,
                "mlm_weights": weights, "mlm_ids": at_pos, "sampled": sampled,
                "corrupted": corrupted, "originals": originals}

    # --- loss ----------------------------------------------------------------------------------

    def _token_weights(self, batch):
        rows = _rows_of(batch, "input_mask")
        return (batch["input_mask"] > 0).astype(F32) * rows[:, None], rows

    def denominators(self, batch):
        # The masked count is fixed by the real tokens, not by the draw, so a whole batch's
        # counts are known before its micro-batches run.
        tokens, rows = self._token_weights(batch)
        cap = max_masked(self.mask_rate, batch["input_ids"].shape[1])
        per_row = jnp.minimum(self.num_to_mask(batch["input_mask"], cap),
                              jnp.sum(self.candidates(restore_originals(batch),
                                                      batch["input_mask"]), axis=1))
        return {"masked": jnp.sum(per_row.astype(F32) * rows), "tokens": jnp.sum(tokens),
                "rows": jnp.sum(rows)}

    def loss(self, out, batch, denoms=None):
        tokens, rows = self._token_weights(batch)
        w = out["mlm_weights"] * rows[:, None]
        d = denoms if denoms is not None else {"masked": jnp.sum(w), "tokens": jnp.sum(tokens),
                                               "rows": jnp.sum(rows)}
        mlm_sum, mlm_count = _weighted_ce(out["mlm_logits"], out["mlm_ids"], w)
        labels = (out["corrupted"] != out["originals"]).astype(F32)
        logits = out["rtd_logits"]
        # Sigmoid cross-entropy, stable for any logit: max(z, 0) - z*y + log(1 + exp(-|z|)).
        bce = jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))
        disc_sum = jnp.sum(bce * tokens)
        loss = (mlm_sum / (d["masked"] + 1e-5)
                + self.disc_weight * disc_sum / jnp.maximum(d["tokens"], 1.0))
        predicted = (logits > 0).astype(F32)
        hits = predicted * labels * tokens
        sums = {
            "mlm_loss": (mlm_sum, mlm_count),
            "mlm_accuracy": _accuracy(out["mlm_logits"], out["mlm_ids"], w),
            "sampled_accuracy": (jnp.sum((out["sampled"] == out["mlm_ids"]) * w), jnp.sum(w)),
            "disc_loss": (disc_sum, jnp.sum(tokens)),
            "disc_accuracy": (jnp.sum((predicted == labels) * tokens), jnp.sum(tokens)),
            "disc_precision": (jnp.sum(hits), jnp.sum(predicted * tokens)),
            "disc_recall": (jnp.sum(hits), jnp.sum(labels * tokens)),
            "replaced_fraction": (jnp.sum(labels * tokens), jnp.sum(tokens)),
            "masked_fraction": (jnp.sum(w), jnp.sum(tokens)),
        }
        sums["loss"] = _loss_sum(loss, rows, denoms)
        return loss, sums

    def flops_per_token(self, model: dict, seq: int, preds: int | None) -> float:
        """Both networks: the discriminator's encoder and head on every token, the generator's
        encoder and its MLM head on the masked positions (flops.electra_flops_per_token)."""
        return flops_lib.electra_flops_per_token(model, seq, max_masked(self.mask_rate, seq),
                                                 int(self.generator_num_layers))


def model_options(cfg) -> dict:
    """{embedding_sharing, generator_num_layers} of a run's config (a ConfigDict or the dict a
    checkpoint saved); a config written before the knobs existed is plain at full depth."""
    section = cfg.get("objective") or {}
    return {"embedding_sharing": str(section.get("embedding_sharing", "plain")),
            "generator_num_layers": int(section.get("generator_num_layers", 0))}

