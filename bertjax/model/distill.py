"""Distillation's model: a student masked LM and the frozen teacher it learns from, in one module
so that one jitted step runs both (train/distill.py).

The student IS a `BertForMaskedLM` (its weights under `bert/` and `mlm/`), so a distillation run's
checkpoints are a masked-LM model's and export, fine-tuning and fill-mask read them as they read
any pretraining run. The teacher sits under `teacher/`, at its own depth and arch; the objective
keeps it out of the trained parameters (the step's frozen part) and out of the checkpoints.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from bertjax.model.bert import BertForMaskedLM
from bertjax.model.encoder import BertConfig

TEACHER = "teacher"


class StudentAndTeacher(BertForMaskedLM):
    def __init__(self, cfg: BertConfig, teacher_cfg: BertConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.teacher = BertForMaskedLM(teacher_cfg, rngs=rngs)


def every_position(model: BertForMaskedLM, input_ids, segment_ids, input_mask, *,
                   dropout_key=None):
    """(last hidden states [B,S,H], MLM logits [B,S,V]): the distillation losses score every
    token, not only the gathered masked ones."""
    seq, _ = model.bert(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
    positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1], dtype=jnp.int32), input_ids.shape)
    return seq, model.mlm(seq, positions, model.bert.embeddings.word_embeddings)
