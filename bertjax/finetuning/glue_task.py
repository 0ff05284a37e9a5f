"""GLUE fine-tuning: every task, its official metrics on dev, submission TSVs for test.

Dev metrics are the task's (CoLA mcc, MRPC/QQP accuracy and F1, STS-B Pearson and Spearman,
accuracy elsewhere) plus `score`, their mean, which is the per-task number the GLUE leaderboard
averages and the default for picking the best checkpoint. MNLI is scored on both dev sets, with
keys prefixed "matched/" and "mismatched/"; with predict_test it also predicts the diagnostic set
(AX.tsv) when its file is in the GLUE directory.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from bertjax.data.tasks import glue
from bertjax.errors import UserError
from bertjax.evaluate import glue_metrics, writers
from bertjax.finetuning.family import Prepared, softmax_ce
from bertjax.train import objectives

TRAIN_KEYS = ("input_ids", "segment_ids", "input_mask", "labels")


def _prefix(task: glue.GlueTask, split: str) -> str:
    # One dev set: plain names; MNLI: "matched/", "mismatched/".
    return "" if len(task.dev_splits) == 1 else split.removeprefix("dev_") + "/"


def prepare(cfg, tokenizer, log: Callable[[str], None]) -> Prepared:
    if not cfg.task.name:
        raise UserError("set the GLUE task: --config=configs/glue.py:TASK (cola, sst2, mrpc, stsb, "
                        "qqp, mnli, qnli, rte, wnli)")
    if str(cfg.task.name) == "text":
        task = glue.text_classification_task(str(cfg.task.data_dir))
    else:
        task = glue.get_task(str(cfg.task.name))
    if not task.dev_splits:
        raise UserError(f"GLUE {task.name} has no training data; the diagnostic set is predicted "
                        "by an MNLI run with --config.task.predict_test=true")
    data_dir, source = str(cfg.task.data_dir), str(cfg.task.source)
    if not data_dir:
        raise UserError(f"set --config.task.data_dir to the GLUE directory (holding "
                        f"{task.dir_name}/train.tsv) or a TFDS data_dir with glue/{task.name}")
    seq = int(cfg.data.max_seq_length)

    def read(split: str, which: glue.GlueTask = task):
        return glue.read_glue(data_dir, which, split, source)

    train_ex = read("train")
    dev = {s: read(s) for s in task.dev_splits}
    tests = {s: (task, read(s)) for s in task.test_splits} if cfg.task.predict_test else {}
    if cfg.task.predict_test and task.name == "mnli":
        try:
            tests["ax"] = (glue.get_task("ax"), read("test", glue.get_task("ax")))
        except UserError:
            log("no GLUE diagnostic file (diagnostic/diagnostic.tsv) found; AX.tsv not written")
    log(f"GLUE {task.name}: {len(train_ex)} train, "
        + ", ".join(f"{len(v)} {s}" for s, v in dev.items())
        + "".join(f", {len(ex)} {s}" for s, (_, ex) in tests.items()))

    train_feats = glue.featurize(train_ex, tokenizer, task, seq)
    dev_feats = {s: glue.featurize(ex, tokenizer, task, seq) for s, ex in dev.items()}

    def dev_metrics(predict) -> dict[str, float]:
        out = {}
        for split, feats in dev_feats.items():
            pred = predict(feats)
            labels = feats["labels"]
            if task.is_regression:
                values = pred["predictions"]
                loss = float(np.mean((values.astype(np.float64) - labels) ** 2))
            else:
                values = pred["logits"]
                loss = softmax_ce(values, labels)
            scores = glue_metrics.compute(task, values, labels)
            scores["loss"] = loss
            out.update({_prefix(task, split) + k: v for k, v in scores.items()})
        return out

    def write_outputs(predict, out_dir: str, write: bool) -> dict:
        metrics = dev_metrics(predict)
        files = []
        for split, (which, examples) in tests.items():
            feats = glue.featurize(examples, tokenizer, which, seq)
            pred = predict(feats)
            values = pred["predictions"] if task.is_regression else pred["logits"]
            # AX is labelled like MNLI, whose model predicts it.
            labels = glue.prediction_labels(task, values)
            if write:
                files.append(writers.write_glue_submission(
                    os.path.join(out_dir, "submission"), which, "test" if split == "ax" else split,
                    [ex.index for ex in examples], labels))
        return {"metrics": metrics, "files": files}

    names = [_prefix(task, s) + m for s in task.dev_splits for m in (*task.metrics, "score", "loss")]
    return Prepared(
        name=task.name,
        objective=objectives.make("regression" if task.is_regression else "classification"),
        num_labels=task.num_labels,
        train={k: train_feats[k] for k in TRAIN_KEYS},
        metric_names=tuple(names),
        default_best=_prefix(task, task.dev_splits[0]) + "score",
        evaluate=dev_metrics,
        write_outputs=write_outputs,
    )
