"""BERT-Tiny (2 layers, hidden 128): CPU runs, tests and the demo.

bertjax pretrain --config=configs/bert_tiny.py --workdir=/tmp/tiny \
    --config.data.train_dir=DATA --config.train.num_steps=2000
"""
from bertjax.config import base_config


def get_config(arg: str = ""):
    del arg
    c = base_config("tiny")
    c.train.batch_size = 64
    c.train.num_steps = 10000
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 500
    return c
