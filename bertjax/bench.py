"""Throughput benchmark of the real pretraining step (train/step.py, the code bertjax.pretrain runs)
on synthetic batches of the batch contract. Never imports TensorFlow.

python -m bertjax.bench --config=configs/bert_base.py --config.train.batch_size=256 [--compare=hf]

Prints one JSON line per run: sequences/s, tokens/s, step time, MFU, peak device memory, compile
time, backend and device kind. --compare=hf also runs Hugging Face BertForPreTraining (PyTorch,
SDPA, bf16 autocast, fused AdamW; eager and torch.compile) on the same shapes and prints ratios.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
from absl import flags

from bertjax import cli

cli.define_config()
flags.DEFINE_integer("steps", 20, "Timed steps per run.")
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
flags.DEFINE_enum("compare", "none", ["none", "hf"], "Also run Hugging Face on the same shapes.")
flags.DEFINE_list("hf_modes", ["eager", "compile"], "Hugging Face modes for --compare=hf.")
FLAGS = flags.FLAGS


def synthetic_batch(batch: int, seq: int, preds: int, vocab: int, seed: int = 0) -> dict:
    """Full-length sequences (no padding) so every implementation does the same work."""
    rng = np.random.default_rng(seed)
    positions = np.sort(np.stack([rng.choice(np.arange(1, seq), preds, replace=False)
                                  for _ in range(batch)]), axis=1)
    seg = (np.arange(seq)[None] >= seq // 2).astype(np.int32).repeat(batch, 0)
    return {
        "input_ids": rng.integers(5, vocab, (batch, seq)).astype(np.int32),
        "segment_ids": seg,
        "input_mask": np.ones((batch, seq), np.int32),
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": rng.integers(5, vocab, (batch, preds)).astype(np.int32),
        "masked_lm_weights": np.ones((batch, preds), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (batch,)).astype(np.int32),
    }


def _peak_memory(device) -> int | None:
    try:
        stats = device.memory_stats()
    except Exception:  # CPU backends may not implement it
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def bench_bertjax(cfg, steps: int, warmup: int) -> dict:
    import jax

    from bertjax.model import BertConfig, build_model
    from bertjax.model.attention import resolve_backend
    from bertjax.train import flops, mesh as mesh_lib, objectives, optim
    from bertjax.train.step import make_steps

    mesh = mesh_lib.make_mesh(cfg.mesh)
    model_cfg = BertConfig.from_dict(cfg.model.to_dict())
    tx, _ = optim.make_optimizer(cfg.optim, int(cfg.train.num_steps))
    fns = make_steps(lambda: build_model("pretraining", model_cfg), objectives.Pretraining(), tx,
                     mesh, grad_accum_steps=int(cfg.train.grad_accum_steps))
    b, s, p = int(cfg.train.batch_size), int(cfg.data.max_seq_length), int(cfg.data.max_predictions_per_seq)
    batch = mesh_lib.make_global_batch(synthetic_batch(b, s, p, model_cfg.vocab_size), mesh)
    key = jax.random.key(0)
    state = fns.init()
    t0 = time.perf_counter()
    compiled = fns.train.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, m = compiled(state, batch, key)
    jax.block_until_ready(m["loss"])
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch, key)
    jax.block_until_ready(m["loss"])
    dt = (time.perf_counter() - t0) / steps
    dev = jax.devices()[0]
    seqs = b / dt
    fpt = flops.model_flops_per_token(cfg.model.to_dict(), s, p)
    return {
        "impl": "bertjax", "model": f"L{model_cfg.num_layers}-H{model_cfg.hidden_size}",
        "seq_len": s, "batch": b, "dtype": model_cfg.dtype,
        "attention": resolve_backend(model_cfg.attention_backend), "remat": model_cfg.remat,
        "sequences_per_second": seqs, "tokens_per_second": seqs * s, "step_time_s": dt,
        "mfu": flops.mfu(seqs * s, fpt, jax.device_count(), dev.device_kind),
        "peak_memory_bytes": _peak_memory(dev), "compile_time_s": compile_s,
        "loss": float(m["loss"]), "backend": jax.default_backend(), "device_kind": dev.device_kind,
        "num_devices": jax.device_count(), "jax": jax.__version__,
    }


def bench_hf(cfg, mode: str, steps: int, warmup: int) -> dict:
    """HF BertForPreTraining with SDPA attention, bf16 autocast and fused AdamW."""
    import torch
    import transformers

    if not torch.cuda.is_available():
        raise RuntimeError("needs a CUDA GPU")
    mc = cfg.model
    hf_cfg = transformers.BertConfig(
        vocab_size=mc.vocab_size, hidden_size=mc.hidden_size, num_hidden_layers=mc.num_layers,
        num_attention_heads=mc.num_heads, intermediate_size=mc.intermediate_size,
        max_position_embeddings=mc.max_position_embeddings, attn_implementation="sdpa")
    model = transformers.BertForPreTraining(hf_cfg).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, eps=1e-6, fused=True)
    b, s, p = int(cfg.train.batch_size), int(cfg.data.max_seq_length), int(cfg.data.max_predictions_per_seq)
    np_batch = synthetic_batch(b, s, p, mc.vocab_size)
    labels = np.full((b, s), -100, np.int64)
    np.put_along_axis(labels, np_batch["masked_lm_positions"], np_batch["masked_lm_ids"], axis=1)
    t = {k: torch.tensor(v, dtype=torch.long, device="cuda") for k, v in np_batch.items()}
    labels = torch.tensor(labels, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(input_ids=t["input_ids"], token_type_ids=t["segment_ids"],
                        attention_mask=t["input_mask"], labels=labels,
                        next_sentence_label=t["next_sentence_labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    fn = torch.compile(step) if mode == "compile" else step
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = fn()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    return {
        "impl": f"hf-{mode}", "seq_len": s, "batch": b, "sequences_per_second": b / dt,
        "tokens_per_second": b * s / dt, "step_time_s": dt, "first_step_s": first,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated()), "loss": float(loss),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "device_kind": torch.cuda.get_device_name(0),
    }


def main(argv):
    del argv
    cfg = cli.get_config()
    ours = bench_bertjax(cfg, FLAGS.steps, FLAGS.warmup)
    print(json.dumps(ours), flush=True)
    if FLAGS.compare != "hf":
        return
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        print(f"skipping --compare=hf: {e.name} is not installed", file=sys.stderr)
        return
    for mode in FLAGS.hf_modes:
        try:
            theirs = bench_hf(cfg, mode, FLAGS.steps, FLAGS.warmup)
        except RuntimeError as e:
            print(f"skipping --compare=hf ({mode}): {e}", file=sys.stderr)
            continue
        theirs["bertjax_speedup"] = ours["sequences_per_second"] / theirs["sequences_per_second"]
        print(json.dumps(theirs), flush=True)


if __name__ == "__main__":
    cli.run(main)
