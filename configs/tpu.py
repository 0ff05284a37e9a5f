"""BERT pretraining on one Cloud TPU slice: bf16 compute, splash attention, mesh and batch to fit.

arg = "SLICE[:PRESET[:512]]": SLICE is v4-N, v5e-N (or v5litepod-N), v5p-N or v6e-N; PRESET is
base (default) or large; ":512" is phase 2 (sequence 512, 80 predictions per sequence).

Run on every worker of the slice through the launcher (docs/tpu.md has the whole path):
  python -m launch.tpu run --name=bert-v4-8 --zone=us-central2-b --project=PROJECT \\
      --workdir=gs://BUCKET/runs/base-v4-8 -- bertjax.pretrain --config=configs/tpu.py:v4-8 \\
      --config.data.train_dir=gs://BUCKET/data/seq128/train \\
      --config.data.eval_dir=gs://BUCKET/data/seq128/eval

Choices (none of them measured on a TPU):
- Sequences per chip (PER_CHIP_BATCH): 64, and 32 for Large at length 512 (16 on 16 GiB v5e
  chips). A 4-chip v4-8, v5p-8, v5e-4 or v6e-4 thus runs the paper's batch of 256 at both lengths
  for Base, and at length 128 for Large. Compiled-verified: `bertjax plan` compiled these batches
  ahead of time and found them to fit (compiled memory, not a TPU run; docs/tpu.md, "Will it
  fit", has the table, with the largest per-chip batch that fits where a sweep has found it, and
  docs/plan/ the raw rows, which tests/test_tpu_recipes.py checks these numbers against), on the
  single-host v4-8, v5e-4, v5p-8, v6e-4, v5e-8 and v6e-8 and the multi-host v4-16, v4-32,
  v5e-16, v5p-16 and v6e-16. Not compiled: every other slice (e.g. v5p-32), which gets the same
  per-chip batch.
- Bigger slices keep the per-chip batch, so the global batch grows with the slice. The learning
  rate follows the square-root rule for Adam from 1e-4 at 256, and steps (total, warmup) shrink
  in proportion so the run sees as many sequences as the 256-batch recipe.
- Splash attention has no attention-probability dropout, so attention_dropout is 0 here; for the
  original's exact regularisation use --config.model.attention_backend=xla
  --config.model.attention_dropout=0.1 (slower).
- Mesh: data parallel over every chip (data=-1). On multi-host slices fsdp is as large as one VM's
  chips, sharding the fp32 parameters and Adam moments that many ways; one host stays purely data
  parallel, Large on 16 GiB v5e included (fsdp 4 there planned more memory and about 20 times the
  collective bytes). tensor=1, since BERT's matrices are too small for tensor parallelism to pay
  for its collectives.
"""
import math

from bertjax.config import base_config
from launch.slices import parse_slice

REFERENCE_BATCH = 256
# (preset, sequence length) -> sequences per chip with >= 32 GiB of HBM, and with 16 GiB.
PER_CHIP_BATCH = {
    ("base", 128): (64, 64),
    ("large", 128): (64, 64),
    ("base", 512): (64, 64),
    ("large", 512): (32, 16),
}
PHASE2_STEPS_AT_REFERENCE = 100_000
SMALL_HBM_GIB = 16


def _parse(arg: str):
    parts = (arg or "").split(":")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"configs/tpu.py needs SLICE[:PRESET[:512]], e.g. v4-8 or v4-32:large; "
                         f"got {arg!r}")
    sl = parse_slice(parts[0])
    preset = parts[1] if len(parts) > 1 and parts[1] else "base"
    if preset not in ("base", "large"):
        raise ValueError(f"configs/tpu.py preset {preset!r}: use base or large")
    seq = 128
    if len(parts) == 3:
        if parts[2] != "512":
            raise ValueError(
                f"configs/tpu.py phase {parts[2]!r}: use 512 for phase 2 or leave it out")
        seq = 512
    return sl, preset, seq


def fsdp_size(sl) -> int:
    # One host: data parallel even for Large on 16 GiB v5e. fsdp over its 4 chips compiled to
    # about 16 GiB of collectives per step and more memory than fsdp 1 (docs/tpu.md).
    return sl.chips_per_vm if sl.multi_host else 1


def get_config(arg: str = "v4-8"):
    sl, preset, seq = _parse(arg)
    c = base_config(preset)
    c.model.dtype = "bfloat16"
    c.model.attention_backend = "splash"
    # The splash kernel has no dropout on attention probabilities; saying so in the config keeps the
    # saved run config truthful (hidden dropout stays 0.1).
    c.model.attention_dropout = 0.0

    roomy, small = PER_CHIP_BATCH[(preset, seq)]
    batch = (small if sl.spec.hbm_gib <= SMALL_HBM_GIB else roomy) * sl.chips
    scale = REFERENCE_BATCH / batch
    steps_at_reference = c.train.num_steps
    if seq == 512:
        c.data.max_seq_length = 512
        c.data.max_predictions_per_seq = 80
        steps_at_reference = PHASE2_STEPS_AT_REFERENCE
    c.train.batch_size = batch
    c.train.num_steps = max(1, round(steps_at_reference * scale))
    c.optim.warmup_steps = max(1, round(c.optim.warmup_steps * scale))
    c.optim.learning_rate = c.optim.learning_rate * math.sqrt(batch / REFERENCE_BATCH)

    c.mesh.data = -1
    c.mesh.fsdp = fsdp_size(sl)
    c.mesh.tensor = 1
    return c
