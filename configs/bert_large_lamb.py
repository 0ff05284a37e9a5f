"""BERT-Large with LAMB at pod-size batches: phase 1 at sequence 128 and batch 65,536, then phase 2
at sequence 512 and batch 32,768, initialised from phase 1 (params only, a new optimizer and
schedule).

Phase 1, then phase 2 from its last checkpoint:
  bertjax pretrain --config=configs/bert_large_lamb.py:1 \\
      --workdir=gs://BUCKET/runs/large-lamb-1 --config.data.train_dir=gs://BUCKET/data/seq128
  bertjax pretrain --config=configs/bert_large_lamb.py:2 \\
      --workdir=gs://BUCKET/runs/large-lamb-2 --config.data.train_dir=gs://BUCKET/data/seq512 \\
      --config.init_from=gs://BUCKET/runs/large-lamb-1

arg = "PHASE[:SEQUENCES_PER_STEP]". PHASE is 1 or 2. SEQUENCES_PER_STEP is how many sequences the
slice runs in one forward/backward pass (all chips together); when it is below the phase's batch,
the batch is reached with train.grad_accum_steps = batch / SEQUENCES_PER_STEP (exact, see
docs/training.md), and it must divide the batch. Left out, the whole batch runs at once, as on the
paper's 1,024-chip TPUv3 pod (64 sequences per chip in phase 1). E.g. ":1" with 8,192 on a v5p-128
at 128 per chip: 8 accumulation steps.

Where the numbers come from:
- Batches 65,536 (seq 128) then 32,768 (seq 512), LAMB with the layer-wise trust ratio, BERT-Large:
  You et al., 2019 (arXiv 1904.00962), the mixed-batch run that trained BERT in 76 minutes; they
  report 8,599 iterations in all.
- Learning rates 6e-3 and 4e-3, warmup fractions 0.2843 and 0.128, steps 7,038 and 1,563
  (7,038 + 1,563 = 8,601, two more than the paper's count), 20 and 80 predictions per sequence:
  NVIDIA DeepLearningExamples, PyTorch/LanguageModeling/BERT/scripts/run_pretraining.sh (8 GPUs x
  8,192 per GPU with 128 accumulation steps in phase 1; 8 x 4,096 with 512 in phase 2).
- Weight decay 0.01 excluding LayerNorm and biases (also excluded from the trust ratio), Adam
  b1 0.9, b2 0.999, eps 1e-6, global-norm clipping at 1.0, bias correction on (LAMB's Algorithm 2
  corrects the moments; the original BERT Adam does not): the BERT recipes' values.
- The decay after warmup is linear here; NVIDIA's scheduler decays polynomially with power 0.5.
  Neither has been run at this scale with bertjax.
"""
from bertjax.config import base_config

# phase -> (sequence length, predictions per sequence, batch, learning rate, warmup fraction, steps)
PHASES = {
    1: (128, 20, 65536, 6e-3, 0.2843, 7038),
    2: (512, 80, 32768, 4e-3, 0.128, 1563),
}


def _parse(arg: str) -> tuple[int, int | None]:
    parts = (arg or "1").split(":")
    if len(parts) > 2 or parts[0] not in ("1", "2"):
        raise ValueError(f"configs/bert_large_lamb.py needs PHASE[:SEQUENCES_PER_STEP] with PHASE "
                         f"1 or 2, e.g. 1 or 2:4096; got {arg!r}")
    per_step = None
    if len(parts) == 2:
        if not parts[1].isdigit() or int(parts[1]) < 1:
            raise ValueError(f"configs/bert_large_lamb.py: SEQUENCES_PER_STEP {parts[1]!r} must be "
                             "a positive integer")
        per_step = int(parts[1])
    return int(parts[0]), per_step


def get_config(arg: str = "1"):
    phase, per_step = _parse(arg)
    seq, preds, batch, lr, warmup_fraction, steps = PHASES[phase]
    per_step = per_step or batch
    if batch % per_step:
        raise ValueError(f"configs/bert_large_lamb.py: SEQUENCES_PER_STEP={per_step} does not "
                         f"divide phase {phase}'s batch of {batch}; use a power of two")
    c = base_config("large")
    c.model.dtype = "bfloat16"
    c.data.max_seq_length = seq
    c.data.max_predictions_per_seq = preds
    c.train.batch_size = batch
    c.train.grad_accum_steps = batch // per_step
    c.train.num_steps = steps
    c.train.checkpoint_every = 200
    c.train.eval_every = 1000
    c.optim.name = "lamb"
    c.optim.learning_rate = lr
    c.optim.warmup_steps = round(warmup_fraction * steps)
    c.optim.schedule = "linear"
    c.optim.weight_decay = 0.01
    c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-6
    c.optim.clip_norm = 1.0
    c.optim.bias_correction = True
    return c
