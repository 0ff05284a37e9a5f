"""Smoke test of `bertjax.bench` on CPU with the tiny config: it runs the real step, prints its
JSON line, skips the Hugging Face comparison cleanly without a GPU, and never imports TensorFlow.
Not a timing: throughput numbers live in docs/benchmarks.md."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = """
import atexit, runpy, sys
def report():
    tf = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tensorflow_text'))
    print('TF_MODULES=' + ','.join(tf), file=sys.stderr)
atexit.register(report)
sys.argv = ['bench'] + sys.argv[1:]
runpy.run_module('bertjax.bench', run_name='__main__')
"""


def test_bench_smoke():
    args = ["--config=configs/bert_tiny.py", "--config.train.batch_size=8",
            "--config.model.vocab_size=512", "--config.data.max_seq_length=32",
            "--config.data.max_predictions_per_seq=4", "--steps=2", "--warmup=1", "--compare=hf"]
    r = subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.strip().splitlines()[0])
    for key in ("sequences_per_second", "tokens_per_second", "step_time_s", "mfu",
                "peak_memory_bytes", "compile_time_s", "backend", "device_kind"):
        assert key in row
    assert row["impl"] == "bertjax" and row["batch"] == 8 and row["seq_len"] == 32
    assert row["sequences_per_second"] > 0 and row["backend"] == "cpu"
    assert "skipping --compare=hf" in r.stderr
    assert "TF_MODULES=\n" in r.stderr + "\n", "bench imported TensorFlow"
