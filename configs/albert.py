"""ALBERT pretraining: MLM + sentence-order prediction on one shared layer with a factorised
embedding (Lan et al. 2019, arXiv 1909.11942).

bertjax prepare --input=TEXT --vocab=spiece.model --output_dir=DATA --max_seq_length=512 \\
    --max_predictions_per_seq=20 --pair_task=sop --masking_ngram=3 --whole_word_masking \\
    --dupe_factor=40
bertjax pretrain --config=configs/albert.py:base --workdir=DIR --config.data.train_dir=DATA

arg = "tiny" (tests and the CPU demo), "base", "large", "xlarge" or "xxlarge".

Where the numbers come from:
- Sizes: the paper's Table 1 (E = 128 at every size; base L12 H768, large L24 H1024, xlarge L24
  H2048, xxlarge L12 H4096 with a 16384-wide FFN and 64 heads); heads and FFN widths of the
  others as in the released v2 configs (H/64 heads except xlarge's 16, FFN 4H).
- Recipe (section 4.1): LAMB, learning rate 0.00176, batch 4096, 125,000 steps, sequence 512,
  MLM with n-gram masking (n <= 3, p(n) proportional to 1/n) and SOP. The warmup (3,125 steps)
  is google-research/albert's run_pretraining default. The v2 models use no dropout.
- Data: 20 predictions per sequence, 10% short sequences, dupe factor 40
  (create_pretraining_data.py's defaults).
- The LAMB moments here are bias-corrected, weight decay 0.01 outside LayerNorm and biases (the
  BERT recipes' values); the ALBERT code's exact decay and epsilon have not been checked against
  this optimizer at scale.

The batch here is 4096 per step (the paper's); reach it on a small slice with
train.grad_accum_steps.
"""
from bertjax.config import shaped_config

# preset -> (layers, hidden, heads, ffn)
SIZES = {
    "tiny": (4, 128, 2, 512),
    "base": (12, 768, 12, 3072),
    "large": (24, 1024, 16, 4096),
    "xlarge": (24, 2048, 16, 8192),
    "xxlarge": (12, 4096, 64, 16384),
}
LEARNING_RATE = 0.00176
WARMUP = 3125


def get_config(arg: str = "base"):
    preset = arg or "base"
    # The preset only names a base to start from; every size field is set from SIZES.
    c = shaped_config("configs/albert.py", SIZES, arg, "albert",
                      base="tiny" if preset == "tiny" else "base")
    m = c.model
    # ALBERT's SentencePiece vocabulary; pretraining checks it against the data.
    m.vocab_size = 30000
    m.hidden_dropout = 0.0
    m.attention_dropout = 0.0
    c.objective.name = "mlm_sop"
    c.data.max_seq_length = 512
    c.data.max_predictions_per_seq = 20
    c.optim.name = "lamb"
    c.optim.learning_rate = LEARNING_RATE
    c.optim.warmup_steps = WARMUP
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-6
    c.optim.weight_decay = 0.01
    c.optim.bias_correction = True
    c.train.batch_size = 4096
    c.train.num_steps = 125000
    if preset == "tiny":
        # E < H as in every ALBERT (at E == H HF's projection has no counterpart here).
        m.embedding_size = 64
        c.data.max_seq_length = 128
        c.train.batch_size = 32
        c.train.num_steps = 1000
        c.optim.warmup_steps = 100
    else:
        m.dtype = "bfloat16"
    return c
