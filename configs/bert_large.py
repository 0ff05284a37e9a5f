"""BERT-Large (24 layers, hidden 1024): sequence 128, batch 256, lr 1e-4.

bertjax pretrain --config=configs/bert_large.py --workdir=gs://BUCKET/runs/large \
    --config.data.train_dir=gs://BUCKET/data/seq128
"""
from bertjax.config import base_config


def get_config(arg: str = ""):
    del arg
    c = base_config("large")
    c.model.dtype = "bfloat16"
    return c
