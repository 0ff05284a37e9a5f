"""ELECTRA pretraining: replaced-token detection (`objective.name=electra`, Clark et al. 2020,
Table 6 and google-research/electra's configure_pretraining.py).

bertjax prepare --input=TEXT --vocab=VOCAB --output_dir=DATA --max_seq_length=128 \
    --max_predictions_per_seq=20 --no_nsp
bertjax pretrain --config=configs/electra.py:small --workdir=DIR --config.data.train_dir=DATA

arg = "tiny" (tests), "small" (default), "base" or "large". The step draws its own masks (the
prepared masks are undone), so static and dynamic data serve alike; `max_predictions_per_seq` only
has to hold the data's masks. The generator has the discriminator's depth at a fraction of its
width (1/4 small and large, 1/3 base: Table 6's "generator size", which scales hidden, FFN and
heads together) and shares its token, position and segment embeddings and their LayerNorm.
Optimizer: AdamW, eps 1e-6, weight decay 0.01, 10k warmup, linear decay, no bias correction (the
reference's AdamWeightDecayOptimizer).

DeBERTa-v3's pretraining is this objective with gradient-disentangled embedding sharing and a
generator of the discriminator's width at half its depth, e.g. for a 12-layer, 768-wide model:
--config.objective.embedding_sharing=gdes --config.objective.generator_num_layers=6
--config.model.generator_hidden_size=768 --config.model.generator_num_heads=12
--config.model.generator_intermediate_size=3072 (objective.embedding_sharing: plain, the default,
is ELECTRA's; none keeps two sets of embeddings).
"""
from bertjax.config import base_config

# preset: (layers, hidden, heads, embedding, generator fraction, mask rate, lr, batch, seq, steps)
RECIPES = {
    "tiny": (2, 64, 2, 32, 0.25, 0.15, 1e-3, 32, 128, 1000),
    "small": (12, 256, 4, 128, 0.25, 0.15, 5e-4, 128, 128, 1000000),
    "base": (12, 768, 12, 768, 1 / 3, 0.15, 2e-4, 256, 512, 766000),
    "large": (24, 1024, 16, 1024, 0.25, 0.25, 2e-4, 2048, 512, 400000),
}


def get_config(arg: str = "small"):
    preset = arg or "small"
    if preset not in RECIPES:
        raise ValueError(f"configs/electra.py takes one of {sorted(RECIPES)}, not {arg!r}")
    layers, hidden, heads, emb, gen, mask_rate, lr, batch, seq, steps = RECIPES[preset]
    c = base_config("base", arch="electra")
    m = c.model
    m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size = layers, hidden, heads, 4 * hidden
    m.embedding_size = emb if emb != hidden else 0
    m.generator_hidden_size = round(hidden * gen)
    m.generator_num_heads = max(1, round(heads * gen))
    m.generator_intermediate_size = round(4 * hidden * gen)
    m.max_position_embeddings = 512
    c.objective.name = "electra"
    c.objective.mask_rate = mask_rate
    c.data.max_seq_length = seq
    c.data.max_predictions_per_seq = int((mask_rate + 0.005) * seq)
    c.optim.learning_rate = lr
    c.optim.warmup_steps = 10000 if preset != "tiny" else 100
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.01
    c.train.batch_size = batch
    c.train.num_steps = steps
    if preset != "tiny":
        m.dtype = "bfloat16"
    return c
