"""BERT-Base, the paper's phase-1 recipe: sequence 128, batch 256, lr 1e-4, 10k warmup steps.

bertjax pretrain --config=configs/bert_base.py --workdir=gs://BUCKET/runs/base \
    --config.data.train_dir=gs://BUCKET/data/seq128 --config.model.dtype=bfloat16
Pass ":512" for phase 2 (sequence 512, 80 predictions per sequence).
"""
from bertjax.config import base_config


def get_config(arg: str = ""):
    c = base_config("base")
    c.model.dtype = "bfloat16"
    if arg == "512":
        c.data.max_seq_length = 512
        c.data.max_predictions_per_seq = 80
        c.train.num_steps = 100000
    return c
