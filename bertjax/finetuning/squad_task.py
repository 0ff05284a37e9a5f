"""SQuAD v1.1 / v2.0 fine-tuning: sliding windows, n-best span decoding, official EM/F1.

On v2.0 a question is answered "no answer" when its null odds (null score minus best span score)
exceed a threshold. Scoring is the official evaluate-v2.0.py's with null_odds as its na_prob, as
google-research/bert's README runs it: every eval reports EM/F1 at task.null_threshold (default
1.0, the official script's --na-prob-thresh default, until one is tuned) and the official
best_exact / best_f1 with their *_thresh on the submitted predictions; the best checkpoint is
picked by best_f1. The predictions file written at the end uses the threshold that maximised F1 on
dev, as the original recipe tunes it, and its metrics follow the official script's arithmetic for
that file with `--na-prob-file null_odds.json --na-prob-thresh THRESHOLD`.
"""
from __future__ import annotations

from typing import Callable

from bertjax.data.tasks import squad
from bertjax.errors import UserError
from bertjax.evaluate import squad_metrics, writers
from bertjax.finetuning.family import Prepared, task_path
from bertjax.train import objectives

TRAIN_KEYS = ("input_ids", "segment_ids", "input_mask", "start_positions", "end_positions")
_COUNTS = ("total", "HasAns_total", "NoAns_total")


def prepare(cfg, tokenizer, log: Callable[[str], None]) -> Prepared:
    t = cfg.task
    v2 = bool(t.version_2)
    train_path, dev_path = task_path(cfg, "train_file"), task_path(cfg, "predict_file")
    train_ex = squad.read_squad(train_path, is_training=True)
    dev_ex = squad.read_squad(dev_path, is_training=False)
    if not v2:
        for path, examples in ((train_path, train_ex), (dev_path, dev_ex)):
            if any(ex.is_impossible for ex in examples):
                raise UserError(f"{path} has unanswerable (is_impossible) questions, a SQuAD 2.0 "
                                "file; use --config=configs/squad.py:v2")
    window = dict(max_seq_length=int(cfg.data.max_seq_length), doc_stride=int(t.doc_stride),
                  max_query_length=int(t.max_query_length))
    train_feats = squad.featurize(train_ex, tokenizer, is_training=True, **window)
    dev_feats = squad.featurize(dev_ex, tokenizer, is_training=False, **window)
    log(f"SQuAD {'2.0' if v2 else '1.1'}: {len(train_ex)} train questions in {len(train_feats)} "
        f"windows, {len(dev_ex)} dev questions in {len(dev_feats)} windows")
    golds = squad_metrics.gold_answers(dev_ex)

    def decode(predict):
        out = predict(dev_feats.arrays)
        return squad_metrics.postprocess(
            dev_ex, dev_feats, out["start_logits"], out["end_logits"], n_best=int(t.n_best),
            max_answer_length=int(t.max_answer_length), version_2=v2,
            null_threshold=float(t.null_threshold))

    def score(preds, predictions, threshold: float) -> dict[str, float]:
        res = squad_metrics.evaluate(golds, predictions, preds.null_odds if v2 else None,
                                     na_prob_thresh=threshold)
        return {k: float(v) for k, v in res.items() if k not in _COUNTS}

    def dev_metrics(predict) -> dict[str, float]:
        preds = decode(predict)
        return score(preds, preds.predictions, float(t.null_threshold))

    def write_outputs(predict, out_dir: str, write: bool) -> dict:
        preds = decode(predict)
        predictions = preds.predictions
        threshold = None
        if v2:
            threshold = score(preds, predictions, float(t.null_threshold))["best_f1_thresh"]
            predictions = squad_metrics.apply_null_threshold(preds.best_non_null, preds.null_odds,
                                                             threshold)
        metrics = score(preds, predictions, threshold if v2 else float(t.null_threshold))
        if threshold is not None:
            metrics["null_threshold"] = threshold
        files = []
        if write:
            paths = writers.write_squad_predictions(out_dir, predictions,
                                                    preds.null_odds if v2 else None, preds.nbest)
            files = list(paths.values())
        return {"metrics": metrics, "files": files}

    names = ["exact", "f1", "HasAns_exact", "HasAns_f1"]
    if v2:
        names += ["NoAns_exact", "NoAns_f1", "best_exact", "best_exact_thresh", "best_f1",
                  "best_f1_thresh"]
    return Prepared(
        name=f"squad{'2' if v2 else '1'}",
        objective=objectives.make("span_qa"),
        num_labels=2,
        train={k: train_feats.arrays[k] for k in TRAIN_KEYS},
        metric_names=tuple(names),
        default_best="best_f1" if v2 else "f1",
        evaluate=dev_metrics,
        write_outputs=write_outputs,
    )
