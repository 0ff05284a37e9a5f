"""GLUE metrics in numpy (fractions in [0, 1], as scikit-learn reports them) and the per-task
selection: CoLA Matthews correlation, MRPC/QQP accuracy and F1, STS-B Pearson and Spearman,
accuracy elsewhere. `score` is the mean of a task's metrics, the number to pick checkpoints by."""
from __future__ import annotations

import numpy as np

from bertjax.data.tasks.glue import GlueTask, get_task


def accuracy(predictions, labels) -> float:
    p, y = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(p == y)) if len(y) else 0.0


def f1_binary(predictions, labels, positive: int = 1) -> float:
    """F1 of the positive class; 0 when there is neither a positive prediction nor label."""
    p, y = np.asarray(predictions) == positive, np.asarray(labels) == positive
    tp = float(np.sum(p & y))
    denom = float(np.sum(p) + np.sum(y))
    return 2.0 * tp / denom if denom else 0.0


def matthews_corrcoef(predictions, labels) -> float:
    """Multi-class MCC from the confusion matrix (equals the binary phi coefficient for two
    classes); 0 when either side is constant, where the correlation is undefined."""
    p, y = np.asarray(predictions), np.asarray(labels)
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    yi, pi = inv[: len(y)], inv[len(y):]
    k = len(classes)
    cm = np.zeros((k, k), np.float64)
    np.add.at(cm, (yi, pi), 1.0)
    n = cm.sum()
    true_counts, pred_counts = cm.sum(axis=1), cm.sum(axis=0)
    cov_yp = np.trace(cm) * n - true_counts @ pred_counts
    cov_yy = n * n - true_counts @ true_counts
    cov_pp = n * n - pred_counts @ pred_counts
    if cov_yy * cov_pp == 0:
        return 0.0
    return float(cov_yp / np.sqrt(cov_yy * cov_pp))


def pearson(x, y) -> float:
    """Pearson r; 0 for a constant input (a constant predictor carries no correlation, and a NaN
    would break best-checkpoint comparisons)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc @ xc) * (yc @ yc))
    return float(np.clip((xc @ yc) / denom, -1.0, 1.0)) if denom > 0 else 0.0


def rankdata(x) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.append(True, sorted_x[1:] != sorted_x[:-1]))
    ends = np.append(starts[1:], len(x))
    avg = (starts + ends + 1) / 2.0          # mean of ranks start+1 .. end
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def spearman(x, y) -> float:
    return pearson(rankdata(x), rankdata(y))


_METRICS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "mcc": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def compute(task: GlueTask | str, predictions, labels) -> dict[str, float]:
    """predictions: class ids [N], class logits [N, C], or regression outputs [N] / [N, 1];
    labels: class ids or scores [N]. Returns the task's metrics plus `score`."""
    task = get_task(task) if isinstance(task, str) else task
    preds = np.asarray(predictions)
    if task.is_regression:
        preds = preds.reshape(len(preds)).astype(np.float64)
    elif preds.ndim == 2:
        preds = preds.argmax(-1)
    labels = np.asarray(labels)
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    out = {name: _METRICS[name](preds, labels) for name in task.metrics}
    out["score"] = float(np.mean(list(out.values())))
    return out
