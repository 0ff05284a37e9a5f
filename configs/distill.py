"""Distillation: a smaller student learns from a frozen teacher (`objective.name=distill`,
Sanh et al. 2019, DistilBERT; docs/distill.md).

bertjax prepare --input=TEXT --vocab=VOCAB --output_dir=DATA --no_nsp --masking=dynamic
bertjax distill --config=configs/distill.py --workdir=DIR --config.data.train_dir=DATA \
    --config.distill.teacher=TEACHER

arg = "distilbert" (default: DistilBERT itself, the distilbert arch with no segment table, 6
layers from a 12-layer, 768-wide teacher), "tiny" (tests: a 2-layer BERT, 32 wide, from a
4-layer teacher of that width) or "demo" (the distillation benchmark, bertjax/bench/distill.py:
configs/demo.py's model, data shapes, budget and optimizer, at half its depth, 2 of 4 layers, so
that a student distilled from the demo's model and one pretrained from scratch by configs/demo.py
differ in their objective and initialisation only). TEACHER is a run workdir, a bertjax checkpoint or a Hugging Face
directory of any family member, tokenized like DATA. The student's arch is model.arch: any member
whose weights have the teacher's shapes takes the teacher init.

Optimizer as DistilBERT's train.py: Adam lr 5e-4, eps 1e-6, no weight decay, warmup 5% of the
steps, gradient clip 5.0. DistilBERT reached an effective batch of about 4K sequences through
accumulation and trained 3 epochs; num_steps here is a placeholder to size for the corpus.
"""
import importlib.util
import os

import ml_collections as mlc

from bertjax.config import base_config

# preset: (layers, hidden, heads, layer map, lr, batch, seq, preds, steps)
RECIPES = {
    "tiny": (2, 32, 2, "", 1e-3, 16, 32, 5, 12),
    "distilbert": (6, 768, 12, "0,2,4,7,9,11", 5e-4, 4096, 512, 80, 100000),
}


def get_config(arg: str = "distilbert"):
    preset = arg or "distilbert"
    if preset == "demo":
        return _demo_config()
    if preset not in RECIPES:
        raise ValueError(f"configs/distill.py takes one of {sorted([*RECIPES, 'demo'])}, "
                         f"not {arg!r}")
    layers, hidden, heads, layer_map, lr, batch, seq, preds, steps = RECIPES[preset]
    c = base_config("base", arch="distilbert" if preset == "distilbert" else "bert")
    m = c.model
    m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size = layers, hidden, heads, 4 * hidden
    c.objective.name = "distill"
    _add_distill(c, layer_map)
    c.data.max_seq_length = seq
    c.data.max_predictions_per_seq = preds
    c.optim.learning_rate = lr
    c.optim.eps = 1e-6
    c.optim.weight_decay = 0.0
    c.optim.bias_correction = True
    c.optim.clip_norm = 5.0
    c.optim.warmup_steps = max(1, steps // 20)
    c.train.batch_size = batch
    c.train.num_steps = steps
    if preset == "tiny":
        m.max_position_embeddings = 64
        c.train.log_every = 1
        c.train.checkpoint_every = 4
        c.train.eval_every = 1000
        c.train.plot = False
        c.data.shuffle_buffer = 64
    else:
        m.dtype = "bfloat16"
    return c


def _add_distill(c, layer_map: str) -> None:
    with c.unlocked():
        c.distill = mlc.ConfigDict(dict(
            teacher="",  # a run workdir, a bertjax checkpoint or a Hugging Face directory
            alpha_ce=5.0,  # KL(teacher || student) on logits softened by `temperature`, x T^2
            alpha_mlm=2.0,  # the student's MLM loss on the masked positions
            alpha_cos=1.0,  # 1 - cosine between the last hidden states (needs equal widths)
            temperature=2.0,
            init="teacher",  # teacher: embeddings, MLM head and layer_map's layers; or random
            # The teacher layer each student layer starts from, comma-separated; "" spreads
            # them evenly from the first to the last (DistilBERT's 0,2,4,7,9,11 for 12 -> 6).
            layer_map=layer_map,
        ))


def _demo_config():
    # Loaded by path: configs/ is a folder of config files, not a package.
    spec = importlib.util.spec_from_file_location(
        "configs_demo", os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    c = demo.get_config()
    c.model.num_layers //= 2
    c.objective.name = "distill"
    _add_distill(c, "")
    return c
