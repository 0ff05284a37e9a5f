"""Named-entity recognition on CoNLL-2003-style column files (token ... tag per line, blank lines
between sentences; IOB1 or IOB2 tags).

bertjax finetune --config=configs/ner.py --config.init_from=CKPT --workdir=DIR \
    --config.task.data_dir=CONLL_DIR [--config.task.train_file=eng.train \
    --config.task.dev_file=eng.testa --config.task.test_file=eng.testb]

The label sits on the first sub-token of each word; scores are entity-level precision, recall and
F1 as conlleval computes them, on dev (the checkpoint criterion) and test. Learning rate 5e-5,
batch 32, 3 epochs with 10% warmup, max_seq_length 128 (longer sentences are split at word
boundaries). Set test_file="" when there is no test file.
"""
from bertjax.config import finetune_config


def get_config(arg: str = "conll"):
    c = finetune_config("base", "ner")
    c.task.name = arg or "conll"
    c.task.train_file = "train.txt"
    c.task.dev_file = "dev.txt"
    c.task.test_file = "test.txt"
    c.data.max_seq_length = 128
    c.train.batch_size = 32
    c.task.epochs = 3.0
    c.optim.learning_rate = 5e-5
    return c
