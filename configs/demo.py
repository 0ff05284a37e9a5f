"""The `make demo` model: a 4-layer, 128-wide BERT pretrained for a few minutes on a 2-core CPU,
at sequence 64 (the demo's text is Wikipedia sentences and WordNet glosses; the fine-tuning
definitions fit in 32 tokens).

bertjax pretrain --config=configs/demo.py --workdir=demo_out/pretrain \
    --config.data.train_dir=demo_out/data/train --config.data.eval_dir=demo_out/data/heldout \
    --config.model.vocab_size=8000

arg "electra": the same 4-layer, 128-wide network as ELECTRA's discriminator, with a generator of
the same depth at 1/4 of its width (32 wide, 1 head, FFN 128, sharing the embeddings), trained by
replaced-token detection for as many steps as give the MLM run's training FLOPs (600 steps of MLM
on 10 of 64 positions), both counted by bertjax/train/flops.py, generator included.

arg "electra_gdes" / "electra_none": the electra arm with DeBERTa-v3's gradient-disentangled
embedding sharing, or with separate embeddings (objective.embedding_sharing). Sharing changes no
matmul, so the three ELECTRA arms have the same FLOPs per step and the same number of steps.
"""
from bertjax.config import base_config
from bertjax.train import flops
from bertjax.train.rtd import max_masked

MLM_STEPS = 600
# arg -> objective.embedding_sharing
ELECTRA_ARMS = {"electra": "plain", "electra_gdes": "gdes", "electra_none": "none"}


def get_config(arg: str = ""):
    if arg not in ("", *ELECTRA_ARMS):
        raise ValueError(f"configs/demo.py takes no argument or one of {', '.join(ELECTRA_ARMS)}, "
                         f"not {arg!r}")
    c = base_config("tiny", arch="electra" if arg else "bert")
    c.model.num_layers = 4
    c.model.hidden_size = 128
    c.model.num_heads = 4
    c.model.intermediate_size = 512
    c.model.vocab_size = 8000
    c.data.max_seq_length = 64
    c.data.max_predictions_per_seq = 10
    c.train.batch_size = 64
    c.train.num_steps = MLM_STEPS
    c.train.log_every = 25
    c.train.eval_every = 150
    c.train.eval_steps = 100  # the whole held-out set (one pass stops earlier)
    c.train.checkpoint_every = 300
    # A minutes-long budget: a high peak, a short warmup, linear decay to zero.
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 60
    c.optim.bias_correction = True  # short runs need Adam's early-step correction
    if arg in ELECTRA_ARMS:
        c.objective.embedding_sharing = ELECTRA_ARMS[arg]
        c.model.generator_hidden_size = 32
        c.model.generator_num_heads = 1
        c.model.generator_intermediate_size = 128
        c.objective.name = "electra"
        seq = c.data.max_seq_length
        mlm = flops.model_flops_per_token(c.model, seq, c.data.max_predictions_per_seq)
        rtd = flops.electra_flops_per_token(c.model, seq, max_masked(c.objective.mask_rate, seq))
        c.train.num_steps = round(MLM_STEPS * mlm / rtd)
    return c
