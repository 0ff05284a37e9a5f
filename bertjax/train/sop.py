"""ALBERT's sentence-order prediction (`objective.name=mlm_sop`).

SOP is a pair task of the same shape as NSP: two segments, one 2-way head on the pooled [CLS]
vector, labels in the same `next_sentence_labels` field (1 = swapped, Hugging Face's
`sentence_order_label`). So the model, the batch and the loss are `mlm_nsp`'s; what differs is
the data (`prepare --pair_task=sop`: both segments from one document, order swapped with p = 0.5)
and the names the metrics carry, so a run's logs say which task the head learned.
"""
from __future__ import annotations

import dataclasses

from bertjax.train.objectives import Pretraining, register


@register("mlm_sop")
@dataclasses.dataclass(frozen=True)
class SentenceOrder(Pretraining):
    """MLM + SOP: loss = sum(w*CE)/(sum(w)+1e-5) + mean SOP CE, on the `pretraining` model
    (whose pair head Hugging Face's AlbertForPreTraining calls `sop_classifier`)."""

    pair_task = "sop"
    metrics = ("loss", "mlm_loss", "mlm_accuracy", "sop_accuracy")

    def loss(self, out, batch, denoms=None):
        loss, sums = super().loss(out, batch, denoms)
        return loss, {k.replace("nsp_", "sop_", 1): v for k, v in sums.items()}
