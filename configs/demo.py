"""The `make demo` model: a 4-layer, 128-wide BERT that pretrains on a 2-core CPU in ~10 minutes.

python -m bertjax.pretrain --config=configs/demo.py --workdir=demo_out/pretrain \
    --config.data.train_dir=demo_out/data/train128 --config.data.eval_dir=demo_out/data/heldout128 \
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
    c.train.batch_size = 32
    c.train.num_steps = 1200
    c.train.log_every = 50
    c.train.eval_every = 300
    c.train.eval_steps = 20
    c.train.checkpoint_every = 300
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 120
    c.optim.bias_correction = True  # short runs need Adam's early-step correction
    return c
