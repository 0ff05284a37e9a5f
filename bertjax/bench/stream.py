r"""Throughput of the text stream (data.source=text, bertjax/data/stream.py) in sequences per
CPU-second, beside the prepared pipeline's (bench/data.py).

    python -m bertjax.bench.stream --corpus='demo/wiki-*.txt' --vocab=VOCAB --cores=1,2

For each core count a child process pins itself to that many cores (os.sched_setaffinity, before
TensorFlow starts; the worker processes it spawns inherit the set), builds the stream with as many
pair-building workers (1 = in the tf.data thread, no pool), takes `warmup` batches, then times
`batches` more. "per CPU-second" divides the sequences by the CPU time over that window of the
process and all its children (psutil: user + system of every thread), so other jobs on a shared
box do not count against it; wall-clock rates are given too, with the load average.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
from absl import app, flags

from bertjax.data import prepare_units as units

FLAGS = flags.FLAGS


def _cpu(proc) -> float:
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:  # a child that ended between listing and reading: its time is gone
            pass
    return total


def measure(corpus: str, vocab: str, cores: int, *, batch: int = 256, warmup: int = 10,
            batches: int = 40, seq: int = 128, predictions: int = 20, masking: str = "dynamic",
            pair_task: str = "nsp") -> dict:
    """One measurement in this process (call it in a fresh child: it pins the process)."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    # After the pinning: TensorFlow sizes its thread pools from the affinity when it loads.
    from bertjax.data import stream

    o = units.Options(input=corpus, vocab=vocab, output_dir="(bench)", max_seq_length=seq,
                      max_predictions_per_seq=predictions, masking=masking,
                      nsp=pair_task != "none", pair_task=pair_task, seed=0)
    src = stream.TextSource(o, workers=cores)
    it = src.input(batch_size=batch, shuffle_buffer=10000, validate=False)
    me = psutil.Process()
    try:
        for _ in range(warmup):
            next(it)
        cpu0, t0 = _cpu(me), time.perf_counter()
        for _ in range(batches):
            next(it)
        cpu, wall = _cpu(me) - cpu0, time.perf_counter() - t0
        sizes = it.state()["epoch_sizes"]["0"]
    finally:
        it.close()
    n = batches * batch
    return {"cores": cores, "sequences": n, "cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2),
            "seq_per_cpu_second": round(n / cpu), "seq_per_second_wall": round(n / wall),
            "epoch_sizes": sizes, "load_average": os.getloadavg()}


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(measure(FLAGS.corpus, FLAGS.vocab, int(FLAGS.cores), batch=FLAGS.batch,
                                 warmup=FLAGS.warmup, batches=FLAGS.batches,
                                 masking=FLAGS.masking)))
        return
    for cores in FLAGS.cores.split(","):
        cmd = [sys.executable, "-m", "bertjax.bench.stream", "--child", f"--cores={cores}",
               f"--corpus={FLAGS.corpus}", f"--vocab={FLAGS.vocab}", f"--batch={FLAGS.batch}",
               f"--warmup={FLAGS.warmup}", f"--batches={FLAGS.batches}",
               f"--masking={FLAGS.masking}"]
        r = subprocess.run(cmd, capture_output=True, text=True,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        if r.returncode:
            sys.exit(r.stderr[-3000:])
        print(r.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    flags.DEFINE_bool("child", False, "Run one measurement in this process.")
    flags.DEFINE_string("corpus", "", "Corpus glob(s).")
    flags.DEFINE_string("vocab", "", "Vocabulary (as prepare --vocab takes).")
    flags.DEFINE_string("cores", "1,2", "Core counts, comma-separated (one child process each).")
    flags.DEFINE_integer("batch", 256, "Batch size.")
    flags.DEFINE_integer("warmup", 10, "Batches before timing.")
    flags.DEFINE_integer("batches", 40, "Batches timed.")
    flags.DEFINE_string("masking", "dynamic", "static | dynamic")
    app.run(main)
