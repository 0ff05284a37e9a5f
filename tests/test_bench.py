"""`bertjax.bench.step` on CPU with the tiny config: the real step, the Hugging Face comparison (eager,
on the CPU), failures named in the output and the exit status, the work each side does, and the
profile summary. Not a timing: throughput numbers live in docs/benchmarks.md."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from bertjax.bench import step as bench
from bertjax.bench import profile_summary as bench_profile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = """
import atexit, runpy, sys
def report():
    tf = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_text'))
    print('TF_MODULES=' + ','.join(tf), file=sys.stderr)
atexit.register(report)
sys.argv = ['bench'] + sys.argv[1:]
runpy.run_module('bertjax.bench.step', run_name='__main__')
"""
TINY = ["--config=configs/bert_tiny.py", "--config.train.batch_size=8",
        "--config.model.vocab_size=512", "--config.data.max_seq_length=32",
        "--config.data.max_predictions_per_seq=4", "--steps=2", "--warmup=1"]

# Model FLOPs by the formula of the shared reference notes, worked by hand for the tiny shape
# (L=2, d=128, d_ff=512, V=512, T=32): 6*L*(4d^2 + 2*d*d_ff) = 2,359,296; 12*L*d*T = 98,304;
# 6*(d^2 + d*V) = 491,520 times f, with f = P/T = 4/32 for bertjax and f = 1 for HF.
OURS_FLOPS_PER_SEQ = (2_359_296 + 98_304 + 491_520 * 4 / 32) * 32  # 80,609,280
HF_FLOPS_PER_SEQ = (2_359_296 + 98_304 + 491_520) * 32  # 94,371,840


def _tiny_config():
    spec = importlib.util.spec_from_file_location("bert_tiny", os.path.join(ROOT, "configs",
                                                                            "bert_tiny.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.train.batch_size = 8
    c.model.vocab_size = 512
    c.data.max_seq_length = 32
    c.data.max_predictions_per_seq = 4
    return c


def test_cli_names_a_failed_comparison_and_exits_non_zero():
    """Both HF runs fail when torch sees no GPU (hidden here with CUDA_VISIBLE_DEVICES, so the
    test means the same on a GPU runner). The bertjax row still prints, each failure is a row
    with its type and message, and the exit status says a requested comparison did not happen."""
    r = subprocess.run([sys.executable, "-c", DRIVER, *TINY, "--compare=hf"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES=""))
    assert r.returncode == 1, r.stderr
    rows = [json.loads(line) for line in r.stdout.strip().splitlines()]
    ours, *hf = rows
    for key in ("sequences_per_second", "tokens_per_second", "step_time_s", "mfu",
                "peak_memory_bytes", "compile_time_s", "backend", "device_kind"):
        assert key in ours
    assert ours["impl"] == "bertjax" and ours["batch"] == 8 and ours["seq_len"] == 32
    assert ours["sequences_per_second"] > 0 and ours["backend"] == "cpu"
    assert ours["model_flops_per_sequence"] == pytest.approx(OURS_FLOPS_PER_SEQ)
    assert [h["impl"] for h in hf] == ["hf-eager", "hf-compile"]
    for h in hf:
        assert h["failed"] and h["error_type"] == "RuntimeError" and "CUDA" in h["error"]
    assert "FAILED hf-eager: RuntimeError" in r.stderr
    assert "2 of 3 requested runs failed" in r.stderr
    assert "skipping" not in r.stderr + r.stdout
    assert "TF_MODULES=\n" in r.stderr + "\n", "bench imported TensorFlow"


def test_hf_comparison_runs_and_a_compile_failure_is_reported(monkeypatch, tmp_path):
    """The HF code path runs for real on the CPU in eager mode (so its first run on a GPU is not
    its first run); torch.compile takes ~50 s on this CPU, so its failure path is exercised with
    an injected error instead. Also profiles the bertjax step and summarises the trace."""
    import torch

    def broken_compile(fn, *a, **k):
        raise RuntimeError("inductor exploded: fake failure\nsecond line of a long traceback")

    monkeypatch.setattr(torch, "compile", broken_compile)
    rows = bench.run_all(_tiny_config(), "hf", ["eager", "compile"], steps=2, warmup=1,
                         hf_device="cpu", profile_dir=str(tmp_path / "prof"))
    ours, eager, compiled = rows
    assert not ours.get("failed") and not eager.get("failed")
    assert ours["mlm_positions_per_sequence"] == 4 and eager["mlm_positions_per_sequence"] == 32
    assert ours["model_flops_per_sequence"] == pytest.approx(OURS_FLOPS_PER_SEQ)
    assert eager["model_flops_per_sequence"] == pytest.approx(HF_FLOPS_PER_SEQ)
    assert eager["sequences_per_second"] > 0 and eager["loss"] > 0
    assert eager["bertjax_speedup"] == pytest.approx(
        ours["sequences_per_second"] / eager["sequences_per_second"])
    assert eager["bertjax_model_flops_ratio"] == pytest.approx(
        eager["bertjax_speedup"] * OURS_FLOPS_PER_SEQ / HF_FLOPS_PER_SEQ)
    assert "all S positions" in eager["note"] and "gathered" in eager["note"]
    assert compiled == {"impl": "hf-compile", "failed": True, "error_type": "RuntimeError",
                        "error": "inductor exploded: fake failure"}
    prof = ours["profile"]
    assert prof["timed_ms_per_step"] > 0 and prof["ms_per_step"]["matmul"] > 0
    assert sum(prof["share"].values()) == pytest.approx(1.0, abs=1e-3)


def test_batch_sweep_stops_at_the_first_failure(monkeypatch):
    calls = []

    def fake(cfg, steps, warmup, batch_size=None, profile_dir=""):
        calls.append(batch_size)
        if batch_size > 16:
            raise MemoryError("RESOURCE_EXHAUSTED: out of memory allocating 123 bytes\nmore")
        return {"impl": "bertjax", "batch": batch_size, "sequences_per_second": 1.0}

    monkeypatch.setattr(bench, "bench_bertjax", fake)
    rows = bench.run_all(_tiny_config(), "none", [], 1, 0, batch_sweep=["8", "16", "32", "64"])
    assert calls == [8, 16, 32]
    assert rows[-1] == {"impl": "bertjax", "failed": True, "error_type": "MemoryError",
                        "error": "RESOURCE_EXHAUSTED: out of memory allocating 123 bytes",
                        "batch": 32}


HLO = """HloModule jit_train_step

%fused_dot (p0: f32[4,8], p1: f32[8,8]) -> f32[4,8] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,8]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,8]{1,0} dot(%p0, %p1), metadata={op_name="jit(train_step)/jvp(bsd,dk->bsk)/dot_general"}
}

%fused_norm (p0: f32[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  ROOT %rsqrt.2 = f32[4]{0} rsqrt(%p0), metadata={op_name="jit(train_step)/jvp()/rsqrt"}
}

ENTRY %main (a: f32[4,8], b: f32[8,8]) -> f32[4,8] {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,8]{1,0} parameter(1)
  %fusion.1 = f32[4,8]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused_dot
  %scores = f32[2,2,4,4]{3,2,1,0} dot(%a, %b), metadata={op_name="jit(train_step)/jvp(bqhd,bkhd->bhqk)/dot_general"}
  %fmha = (bf16[2,4,2,8]{3,2,1,0}, u8[0]{0}) custom-call(%a, %b), custom_call_target="__cudnn$fmhaSoftmax"
  %gemm = (f32[4,8]{1,0}, s8[4]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul"
  %fusion.2 = f32[4]{0} fusion(%a), kind=kLoop, calls=%fused_norm, metadata={op_name="jit(train_step)/jvp()/rsqrt"}
  %update = f32[8,8]{1,0} multiply(%b, %b), metadata={op_name="jit(train_step)/mul"}
  %gelu = f32[4,8]{1,0} multiply(%a, %a), metadata={op_name="jit(train_step)/jvp()/mul"}
  %bits = u32[4]{0} add(%a, %a), metadata={op_name="jit(train_step)/jvp(jit(_bernoulli))/jit(_uniform)/add"}
  %ar = f32[8,8]{1,0} all-reduce-start(%b), to_apply=%fused_norm
  ROOT %out = f32[4,8]{1,0} add(%fusion.1, %gelu)
}
"""


def test_hlo_op_classes_by_hand():
    comps, instrs = bench_profile.parse_hlo(HLO)
    got = {n: bench_profile.classify(instrs[n], comps) for n in
           ("fusion.1", "scores", "fmha", "gemm", "fusion.2", "update", "gelu", "bits", "ar")}
    assert got == {"fusion.1": "matmul", "scores": "attention", "fmha": "attention",
                   "gemm": "matmul", "fusion.2": "layernorm", "update": "optimizer",
                   "gelu": "elementwise_other", "bits": "dropout_rng", "ar": "collectives"}
