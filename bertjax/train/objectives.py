"""What each task feeds the model and how it scores it: pure jnp, used inside the jitted steps.

An objective returns (loss, sums) where `sums` maps a metric name to (numerator, denominator), so
metrics add up exactly over micro-batches, devices, hosts and eval steps before dividing.

`denominators(batch)` gives the counts a loss divides by (masked tokens, examples, labelled
tokens). With gradient accumulation the step takes them from the whole global batch and passes
them to each micro-batch's `loss(out, batch, denoms)`: every micro-batch then contributes its share
of ONE division, and the summed losses and gradients are those of the whole batch at once, however
unevenly the masked tokens or labels fall across micro-batches. Without `denoms` the batch divides
by its own counts.

Every objective is registered by name (`cfg.objective.name`) and declares what the rest of the
house needs from it, so the loop, `plan`, `bench`, AOT and the hooks never name one:
- `model_task`: the task model it trains (bertjax.model.TASK_MODELS);
- `batch_spec(batch, seq, preds)`: the shapes and dtypes of one batch (AOT and `plan`);
- `metrics`: what the progress line prints first, in order (every metric still goes to
  metrics.jsonl, TensorBoard and eval lines);
- `summable`: whether its loss can be summed over micro-batches (a contrastive loss cannot);
- `trainable`: an NNX filter of the parameters it trains. The step keeps the others in a frozen
  part of the state (no gradient, no optimizer state), saved with checkpoints if `save_frozen`.
"""
from __future__ import annotations

import dataclasses

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bertjax.errors import UserError
from bertjax.model import build_model
from bertjax.train import flops as flops_lib

I32, F32 = jnp.int32, jnp.float32
OBJECTIVES: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} is registered twice")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls
    return add


def make(name: str, **kwargs) -> Any:
    if name not in OBJECTIVES:
        raise UserError(f"objective.name={name!r} is not one of {', '.join(sorted(OBJECTIVES))}; "
                        "set --config.objective.name to one of them")
    return OBJECTIVES[name](**kwargs)


def encoder_spec(batch: int, seq: int) -> dict:
    return {"input_ids": ((batch, seq), I32), "segment_ids": ((batch, seq), I32),
            "input_mask": ((batch, seq), I32)}


class Objective:
    """Defaults every objective shares; a subclass sets what differs."""

    name = ""
    model_task = ""
    metrics: tuple[str, ...] = ("loss",)
    summable = True
    trainable: Any = nnx.Param
    save_frozen = True

    def batch_spec(self, batch: int, seq: int, preds: int) -> dict:
        raise NotImplementedError

    @classmethod
    def configure(cls, cfg, special_ids: dict | None) -> "Objective":
        """The objective a run's config asks for; one with knobs of its own (`objective.*`) or
        that needs the tokenizer's special ids reads them here."""
        del cfg, special_ids
        return cls()

    def build(self, task: str, model_cfg, seed: int = 0):
        """The model the step runs: the task model, or (distillation) the task model beside the
        frozen networks the objective reads."""
        return build_model(task, model_cfg, seed=seed)

    def flops_per_token(self, model, seq: int, preds: int | None) -> float:
        """Training FLOPs per token of the model this objective runs (train/flops.py); `preds`
        is the MLM head's positions per sequence (None = every position)."""
        return flops_lib.model_flops_per_token(model, seq, preds)


def _weighted_ce(logits, labels, weights):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(ce * weights), jnp.sum(weights)


def _accuracy(logits, labels, weights):
    hit = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return jnp.sum(hit * weights), jnp.sum(weights)


def _row_weights(batch, n):
    # Eval batches padded to a static shape carry example_weight = 0 on the filler rows.
    return batch.get("example_weight", jnp.ones((n,), jnp.float32)).astype(jnp.float32)


def _rows_of(batch, key):
    return _row_weights(batch, batch[key].shape[0])


def _rows_and_denominators(batch, key, denoms):
    """The real rows of a per-example objective, and what its loss is divided by: the whole
    step's row count under gradient accumulation (`denoms`), else this batch's."""
    rows = _rows_of(batch, key)
    return rows, denoms if denoms is not None else {"rows": jnp.sum(rows)}


def _loss_sum(loss, rows, denoms):
    # The "loss" metric as (loss * examples of the batch the division covers, own examples): the
    # pairs of the micro-batches of one step add up to (total loss * examples, examples).
    total = denoms["rows"] if denoms is not None else jnp.sum(rows)
    return loss * total, jnp.sum(rows)


@register("mlm_nsp")
@dataclasses.dataclass(frozen=True)
class Pretraining(Objective):
    """MLM on the gathered positions plus NSP (or SOP, the same field); loss =
    sum(w*CE)/(sum(w)+1e-5) + mean NSP CE."""

    model_task: str = "pretraining"
    use_nsp: bool = True
    metrics = ("loss", "mlm_loss", "mlm_accuracy", "nsp_accuracy")
    # The prepared data's pair task (metadata "pair_task") these labels must come from.
    pair_task = "nsp"

    def batch_spec(self, batch, seq, preds):
        spec = {**encoder_spec(batch, seq), "masked_lm_positions": ((batch, preds), I32),
                "masked_lm_ids": ((batch, preds), I32), "masked_lm_weights": ((batch, preds), F32)}
        if self.use_nsp:
            spec["next_sentence_labels"] = ((batch,), I32)
        return spec

    def forward(self, model, batch, dropout_key):
        return model(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                     batch["masked_lm_positions"], dropout_key=dropout_key)

    @staticmethod
    def _weights(batch):
        rows = _rows_of(batch, "masked_lm_weights")
        return batch["masked_lm_weights"].astype(jnp.float32) * rows[:, None], rows

    def denominators(self, batch):
        w, rows = self._weights(batch)
        return {"masked": jnp.sum(w), "rows": jnp.sum(rows)}

    def loss(self, out, batch, denoms=None):
        w, rows = self._weights(batch)
        d = denoms if denoms is not None else {"masked": jnp.sum(w), "rows": jnp.sum(rows)}
        mlm_sum, mlm_count = _weighted_ce(out["mlm_logits"], batch["masked_lm_ids"], w)
        loss = mlm_sum / (d["masked"] + 1e-5)
        sums = {"mlm_loss": (mlm_sum, mlm_count),
                "mlm_accuracy": _accuracy(out["mlm_logits"], batch["masked_lm_ids"], w)}
        if self.use_nsp:
            nsp_sum, nsp_count = _weighted_ce(out["nsp_logits"], batch["next_sentence_labels"], rows)
            loss = loss + nsp_sum / jnp.maximum(d["rows"], 1.0)
            sums["nsp_loss"] = (nsp_sum, nsp_count)
            sums["nsp_accuracy"] = _accuracy(out["nsp_logits"], batch["next_sentence_labels"], rows)
        sums["loss"] = _loss_sum(loss, rows, denoms)
        return loss, sums


@register("mlm")
@dataclasses.dataclass(frozen=True)
class MaskedLM(Pretraining):
    """MLM only (RoBERTa): the masked-LM model, no pooler and no NSP head."""

    model_task: str = "masked_lm"
    use_nsp: bool = False
    metrics = ("loss", "mlm_loss", "mlm_accuracy")


def _encoder_inputs(model, batch, dropout_key):
    return model(batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                 dropout_key=dropout_key)


@register("classification")
@dataclasses.dataclass(frozen=True)
class Classification(Objective):
    metrics = ("loss", "accuracy")

    def batch_spec(self, batch, seq, preds):
        return {**encoder_spec(batch, seq), "labels": ((batch,), I32)}

    model_task: str = "sequence_classification"
    forward = staticmethod(_encoder_inputs)

    def denominators(self, batch):
        return {"rows": jnp.sum(_rows_of(batch, "labels"))}

    def loss(self, out, batch, denoms=None):
        rows, d = _rows_and_denominators(batch, "labels", denoms)
        ce_sum, n = _weighted_ce(out["logits"], batch["labels"], rows)
        loss = ce_sum / jnp.maximum(d["rows"], 1.0)
        return loss, {"loss": (ce_sum, n), "accuracy": _accuracy(out["logits"], batch["labels"], rows)}

    @staticmethod
    def predict(out):
        return {"predictions": jnp.argmax(out["logits"], -1), "logits": out["logits"]}


@register("regression")
@dataclasses.dataclass(frozen=True)
class Regression(Objective):
    """STS-B: one output, mean squared error (as HF's num_labels == 1)."""

    metrics = ("loss",)

    def batch_spec(self, batch, seq, preds):
        return {**encoder_spec(batch, seq), "labels": ((batch,), F32)}

    model_task: str = "sequence_classification"
    forward = staticmethod(_encoder_inputs)

    def denominators(self, batch):
        return {"rows": jnp.sum(_rows_of(batch, "labels"))}

    def loss(self, out, batch, denoms=None):
        rows, d = _rows_and_denominators(batch, "labels", denoms)
        err = (out["logits"][:, 0] - batch["labels"].astype(jnp.float32)) ** 2
        se, n = jnp.sum(err * rows), jnp.sum(rows)
        return se / jnp.maximum(d["rows"], 1.0), {"loss": (se, n)}

    @staticmethod
    def predict(out):
        return {"predictions": out["logits"][:, 0]}


@register("token_classification")
@dataclasses.dataclass(frozen=True)
class TokenClassification(Objective):
    """Labels live on the first sub-token of each word (label_weights = 1 there, 0 elsewhere)."""

    metrics = ("loss", "token_accuracy")

    def batch_spec(self, batch, seq, preds):
        return {**encoder_spec(batch, seq), "labels": ((batch, seq), I32),
                "label_weights": ((batch, seq), F32)}

    model_task: str = "token_classification"
    forward = staticmethod(_encoder_inputs)

    @staticmethod
    def _weights(batch):
        w = batch["label_weights"].astype(jnp.float32)
        return w * _rows_of(batch, "label_weights")[:, None]

    def denominators(self, batch):
        return {"tokens": jnp.sum(self._weights(batch))}

    def loss(self, out, batch, denoms=None):
        w = self._weights(batch)
        d = denoms if denoms is not None else {"tokens": jnp.sum(w)}
        ce_sum, n = _weighted_ce(out["logits"], batch["labels"], w)
        return ce_sum / jnp.maximum(d["tokens"], 1.0), {
            "loss": (ce_sum, n), "token_accuracy": _accuracy(out["logits"], batch["labels"], w)}

    @staticmethod
    def predict(out):
        return {"predictions": jnp.argmax(out["logits"], -1), "logits": out["logits"]}


@register("span_qa")
@dataclasses.dataclass(frozen=True)
class SpanQA(Objective):
    """Mean of the start and end cross-entropies over the sequence, as the original run_squad."""

    metrics = ("loss",)

    def batch_spec(self, batch, seq, preds):
        return {**encoder_spec(batch, seq), "start_positions": ((batch,), I32), "end_positions": ((batch,), I32)}

    model_task: str = "question_answering"
    forward = staticmethod(_encoder_inputs)

    def denominators(self, batch):
        return {"rows": jnp.sum(_rows_of(batch, "start_positions"))}

    def loss(self, out, batch, denoms=None):
        rows, d = _rows_and_denominators(batch, "start_positions", denoms)
        s_sum, n = _weighted_ce(out["start_logits"], batch["start_positions"], rows)
        e_sum, _ = _weighted_ce(out["end_logits"], batch["end_positions"], rows)
        loss = 0.5 * (s_sum + e_sum) / jnp.maximum(d["rows"], 1.0)
        return loss, {"loss": (0.5 * (s_sum + e_sum), n)}

    @staticmethod
    def predict(out):
        return {"start_logits": out["start_logits"], "end_logits": out["end_logits"]}


def finalize(sums: dict) -> dict:
    """(numerator, denominator) pairs -> floats on the host."""
    sums = jax.device_get(sums)
    return {k: float(num) / max(float(den), 1e-9) for k, (num, den) in sums.items()}


def add_sums(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return jax.tree.map(lambda x, y: x + y, a, b)


def from_config(cfg, nsp: bool | None = None, special_ids: dict | None = None,
                pair_task: str | None = None) -> Objective:
    """The objective a config trains. `objective.name=auto` picks it from what the run is: the
    fine-tuning family (and regression for one label), or for pretraining the prepared data
    (`nsp`: whether its metadata holds sentence-pair labels; None when there is no data, as in
    `plan` and `bench`; `pair_task`: its "nsp" or "sop"). `special_ids` are the prepared data's
    ({"pad", "cls", "sep", "mask"})."""
    name = str(cfg.objective.name)
    if name == "auto":
        if "task" in cfg:
            family = str(cfg.task.family)
            if family == "glue":
                regression = str(cfg.task.name) == "stsb" or int(cfg.model.num_labels) == 1
                name = "regression" if regression else "classification"
            else:
                name = {"squad": "span_qa", "ner": "token_classification",
                        "embeddings": "infonce"}[family]
        else:
            name = "mlm" if nsp is False else "mlm_sop" if pair_task == "sop" else "mlm_nsp"
    make(name)  # an unknown name ends here, in one line
    objective = OBJECTIVES[name].configure(cfg, special_ids)
    if nsp is False and getattr(objective, "use_nsp", False):
        raise UserError(f"objective.name={name!r} needs sentence-pair labels but the prepared "
                        "data has none (prepared with --no_nsp); use --config.objective.name=mlm "
                        "or prepare the data with pairs")
    wants = getattr(objective, "pair_task", None) if getattr(objective, "use_nsp", False) else None
    if nsp and pair_task and wants and wants != pair_task:
        right = {"nsp": "mlm_nsp", "sop": "mlm_sop"}.get(pair_task, "auto")
        raise UserError(f"objective.name={name!r} trains {wants.upper()} but the prepared data "
                        f"holds {pair_task.upper()} pairs (prepared with --pair_task={pair_task});"
                        f" use --config.objective.name={right} or prepare with "
                        f"--pair_task={wants}")
    return objective
