"""NER fine-tuning on CoNLL-style column files: first-sub-token labels, conlleval entity scores.

The tag set is read from the training file ("O" first, the rest sorted) and stored as labels.json
beside the best checkpoint, since the classifier's outputs mean nothing without it. A dev or test
tag the training file never uses is refused (the model has no output for it). Precision, recall
and F1 are entity-level percentages exactly as conlleval computes them; the CoNLL files written at
the end ("token gold predicted") can be fed to conlleval itself.
"""
from __future__ import annotations

import json
import os
from typing import Callable

from bertjax.data.tasks import ner
from bertjax.evaluate import conll_metrics, writers
from bertjax.finetuning.family import Prepared, softmax_ce, task_path
from bertjax.train import objectives

TRAIN_KEYS = ("input_ids", "segment_ids", "input_mask", "labels", "label_weights")
_SCORES = ("precision", "recall", "f1", "accuracy")


def prepare(cfg, tokenizer, log: Callable[[str], None]) -> Prepared:
    seq = int(cfg.data.max_seq_length)
    train = ner.read_conll(task_path(cfg, "train_file"))
    sets = {"dev": ner.read_conll(task_path(cfg, "dev_file"))}
    test_path = task_path(cfg, "test_file", required=False)
    if test_path:
        sets["test"] = ner.read_conll(test_path)
    labels = ner.label_list(train)
    log(f"NER: {len(train)} train sentences, "
        + ", ".join(f"{len(v)} {k}" for k, v in sets.items()) + f"; tags {labels}")
    train_feats = ner.featurize(train, tokenizer, labels, seq)
    feats = {k: ner.featurize(v, tokenizer, labels, seq) for k, v in sets.items()}

    def predict_tags(predict, split):
        f = feats[split]
        logits = predict(f.arrays)["logits"]
        tags = ner.decode(logits, f, labels, sets[split])
        loss = softmax_ce(logits, f.arrays["labels"], f.arrays["label_weights"])
        return tags, loss

    def scores(split, tags, loss) -> tuple[dict[str, float], conll_metrics.ConllResult]:
        result = conll_metrics.evaluate([s.tags for s in sets[split]], tags)
        values = {k: float(v) for k, v in result.as_dict().items() if k in _SCORES}
        values["loss"] = loss
        return values, result

    def dev_metrics(predict) -> dict[str, float]:
        return scores("dev", *predict_tags(predict, "dev"))[0]

    def write_outputs(predict, out_dir: str, write: bool) -> dict:
        metrics, files = {}, []
        for split in sets:
            tags, loss = predict_tags(predict, split)
            values, result = scores(split, tags, loss)
            metrics.update(values if split == "dev" else {f"{split}/{k}": v
                                                          for k, v in values.items()})
            if write:
                files.append(writers.write_conll(
                    os.path.join(out_dir, f"{split}_predictions.txt"),
                    [s.tokens for s in sets[split]], [s.tags for s in sets[split]], tags))
                files.append(writers.atomic_write_text(
                    os.path.join(out_dir, f"{split}_conlleval.txt"), conll_metrics.report(result)))
        return {"metrics": metrics, "files": files}

    return Prepared(
        name=str(cfg.task.name or "ner"),
        objective=objectives.make("token_classification"),
        num_labels=len(labels),
        train={k: train_feats.arrays[k] for k in TRAIN_KEYS},
        metric_names=(*_SCORES, "loss"),
        default_best="f1",
        evaluate=dev_metrics,
        write_outputs=write_outputs,
        extra_files={"labels.json": json.dumps(labels, indent=2).encode() + b"\n"},
    )
