"""What every task family (GLUE, SQuAD, NER) hands the fine-tuning driver, and shared helpers.

A family reads and featurizes its data once, up front, so a bad file fails before any compile;
then the driver only needs the training arrays, the objective, and two callbacks that turn a
predict function into dev metrics (every eval) or into metrics plus prediction files (once, with
the best checkpoint).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import numpy as np

from bertjax.errors import UserError
from bertjax.finetuning.predict import PredictFn


@dataclasses.dataclass
class Prepared:
    name: str
    objective: Any
    num_labels: int
    train: dict[str, np.ndarray]          # exactly the keys the objective's loss reads
    metric_names: tuple[str, ...]         # what `evaluate` returns
    default_best: str                     # the main dev metric (higher is better)
    # predict -> dev metrics; called at every eval of the training loop on every host.
    evaluate: Callable[[PredictFn], dict[str, float]]
    # (predict, out_dir, write) -> {"metrics": {...}, "files": [...]}; every host predicts, only
    # the one with write=True writes.
    write_outputs: Callable[[PredictFn, str, bool], dict]
    # name -> bytes, stored beside the best checkpoint (e.g. the NER label list).
    extra_files: dict[str, bytes] = dataclasses.field(default_factory=dict)


def task_path(cfg, field: str, required: bool = True) -> str:
    """cfg.task.<field> as a path, relative to task.data_dir unless absolute; "" if unset and not
    required."""
    value = str(cfg.task[field])
    if not value:
        if required:
            raise UserError(f"set --config.task.{field}=PATH for {cfg.task.family} fine-tuning")
        return ""
    if cfg.task.data_dir and not os.path.isabs(value):
        value = os.path.join(str(cfg.task.data_dir), value)
    return value


def softmax_ce(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Weighted mean cross-entropy in float64 (dev loss from the logits a predict pass returned,
    so evaluation needs one forward pass, not two)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    lse = np.log(np.exp(z).sum(-1))
    picked = np.take_along_axis(z, np.asarray(labels)[..., None].astype(np.int64), -1)[..., 0]
    ce = lse - picked
    w = np.ones_like(ce) if weights is None else np.asarray(weights, np.float64)
    return float((ce * w).sum() / max(w.sum(), 1.0))
