"""The `make demo` model: a 4-layer, 128-wide BERT pretrained for a few minutes on a 2-core CPU,
at sequence 64 (the demo's text is Wikipedia sentences and WordNet glosses; the fine-tuning
definitions fit in 32 tokens).

bertjax pretrain --config=configs/demo.py --workdir=demo_out/pretrain \
    --config.data.train_dir=demo_out/data/train --config.data.eval_dir=demo_out/data/heldout \
    --config.model.vocab_size=8000
"""
from bertjax.config import base_config


def get_config(arg: str = ""):
    del arg
    c = base_config("tiny")
    c.model.num_layers = 4
    c.model.hidden_size = 128
    c.model.num_heads = 4
    c.model.intermediate_size = 512
    c.model.vocab_size = 8000
    c.data.max_seq_length = 64
    c.data.max_predictions_per_seq = 10
    c.train.batch_size = 64
    c.train.num_steps = 600
    c.train.log_every = 25
    c.train.eval_every = 150
    c.train.eval_steps = 100  # the whole held-out set (one pass stops earlier)
    c.train.checkpoint_every = 300
    # A minutes-long budget: a high peak, a short warmup, linear decay to zero.
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 60
    c.optim.bias_correction = True  # short runs need Adam's early-step correction
    return c
