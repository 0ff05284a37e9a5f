"""Knowledge distillation (`objective.name=distill`, Sanh et al. 2019, DistilBERT).

A student masked LM learns from a frozen teacher inside the same jitted step
(model/distill.py). Both read the same masked input; the teacher runs without dropout (eval
mode) and sits in the step's frozen part: no gradient, no optimizer state, and not in the
checkpoints (`save_frozen` false): a resumed run loads it again from `distill.teacher`
(load/teacher.py), as the first start did.

Loss, as published (the weights and T are knobs of the `distill` config section):
- alpha_ce (5.0) x T^2 x KL(softmax(t/T) || softmax(s/T)), T = 2.0, averaged over every real
  (non-pad) token: DistilBERT's L_ce with `restrict_ce_to_mask` off and `batchmean` over the
  selected tokens;
- alpha_mlm (2.0) x the student's MLM cross-entropy on the masked positions;
- alpha_cos (1.0) x (1 - cos(student, teacher last hidden state)), averaged over real tokens
  (torch's CosineEmbeddingLoss with target 1).
Both models score every position, so each needs its MLM head over [B,S,V] logits.

`teacher_agreement` is the share of masked positions where the student's top-1 token is the
teacher's. Student and teacher must share one vocabulary: the run checks the tokenizer identity
the data and the teacher record (load/teacher.py), and the vocabulary sizes here.

`embedding_mse` distils sentence embeddings instead (sentence-transformers' model distillation,
Reimers and Gurevych 2020): the fine-tuning family `embeddings` on a file of sentences embeds each
with the teacher once, before training (finetuning/embedding_task.py), and the student learns
mean((student embedding - teacher embedding)^2). The teacher never enters the step, and its
tokenizer may differ from the student's: only the vectors are compared.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax.errors import UserError
from bertjax.model.distill import TEACHER, StudentAndTeacher, every_position
from bertjax.model.encoder import BertConfig
from bertjax.store import workdir as wd
from bertjax.train import flops as flops_lib
from bertjax.train.contrastive import _Embedding
from bertjax.train.objectives import (Objective, _accuracy, _loss_sum, _rows_of, _weighted_ce,
                                      encoder_spec, register)

I32, F32 = jnp.int32, jnp.float32
INITS = ("teacher", "random")
# Fields whose value decides the shape of a weight the teacher init copies.
_COPIED_SHAPES = ("hidden_size", "embedding_size", "intermediate_size", "vocab_size",
                  "type_vocab_size", "max_position_embeddings")


def _student_param(path, value) -> bool:
    return isinstance(value, nnx.Param) and (not path or str(path[0]) != TEACHER)


def default_layer_map(student: int, teacher: int) -> tuple[int, ...]:
    """Teacher layers spread evenly from the first to the last, rounded half up: DistilBERT's
    [0, 2, 4, 7, 9, 11] for 12 -> 6."""
    if student == 1:
        return (teacher - 1,)
    return tuple(int(i * (teacher - 1) / (student - 1) + 0.5) for i in range(student))


def parse_layer_map(spec: str, student: int, teacher: int) -> tuple[int, ...]:
    """`distill.layer_map`: one teacher layer per student layer, comma-separated; "" = the
    default map."""
    text = str(spec).strip().strip("[]()")
    if not text:
        return default_layer_map(student, teacher)
    try:
        layers = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"distill.layer_map={spec!r} is not a comma-separated list of teacher "
                        "layers; give one per student layer, e.g. 0,2,4,7,9,11") from None
    if len(layers) != student:
        raise UserError(f"distill.layer_map={spec!r} names {len(layers)} teacher layers but the "
                        f"student has model.num_layers={student}; give one per student layer")
    past = [i for i in layers if not 0 <= i < teacher]
    if past:
        raise UserError(f"distill.layer_map={spec!r} names layer {past[0]}, past the teacher's "
                        f"depth ({teacher} layers: 0..{teacher - 1}); pick layers in that range")
    return layers


def teacher_config(path: str, student: dict) -> BertConfig:
    """The teacher's model, as saved with it (any checkpoint load_model reads), computing in the
    student's dtype and attention kernel."""
    contents = wd.inspect(path)  # not a checkpoint: one line, naming what it should be
    model = {k: v for k, v in dict(contents.model).items() if k not in ("id2label", "task")}
    cfg = BertConfig.from_dict(model, what=f"the teacher's model config ({path})")
    if cfg.lora_rank:
        raise UserError(f"the teacher {path} holds LoRA adapters; merge them into a full model "
                        "(bertjax export) and distil from that")
    scan = bool(student.get("scan_layers", False)) and not cfg.num_hidden_groups
    return dataclasses.replace(cfg, dtype=student["dtype"],
                               attention_backend=student["attention_backend"], remat="none",
                               scan_layers=scan)


def check_student(student: dict, teacher: BertConfig, init: str, alpha_cos: float) -> None:
    """What a student must share with its teacher: the vocabulary always, the width for the
    cosine loss, and every copied weight's shape for the teacher init."""
    if int(student["vocab_size"]) != teacher.vocab_size:
        raise UserError(f"the teacher's vocabulary has {teacher.vocab_size} entries but "
                        f"model.vocab_size is {student['vocab_size']}; distillation compares "
                        "the two over one vocabulary: use the teacher's")
    width = int(student["hidden_size"])
    if init == "teacher":
        if width != teacher.hidden_size:
            rel = "wider" if width > teacher.hidden_size else "narrower"
            raise UserError(f"the student (model.hidden_size={width}) is {rel} than its teacher "
                            f"({teacher.hidden_size}) but distill.init=teacher copies the "
                            f"teacher's layers; set --config.model.hidden_size="
                            f"{teacher.hidden_size} or --config.distill.init=random")
        for name in _COPIED_SHAPES:
            # A student without a segment table (DistilBERT) drops the teacher's, as DistilBERT's
            # extraction did.
            if name == "type_vocab_size" and int(student[name]) == 0:
                continue
            if int(student[name]) != getattr(teacher, name):
                raise UserError(f"model.{name}={student[name]} but the teacher's is "
                                f"{getattr(teacher, name)}, and distill.init=teacher copies its "
                                f"weights; set --config.model.{name}={getattr(teacher, name)} or "
                                "--config.distill.init=random")
        if int(student.get("num_hidden_groups", 0)):
            raise UserError("distill.init=teacher maps teacher layers onto student layers, which "
                            "a student with shared layers (model.num_hidden_groups) does not "
                            "have; set --config.model.num_hidden_groups=0 or "
                            "--config.distill.init=random")
    if alpha_cos > 0 and width != teacher.hidden_size:
        raise UserError(f"distill.alpha_cos={alpha_cos} compares hidden states, but the student "
                        f"is {width} wide and its teacher {teacher.hidden_size}; set "
                        "--config.distill.alpha_cos=0 or give the student the teacher's width")


@register("distill")
@dataclasses.dataclass(frozen=True)
class Distillation(Objective):
    model_task: str = "masked_lm"
    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    temperature: float = 2.0
    init: str = "teacher"
    layer_map: tuple = ()
    teacher: BertConfig | None = None
    teacher_path: str = ""
    metrics = ("loss", "kl_loss", "mlm_loss", "cos_loss", "teacher_agreement")
    trainable = staticmethod(_student_param)
    save_frozen = False

    def __post_init__(self):
        if float(self.temperature) <= 0:
            raise UserError(f"distill.temperature={self.temperature} must be > 0 (DistilBERT: 2.0)")
        weights = (self.alpha_ce, self.alpha_mlm, self.alpha_cos)
        if min(weights) < 0 or max(weights) <= 0:
            raise UserError(f"distill.alpha_ce, alpha_mlm, alpha_cos = {weights} must be >= 0 and "
                            "not all 0 (DistilBERT: 5.0, 2.0, 1.0)")
        if self.init not in INITS:
            raise UserError(f"distill.init={self.init!r} is not one of {', '.join(INITS)}")

    @classmethod
    def configure(cls, cfg, special_ids):
        del special_ids
        d = cfg.get("distill")
        if d is None:
            raise UserError("objective.name=distill reads the distill section of "
                            "configs/distill.py; run bertjax distill --config=configs/distill.py")
        if not str(d.teacher):
            raise UserError("set --config.distill.teacher to the teacher: a run workdir, a "
                            "bertjax checkpoint or a Hugging Face model directory")
        student = cfg.model.to_dict()
        teacher = teacher_config(str(d.teacher), student)
        init = str(d.init)
        obj = cls(alpha_ce=float(d.alpha_ce), alpha_mlm=float(d.alpha_mlm),
                  alpha_cos=float(d.alpha_cos), temperature=float(d.temperature), init=init,
                  teacher=teacher, teacher_path=str(d.teacher))
        check_student(student, teacher, init, obj.alpha_cos)
        if init == "teacher":
            layers = parse_layer_map(str(d.layer_map), int(student["num_layers"]),
                                     teacher.num_layers)
            obj = dataclasses.replace(obj, layer_map=layers)
        return obj

    def build(self, task, model_cfg, seed=0):
        if self.teacher is None:
            raise UserError("objective.name=distill needs a teacher: set --config.distill.teacher")
        # The student's draws come first, so a random-init student is the masked-LM model
        # build_model gives for the same seed.
        with nnx.use_eager_sharding(False):
            return StudentAndTeacher(model_cfg, self.teacher, rngs=nnx.Rngs(params=seed))

    def batch_spec(self, batch, seq, preds):
        return {**encoder_spec(batch, seq), "masked_lm_positions": ((batch, preds), I32),
                "masked_lm_ids": ((batch, preds), I32), "masked_lm_weights": ((batch, preds), F32)}

    def forward(self, model, batch, dropout_key):
        inputs = (batch["input_ids"], batch["segment_ids"], batch["input_mask"])
        hidden, logits = every_position(model, *inputs, dropout_key=dropout_key)
        t_hidden, t_logits = jax.lax.stop_gradient(every_position(model.teacher, *inputs))
        return {"hidden": hidden, "logits": logits, "teacher_hidden": t_hidden,
                "teacher_logits": t_logits}

    def _weights(self, batch):
        rows = _rows_of(batch, "input_mask")
        tokens = (batch["input_mask"] > 0).astype(F32) * rows[:, None]
        return tokens, batch["masked_lm_weights"].astype(F32) * rows[:, None], rows

    def denominators(self, batch):
        tokens, w, rows = self._weights(batch)
        return {"tokens": jnp.sum(tokens), "masked": jnp.sum(w), "rows": jnp.sum(rows)}

    def loss(self, out, batch, denoms=None):
        tokens, w, rows = self._weights(batch)
        d = denoms if denoms is not None else self.denominators(batch)
        t = jnp.float32(self.temperature)
        log_s = jax.nn.log_softmax(out["logits"].astype(F32) / t, axis=-1)
        log_t = jax.nn.log_softmax(out["teacher_logits"].astype(F32) / t, axis=-1)
        kl = jnp.sum(jnp.exp(log_t) * (log_t - log_s), axis=-1)
        kl_sum = jnp.sum(kl * tokens) * t * t

        s, te = out["hidden"].astype(F32), out["teacher_hidden"].astype(F32)
        # torch's cosine_embedding_loss: dot / sqrt((|s|^2 + eps) (|t|^2 + eps)), eps = 1e-12.
        cos = jnp.sum(s * te, -1) / jnp.sqrt((jnp.sum(s * s, -1) + 1e-12)
                                             * (jnp.sum(te * te, -1) + 1e-12))
        cos_sum = jnp.sum((1.0 - cos) * tokens)

        pos = batch["masked_lm_positions"].astype(I32)[..., None]
        mlm_logits = jnp.take_along_axis(out["logits"], pos, axis=1)
        t_mlm = jnp.take_along_axis(out["teacher_logits"], pos, axis=1)
        mlm_sum, mlm_count = _weighted_ce(mlm_logits, batch["masked_lm_ids"], w)

        n_tokens = jnp.maximum(d["tokens"], 1.0)
        loss = (self.alpha_ce * kl_sum / n_tokens + self.alpha_mlm * mlm_sum / (d["masked"] + 1e-5)
                + self.alpha_cos * cos_sum / n_tokens)
        agree = (jnp.argmax(mlm_logits, -1) == jnp.argmax(t_mlm, -1)).astype(F32)
        sums = {"kl_loss": (kl_sum, jnp.sum(tokens)), "mlm_loss": (mlm_sum, mlm_count),
                "cos_loss": (cos_sum, jnp.sum(tokens)),
                "mlm_accuracy": _accuracy(mlm_logits, batch["masked_lm_ids"], w),
                "teacher_mlm_accuracy": _accuracy(t_mlm, batch["masked_lm_ids"], w),
                "teacher_agreement": (jnp.sum(agree * w), jnp.sum(w))}
        sums["loss"] = _loss_sum(loss, rows, denoms)
        return loss, sums

    def flops_per_token(self, model, seq, preds):
        """The student trained with its MLM head on every position, plus the teacher's forward
        pass (a third of its training FLOPs)."""
        del preds
        student = flops_lib.model_flops_per_token(model, seq, None)
        if self.teacher is None:
            return student
        return student + flops_lib.model_flops_per_token(self.teacher, seq, None) / 3


@register("embedding_mse")
@dataclasses.dataclass(frozen=True)
class EmbeddingMSE(_Embedding):
    """`target` [B, D]: the teacher's embedding of each text; loss = mean over rows and
    dimensions of the squared difference (torch's MSELoss), and `cosine` between the two."""

    dim: int = 0  # D, the teacher's embedding width (the batch spec's, for AOT and plan)
    metrics = ("loss", "cosine")

    def batch_spec(self, batch, seq, preds):
        return {**encoder_spec(batch, seq), "target": ((batch, self.dim), F32)}

    def forward(self, model, batch, dropout_key):
        if "target" not in batch:
            return self._predict_forward(model, batch)
        emb = self._encode(model, batch["input_ids"], batch["input_mask"], dropout_key)
        if emb.shape[-1] != batch["target"].shape[-1]:
            raise UserError(f"the student's embeddings are {emb.shape[-1]} wide but the "
                            f"teacher's {batch['target'].shape[-1]}; give the student the "
                            "teacher's hidden size")
        return {"embedding": emb}

    def loss(self, out, batch, denoms=None):
        emb, target = out["embedding"], batch["target"].astype(F32)
        rows = _rows_of(batch, "target")
        err = jnp.sum((emb - target) ** 2, axis=-1) * rows
        width = jnp.float32(emb.shape[-1])
        d = denoms["rows"] if denoms is not None else jnp.sum(rows)
        cos = jnp.sum(emb * target, -1) / jnp.sqrt((jnp.sum(emb * emb, -1) + 1e-12)
                                                   * (jnp.sum(target * target, -1) + 1e-12))
        return jnp.sum(err) / (jnp.maximum(d, 1.0) * width), {
            "loss": (jnp.sum(err) / width, jnp.sum(rows)),
            "cosine": (jnp.sum(cos * rows), jnp.sum(rows))}

    def denominators(self, batch):
        return {"rows": jnp.sum(_rows_of(batch, "target"))}
