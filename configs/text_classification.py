"""Single-sentence classification from a directory in the SST-2 layout with any label names
(DIR/train.tsv, DIR/dev.tsv with a `sentence<TAB>label` header; DIR/labels.txt optional). The demo
fine-tunes on WordNet topics with it.

bertjax finetune --config=configs/text_classification.py:DIR \
    --config.init_from=PRETRAINED --workdir=DIR --config.seeds=3
"""
from bertjax.config import finetune_config


def get_config(arg: str = ""):
    c = finetune_config("tiny", "glue")
    c.task.name = "text"
    c.task.data_dir = arg
    c.task.source = "tsv"
    c.data.max_seq_length = 64
    c.train.batch_size = 32
    c.task.epochs = 3.0
    c.optim.learning_rate = 1e-4
    c.train.log_every = 50
    return c
