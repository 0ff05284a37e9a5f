"""DeBERTa-v3 shapes (`model.arch=deberta-v2`, which v3 uses too): disentangled attention (c2p +
p2c) over 256 log buckets spanning 512 positions, a LayerNorm'd relative table shared by every
layer, no absolute positions or segment embeddings, LayerNorm eps 1e-7.

bertjax prepare --input=TEXT --vocab=SPM_DIR --output_dir=DATA --max_seq_length=512 \
    --max_predictions_per_seq=80 --no_nsp --masking=dynamic
bertjax pretrain --config=configs/deberta.py:base --workdir=DIR --config.data.train_dir=DATA

arg = "tiny" (tests), "xsmall", "small", "base" (default) or "large". The sizes are those of
transformers' DebertaV2Config for microsoft/deberta-v3-{xsmall,small,base,large} as we know them
(layers, hidden, heads, FFN below; vocabulary 128100): not re-checked against the hub here (no
network), but tests/test_deberta.py checks that each builds exactly Hugging Face's
DebertaV2Model parameter count for the shape. The objective is MLM (DeBERTa-v2's); v3's
replaced-token detection with gradient-disentangled embedding sharing is `objective.name=electra`
when that objective takes this arch. The optimizer is the house default (BERT's), not the
papers' (not checked here).

Attention always runs as XLA for this arch, on TPU too: the fused kernels (splash, cudnn) take no
bias terms, and `bertjax plan` says so in its `attention` row.

Fine-tuning an imported checkpoint needs no recipe here: `bertjax convert --from_hf=DIR` (or
`--config.init_from=DIR`) reads DebertaV2Model and its task classes, and `optim.layer_decay`
works for it (the relative table takes the top layer's rate).
"""
from bertjax.config import shaped_config

# preset: (layers, hidden, heads, FFN)
SHAPES = {
    "tiny": (2, 64, 2, 128),
    "xsmall": (12, 384, 6, 1536),
    "small": (6, 768, 12, 3072),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
}
V3_VOCAB = 128100


def get_config(arg: str = "base"):
    preset = arg or "base"
    c = shaped_config("configs/deberta.py", SHAPES, preset, "deberta-v2")
    m = c.model
    m.vocab_size = V3_VOCAB
    c.objective.name = "mlm"
    c.data.masking = "dynamic"
    c.data.max_seq_length = 512
    c.data.max_predictions_per_seq = 80
    if preset == "tiny":
        # A short table so that the tests' sequences still reach the log-spaced buckets.
        m.position_buckets, m.max_position_embeddings = 16, 128
        c.data.max_seq_length, c.data.max_predictions_per_seq = 128, 20
        c.train.batch_size, c.train.num_steps = 32, 1000
        c.optim.warmup_steps = 100
    else:
        m.dtype = "bfloat16"
    return c
