"""RoBERTa pretraining: MLM only on FULL-SENTENCES data (`prepare --no_nsp`, packed across
documents), dynamic masks, RoBERTa's optimizer (Liu et al. 2019, Table 9: Adam beta2 0.98,
eps 1e-6, weight decay 0.01, linear decay; base lr 6e-4 with 24k warmup steps, large 4e-4 with
30k) and sequences of 512 from the start.

bertjax prepare --input=TEXT --vocab=BPE_DIR --output_dir=DATA --max_seq_length=512 \
    --max_predictions_per_seq=80 --no_nsp --masking=dynamic
bertjax pretrain --config=configs/roberta.py:base --workdir=DIR --config.data.train_dir=DATA

arg = "tiny" (tests), "base" (default) or "large". Positions follow the data's pad id (fairseq:
real tokens from pad id + 1), so the table holds max_seq_length + pad id + 1 rows: 514 with
GPT-2's BPE (pad 1). The paper's batch is 8K sequences for 500k steps; the batch here is 256 per
step, to scale with `train.grad_accum_steps` or a bigger slice.
"""
from bertjax.config import base_config

RECIPES = {
    # preset: (peak lr, warmup steps)
    "tiny": (1e-3, 100),
    "base": (6e-4, 24000),
    "large": (4e-4, 30000),
}


def get_config(arg: str = "base"):
    preset = arg or "base"
    if preset not in RECIPES:
        raise ValueError(f"configs/roberta.py takes one of {sorted(RECIPES)}, not {arg!r}")
    lr, warmup = RECIPES[preset]
    c = base_config(preset, arch="roberta")
    # GPT-2's byte-level BPE, as the released models; pretraining checks it against the data.
    c.model.vocab_size = 50265
    c.objective.name = "mlm"
    c.data.masking = "dynamic"
    c.data.max_seq_length = 512
    c.data.max_predictions_per_seq = 80
    c.optim.learning_rate = lr
    c.optim.warmup_steps = warmup
    c.optim.b2 = 0.98
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.01
    # RoBERTa (fairseq's Adam) corrects Adam's bias, unlike the original BERT optimizer.
    c.optim.bias_correction = True
    c.train.num_steps = 500000
    if preset == "tiny":
        c.data.max_seq_length = 128
        c.data.max_predictions_per_seq = 20
        c.train.num_steps = 1000
        c.train.batch_size = 32
    else:
        c.model.dtype = "bfloat16"
    return c
