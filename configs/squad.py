"""SQuAD fine-tuning: --config=configs/squad.py:v1 (SQuAD 1.1) or :v2 (SQuAD 2.0).

bertjax finetune --config=configs/squad.py:v1 --config.init_from=CKPT --workdir=DIR \
    --config.task.train_file=train-v1.1.json --config.task.predict_file=dev-v1.1.json

The original run_squad settings: [CLS] question [SEP] passage window [SEP] with
max_seq_length 384, doc_stride 128, questions cut to 64 pieces, n-best 20, answers of at most 30
pieces; learning rate 3e-5 over 2 epochs with 10% warmup, batch 32. Dev is scored as the
official evaluate-v1.1.py / evaluate-v2.0.py score it. On v2, null_odds (null score minus best
span score) stand in for the official na_prob: "no answer" above task.null_threshold (1.0, the
official --na-prob-thresh default, until tuned); best_f1 (the checkpoint criterion) and its
threshold come from the official one-at-a-time walk over the submitted predictions; at the end
predictions.json is written with the tuned threshold, beside null_odds.json, and scored with the
arithmetic of `evaluate-v2.0.py dev-v2.0.json predictions.json --na-prob-file null_odds.json
--na-prob-thresh THRESHOLD` (restated and compared in tests/test_metrics.py; the official
script itself is not run by the tests).
"""
from bertjax.config import finetune_config


def get_config(arg: str = "v1"):
    version = (arg or "v1").lower().lstrip("v")
    if version not in ("1", "1.1", "2", "2.0"):
        raise ValueError(f"unknown SQuAD version {arg!r}; use v1 or v2")
    c = finetune_config("base", "squad")
    c.task.version_2 = version.startswith("2")
    c.task.name = "v2" if c.task.version_2 else "v1"
    c.data.max_seq_length = 384
    c.task.doc_stride = 128
    c.task.max_query_length = 64
    c.task.n_best = 20
    c.task.max_answer_length = 30
    c.train.batch_size = 32
    c.task.epochs = 2.0
    c.optim.learning_rate = 3e-5
    return c
