"""Throughput benchmark of the real pretraining step (train/step.py, the code bertjax.pretrain runs)
on synthetic batches of the batch contract. Never imports TensorFlow.

bertjax bench --config=configs/bert_base.py --config.train.batch_size=256 [--compare=hf]

Prints one JSON line per run: sequences/s, tokens/s, step time, MFU, peak device memory, compile
time, backend and device kind. --compare=hf also runs Hugging Face BertForPreTraining (PyTorch,
SDPA, bf16 autocast, fused AdamW; eager and torch.compile) on the same shapes and prints ratios.

The two sides do not run the same work: HF's BertForPreTraining computes the MLM decoder (dense,
LayerNorm and the vocabulary projection) at all S positions, bertjax at the P gathered ones only.
Every row carries its model FLOPs per sequence (train/flops.py, f = P/S for bertjax, f = 1 for HF)
next to sequences/s, and the HF rows give both ratios and a note saying so.

A run that fails (out of memory, a torch.compile error, no GPU) prints a row with "failed": true,
the exception's type and the first line of its message, every other run still goes ahead, and the
exit status is 1 when any requested run failed.

    --batch_sweep=256,512,1024   bertjax only, one row per batch, stops at the first that fails
    --profile_dir=DIR            a jax.profiler trace of the timed bertjax steps, then a summary of
                                 device time per op class (bertjax/bench/profile_summary.py)
"""
from __future__ import annotations

import gc
import json
import os
import sys
import time

import jax
import numpy as np
from absl import flags

from bertjax import cli
from bertjax.bench import profile_summary as bench_profile
from bertjax.errors import UserError
from bertjax.model import BertConfig
from bertjax.model.attention import describe
from bertjax.train import flops, mesh as mesh_lib, objectives, optim
from bertjax.train.step import make_steps


def define_flags() -> None:
    """Called by the command only (see cli.run)."""
    cli.define_config()
    flags.DEFINE_integer("steps", 20, "Timed steps per run.")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
    flags.DEFINE_enum("compare", "none", ["none", "hf"], "Also run Hugging Face on the same shapes.")
    flags.DEFINE_list("hf_modes", ["eager", "compile"], "Hugging Face modes for --compare=hf.")
    flags.DEFINE_enum("hf_device", "cuda", ["cuda", "cpu"],
                      "Where the HF side runs; cpu is for tests (bf16 autocast on the CPU).")
    flags.DEFINE_list("batch_sweep", [], "bertjax at each of these batch sizes (no --compare).")
    flags.DEFINE_string("profile_dir", "", "Write a jax.profiler trace of the timed bertjax steps here.")


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


HF_NOTE = ("HF BertForPreTraining computes MLM logits (decoder dense, LayerNorm, vocabulary "
           "projection) at all S positions; bertjax at the P gathered masked positions only. "
           "bertjax_speedup compares sequences/s on the same batches (different work); "
           "bertjax_model_flops_ratio compares model FLOP/s, counting each side's own work "
           "(f = P/S for bertjax, f = 1 for HF).")


def failure_row(impl: str, error: BaseException, **extra) -> dict:
    """What a failed run reports: its type and the first line of its message (CUDA OOM and
    torch.compile messages run to pages)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return {"impl": impl, "failed": True, "error_type": type(error).__name__,
            "error": lines[0][:500] if lines else "", **extra}


def work_fields(model_cfg, seq: int, mlm_positions: int, seqs_per_s: float | None) -> dict:
    """Model FLOPs per sequence for the positions the MLM head really runs on."""
    fpt = flops.model_flops_per_token(model_cfg, seq, mlm_positions)
    out = {"mlm_positions_per_sequence": mlm_positions,
           "model_flops_per_token": fpt, "model_flops_per_sequence": fpt * seq}
    if seqs_per_s is not None:
        out["model_flops_per_second"] = fpt * seq * seqs_per_s
    return out


def bench_bertjax(cfg, steps: int, warmup: int, batch_size: int | None = None,
                  profile_dir: str = "") -> dict:
    mesh = mesh_lib.make_mesh(cfg.mesh)
    model_cfg = BertConfig.from_dict(cfg.model.to_dict())
    tx, _ = optim.make_optimizer(cfg.optim, int(cfg.train.num_steps), model_cfg=model_cfg)
    objective = objectives.from_config(cfg)
    # A distillation objective's model holds its teacher too (random here: speed only).
    fns = make_steps(lambda: objective.build(objective.model_task, model_cfg), objective, tx,
                     mesh, grad_accum_steps=int(cfg.train.grad_accum_steps))
    b = int(batch_size or cfg.train.batch_size)
    s, p = int(cfg.data.max_seq_length), int(cfg.data.max_predictions_per_seq)
    batch = mesh_lib.make_global_batch(synthetic_batch(b, s, p, model_cfg.vocab_size), mesh)
    key = jax.random.key(0)
    state = fns.init()
    t0 = time.perf_counter()
    compiled = fns.train.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        state, m = compiled(state, batch, key)
    jax.block_until_ready(m["loss"])
    if profile_dir:
        # The compiled HLO names every op the trace times; bench_profile classifies them from it.
        os.makedirs(profile_dir, exist_ok=True)
        with open(os.path.join(profile_dir, "train_step.hlo.txt"), "w") as f:
            f.write(compiled.as_text())
        jax.profiler.start_trace(profile_dir, create_perfetto_trace=True)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, batch, key)
    jax.block_until_ready(m["loss"])
    dt = (time.perf_counter() - t0) / steps
    if profile_dir:
        jax.profiler.stop_trace()
    dev = jax.devices()[0]
    seqs = b / dt
    fpt = flops.model_flops_per_token(cfg.model.to_dict(), s, p)
    return {
        "impl": "bertjax", "model": f"L{model_cfg.num_layers}-H{model_cfg.hidden_size}",
        "seq_len": s, "batch": b, "dtype": model_cfg.dtype,
        # What the step really ran: "auto" keeps attention dropout with xla while training.
        "attention": describe(model_cfg.attention_backend, model_cfg.attention_dropout, s,
                              jax.default_backend(), relative=model_cfg.relative_attention),
        "remat": model_cfg.remat,
        "sequences_per_second": seqs, "tokens_per_second": seqs * s, "step_time_s": dt,
        "mfu": flops.mfu(seqs * s, fpt, jax.device_count(), dev.device_kind),
        "peak_memory_bytes": _peak_memory(dev), "compile_time_s": compile_s,
        "loss": float(m["loss"]), "backend": jax.default_backend(), "device_kind": dev.device_kind,
        "num_devices": jax.device_count(), "jax": jax.__version__,
        "mlm_head": "gathered: the P masked positions",
        **work_fields(cfg.model.to_dict(), s, p, seqs),
    }


def bench_hf(cfg, mode: str, steps: int, warmup: int, device: str = "cuda") -> dict:
    """HF BertForPreTraining with SDPA attention, bf16 autocast and fused AdamW."""
    import torch  # torch and transformers: only for the comparison, and not in requirements.txt
    import transformers

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU visible to torch (torch.cuda.is_available() is False)")
    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mc = cfg.model
    hf_cfg = transformers.BertConfig(
        vocab_size=mc.vocab_size, hidden_size=mc.hidden_size, num_hidden_layers=mc.num_layers,
        num_attention_heads=mc.num_heads, intermediate_size=mc.intermediate_size,
        max_position_embeddings=mc.max_position_embeddings, attn_implementation="sdpa")
    model = transformers.BertForPreTraining(hf_cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, eps=1e-6, fused=True)
    b, s, p = int(cfg.train.batch_size), int(cfg.data.max_seq_length), int(cfg.data.max_predictions_per_seq)
    np_batch = synthetic_batch(b, s, p, mc.vocab_size)
    labels = np.full((b, s), -100, np.int64)
    np.put_along_axis(labels, np_batch["masked_lm_positions"], np_batch["masked_lm_ids"], axis=1)
    t = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in np_batch.items()}
    labels = torch.tensor(labels, device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            out = model(input_ids=t["input_ids"], token_type_ids=t["segment_ids"],
                        attention_mask=t["input_mask"], labels=labels,
                        next_sentence_label=t["next_sentence_labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    if mode not in ("eager", "compile"):
        raise ValueError(f"unknown HF mode {mode!r}; use eager or compile")
    fn = torch.compile(step) if mode == "compile" else step
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = fn()
    sync()
    dt = (time.perf_counter() - t0) / steps
    kind = torch.cuda.get_device_name(0) if cuda else "cpu"
    seqs = b / dt
    fpt = flops.model_flops_per_token(mc.to_dict(), s, None)
    return {
        "impl": f"hf-{mode}", "seq_len": s, "batch": b, "sequences_per_second": seqs,
        "tokens_per_second": seqs * s, "step_time_s": dt, "first_step_s": first,
        "mfu": flops.mfu(seqs * s, fpt, 1, kind),
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated()) if cuda else None,
        "loss": float(loss.detach()), "torch": torch.__version__,
        "transformers": transformers.__version__, "device_kind": kind,
        "mlm_head": "all S positions (BertForPreTraining's decoder)",
        **work_fields(mc.to_dict(), s, s, seqs),
    }


def _free_torch_memory() -> None:
    """After a failed HF run (OOM above all), so the next mode starts from an empty device."""
    gc.collect()
    try:
        import torch  # optional (see bench_hf)

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # freeing is best effort; the failure itself is already reported
        pass


def compare_hf(cfg, ours: dict | None, modes, steps: int, warmup: int,
               device: str = "cuda") -> list[dict]:
    """One row per HF mode: its measurement with the ratios to `ours`, or a failure row."""
    rows = []
    for mode in modes:
        try:
            theirs = bench_hf(cfg, mode, steps, warmup, device)
        except Exception as e:  # OOM, compiler and CUDA errors alike: report, go on
            _free_torch_memory()
            rows.append(failure_row(f"hf-{mode}", e))
            continue
        if ours and not ours.get("failed"):
            theirs["bertjax_speedup"] = ours["sequences_per_second"] / theirs["sequences_per_second"]
            theirs["bertjax_model_flops_ratio"] = (ours["model_flops_per_second"]
                                                   / theirs["model_flops_per_second"])
        theirs["note"] = HF_NOTE
        rows.append(theirs)
    return rows


def _emit(row: dict) -> None:
    print(json.dumps(row), flush=True)
    if row.get("failed"):
        print(f"FAILED {row['impl']}: {row['error_type']}: {row['error']}", file=sys.stderr,
              flush=True)


def run_all(cfg, compare: str, modes, steps: int, warmup: int, hf_device: str = "cuda",
            batch_sweep=(), profile_dir: str = "") -> list[dict]:
    """Every requested row, printed as it comes; failures become rows, never exceptions."""
    rows = []
    if batch_sweep:
        for b in batch_sweep:
            try:
                row = bench_bertjax(cfg, steps, warmup, batch_size=int(b))
            except Exception as e:  # the batch that does not fit ends the sweep
                row = failure_row("bertjax", e, batch=int(b))
            _emit(row)
            rows.append(row)
            if row.get("failed"):
                break
        return rows
    try:
        ours = bench_bertjax(cfg, steps, warmup, profile_dir=profile_dir)
        if profile_dir:
            ours["profile"] = bench_profile.summarize(profile_dir, steps)
    except Exception as e:
        ours = failure_row("bertjax", e, batch=int(cfg.train.batch_size))
    _emit(ours)
    rows.append(ours)
    if compare == "hf":
        try:
            import torch  # noqa: F401  (optional: a missing one is a row, not a crash)
            import transformers  # noqa: F401
        except ImportError as e:
            hf_rows = [failure_row(f"hf-{mode}", e) for mode in modes]
        else:
            hf_rows = []
            for row in compare_hf(cfg, ours, modes, steps, warmup, hf_device):
                hf_rows.append(row)
        for row in hf_rows:
            _emit(row)
        rows.extend(hf_rows)
    return rows


def main(argv):
    del argv
    cfg = cli.get_config()
    if FLAGS.batch_sweep and FLAGS.compare != "none":
        raise UserError("--batch_sweep measures bertjax only; drop --compare")
    rows = run_all(cfg, FLAGS.compare, FLAGS.hf_modes, FLAGS.steps, FLAGS.warmup,
                   FLAGS.hf_device, FLAGS.batch_sweep, FLAGS.profile_dir)
    failed = [r["impl"] for r in rows if r.get("failed")]
    if failed and not FLAGS.batch_sweep:
        print(f"error: {len(failed)} of {len(rows)} requested runs failed ({', '.join(failed)}); "
              "the rows above that have no \"failed\" were measured", file=sys.stderr, flush=True)
        sys.exit(1)
    if FLAGS.batch_sweep and len(rows) == 1 and failed:
        sys.exit(1)  # not even the smallest batch fit


if __name__ == "__main__":
    cli.run(main, define_flags)
