"""Prediction files: GLUE submission TSVs, SQuAD predictions / null odds / n-best JSON and CoNLL
"token gold pred" files. Each is written under a temporary name and renamed when complete, so a
crash never leaves a file that looks finished."""
from __future__ import annotations

import json
import math
import os

from bertjax.data.tasks.glue import GlueTask, get_task, resolve_split
from bertjax.errors import UserError
from bertjax.store.files import write_atomic


def atomic_write_text(path: str, text: str) -> str:
    return write_atomic(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj) -> str:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def glue_submission_name(task: GlueTask | str, split: str = "test") -> str:
    task = get_task(task) if isinstance(task, str) else task
    split = resolve_split(task, split)
    if split not in task.submission:
        raise UserError(f"GLUE {task.name} split {split!r} is not a test split; submissions are "
                        f"made for {', '.join(task.submission)}")
    return task.submission[split]


def _format(task: GlueTask, value) -> str:
    if task.is_regression:
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"non-finite STS-B prediction {value!r}")
        # The server expects scores on the 0-5 scale of the gold labels.
        return f"{min(5.0, max(0.0, v)):.3f}"
    if isinstance(value, str):
        if value not in task.labels:
            raise ValueError(f"{value!r} is not a {task.name} label {list(task.labels)}")
        return value
    return task.labels[int(value)]


def write_glue_submission(out_dir: str, task: GlueTask | str, split: str, indices,
                          predictions) -> str:
    """Writes out_dir/<CoLA.tsv | MNLI-m.tsv | ...> with an "index\\tprediction" header.
    predictions: label strings, class ids, or STS-B scores, aligned with indices."""
    task = get_task(task) if isinstance(task, str) else task
    name = glue_submission_name(task, split)
    indices, predictions = list(indices), list(predictions)
    if len(indices) != len(predictions):
        raise ValueError(f"{len(indices)} indices for {len(predictions)} predictions")
    lines = ["index\tprediction"]
    lines += [f"{i}\t{_format(task, p)}" for i, p in zip(indices, predictions, strict=True)]
    return atomic_write_text(os.path.join(out_dir, name), "\n".join(lines) + "\n")


def write_squad_predictions(out_dir: str, predictions: dict[str, str],
                            null_odds: dict[str, float] | None = None,
                            nbest: dict[str, list[dict]] | None = None,
                            prefix: str = "") -> dict[str, str]:
    """predictions.json ({qid: text}, the official scripts' input), and when given
    null_odds.json ({qid: no-answer score minus best span score}) and nbest_predictions.json."""
    paths = {"predictions": atomic_write_json(
        os.path.join(out_dir, f"{prefix}predictions.json"), predictions)}
    if null_odds is not None:
        paths["null_odds"] = atomic_write_json(
            os.path.join(out_dir, f"{prefix}null_odds.json"), null_odds)
    if nbest is not None:
        paths["nbest"] = atomic_write_json(
            os.path.join(out_dir, f"{prefix}nbest_predictions.json"), nbest)
    return paths


def write_conll(path: str, tokens: list[list[str]], gold: list[list[str]],
                pred: list[list[str]]) -> str:
    """One "token gold pred" line per word, a blank line after each sentence: the input format of
    conlleval (and of conll_metrics.evaluate_lines)."""
    if not len(tokens) == len(gold) == len(pred):
        raise ValueError("tokens, gold and pred need one entry per sentence")
    out = []
    for i, (ws, gs, ps) in enumerate(zip(tokens, gold, pred, strict=True)):
        if not len(ws) == len(gs) == len(ps):
            raise ValueError(f"sentence {i}: {len(ws)} tokens, {len(gs)} gold, {len(ps)} pred")
        for w, g, p in zip(ws, gs, ps, strict=True):
            if any(ch.isspace() for ch in w) or not w:
                raise ValueError(f"sentence {i}: token {w!r} would break the column format")
            out.append(f"{w} {g} {p}")
        out.append("")
    return atomic_write_text(path, "\n".join(out) + ("\n" if out else ""))
