"""Sentence polarity for the demo: the GLUE SST-2 task read from the demo corpus's
DIR/polarity/{train,dev}.tsv (a "sentence<TAB>label" header, labels 0/1: the SST-2 layout).

bertjax finetune --config=configs/polarity.py:DEMO_DIR/polarity \
    --config.init_from=PRETRAINED --workdir=DIR

The argument (or --config.task.data_dir) is the polarity directory. With only ~180 training
sentences an epoch is a handful of steps, so this runs more epochs than the GLUE recipe, and a
learning rate from the grid the compact-BERT release (Turc et al. 2019) searched (1e-4).
"""
from bertjax.config import finetune_config


def get_config(arg: str = ""):
    c = finetune_config("tiny", "glue")
    c.task.name = "sst2"
    c.task.data_dir = arg
    c.task.source = "tsv"
    c.data.max_seq_length = 64
    c.train.batch_size = 16
    c.task.epochs = 6.0
    c.optim.learning_rate = 1e-4
    c.train.log_every = 10
    return c
