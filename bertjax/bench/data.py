r"""Benchmarks of the data path: `prepare` throughput and peak memory, pipeline throughput.

    bertjax bench-data --what=prepare --corpus='demo_out/corpus/wiki-*.txt' \
        --vocab=demo_out/vocab --workdir=/tmp/bench_data --scale=10
    bertjax bench-data --what=pipeline --workdir=/tmp/bench_data --cores=1
    bertjax bench-data --what=prepare ... --runners=local,beam

prepare: runs `bertjax prepare` as a child process on the corpus and on the corpus
copied `scale` times, sampling the resident memory of the whole process tree (psutil, every 20 ms),
and reports MB of raw text per second per worker and the peak memory of both runs; with
--runners=local,beam the Beam DirectRunner does the same two runs, and its shards' hashes are
compared with the local runner's.
pipeline: prepares the corpus at S=128 with dynamic masking (once), pins this process to `cores`
CPU cores before TensorFlow starts, and reports sequences per second per core after a warm-up.
Without --corpus a synthetic corpus is generated (`synthetic_corpus`, also used by the tests).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
from absl import flags

from bertjax.errors import UserError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_SUFFIXES = "abcde"


def synthetic_corpus(out_dir: str, *, files: int = 3, docs_per_file: int = 50,
                     sentences: tuple[int, int] = (2, 12), words: tuple[int, int] = (3, 15),
                     vocab_words: int = 400, continuation_share: float = 0.2, seed: int = 0,
                     one_sentence_docs: bool = False) -> tuple[str, str]:
    """Writes vocab.txt and corpus files c0000.txt ... in the original format (one sentence per line,
    a blank line between documents) and returns (corpus glob, vocab path).

    Words are "w<k>", a share of them followed by one to three letters that WordPiece splits into
    "##a".."##e" continuation pieces, so whole-word masking has multi-piece words to group. Every
    token in the text is in the vocabulary (no [UNK])."""
    rng = np.random.default_rng(seed)
    os.makedirs(out_dir, exist_ok=True)
    stems = [f"w{i}" for i in range(vocab_words)]
    vocab = [*SPECIALS, *stems, *("##" + c for c in _SUFFIXES)]
    with open(os.path.join(out_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    # A fixed pool of word forms (a stem, sometimes with continuation letters) drawn from by index:
    # building each word anew in Python made generating a test corpus the slowest part of a test.
    tails = rng.integers(1, 4, 8 * vocab_words) * (rng.random(8 * vocab_words) < continuation_share)
    forms = np.array([stems[i % vocab_words] + "".join(_SUFFIXES[j] for j in rng.integers(0, 5, t))
                      for i, t in enumerate(tails)], dtype=object)
    for fi in range(files):
        lines = []
        for _ in range(docs_per_file):
            n_sent = 1 if one_sentence_docs else int(rng.integers(sentences[0], sentences[1] + 1))
            counts = rng.integers(words[0], words[1] + 1, n_sent)
            picks = rng.integers(0, len(forms), int(counts.sum()))
            for chunk in np.split(forms[picks], np.cumsum(counts)[:-1]):
                lines.append(" ".join(chunk))
            lines.append("")
        with open(os.path.join(out_dir, f"c{fi:04d}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return os.path.join(out_dir, "c*.txt"), os.path.join(out_dir, "vocab.txt")


# --------------------------------------------------------------------------------------- prepare


# Command-line marks of a worker process: the local runner's spawned pool, Beam's SDK harness.
_WORKER_MARKS = ("multiprocessing", "sdk_worker_main")


def _tree_rss(proc, cpu: dict | None = None) -> tuple[int, int, int]:
    """(sum, max, max over worker processes) resident bytes over a process and its descendants;
    records each member's CPU seconds so far in `cpu` (pid -> seconds)."""
    total = biggest = worker = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    for p in members:
        try:
            rss = p.memory_info().rss
            if cpu is not None:
                t = p.cpu_times()
                cpu[p.pid] = max(cpu.get(p.pid, 0.0), t.user + t.system)
            is_worker = p is not proc and any(m in " ".join(p.cmdline()) for m in _WORKER_MARKS)
        except psutil.NoSuchProcess:
            continue
        total += rss
        biggest = max(biggest, rss)
        if is_worker:
            worker = max(worker, rss)
    return total, biggest, worker


def run_prepare(corpus_glob: str, vocab: str, out_dir: str, *, workers: int,
                extra: tuple[str, ...] = ()) -> dict:
    """Runs prepare in a child process; returns wall seconds, peak memory and its metadata."""
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "bertjax.data.prepare", f"--input={corpus_glob}",
           f"--vocab={vocab}", f"--output_dir={out_dir}", f"--num_workers={workers}", *extra]
    peak = {"tree": 0, "process": 0, "worker": 0}
    cpu: dict = {}
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = psutil.Process(child.pid)
    done = threading.Event()

    def sample():
        while not done.is_set():
            total, biggest, worker = _tree_rss(proc, cpu)
            peak["tree"] = max(peak["tree"], total)
            peak["process"] = max(peak["process"], biggest)
            peak["worker"] = max(peak["worker"], worker)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log, _ = child.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"prepare failed ({child.returncode}):\n{log[-3000:]}")
    with open(os.path.join(out_dir, "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    dones = [json.load(open(p, encoding="utf-8"))
             for p in glob.glob(os.path.join(out_dir, "*.done"))]
    return {"wall_s": wall, "peak_tree_rss_mb": peak["tree"] / 2**20,
            "peak_process_rss_mb": peak["process"] / 2**20,
            "peak_worker_rss_mb": peak["worker"] / 2**20,
            # Sampled every 20 ms, so the last moments of a process may be missed: a lower bound.
            "tree_cpu_seconds": sum(cpu.values()),
            "shard_seconds": sum(d["stats"]["seconds"] for d in dones),
            "shard_cpu_seconds": sum(d["stats"]["cpu_seconds"] for d in dones),
            "instances": meta["stats"]["instances"], "metadata": meta}


def scaled_copy(corpus_glob: str, out_dir: str, scale: int) -> str:
    """The corpus with every file repeated `scale` times over: as many files, each `scale` times
    larger, so a worker streams a larger file rather than getting more of them."""
    os.makedirs(out_dir, exist_ok=True)
    for path in sorted(glob.glob(corpus_glob)):
        with open(path, "rb") as f:
            text = f.read()
        if not text.endswith(b"\n\n"):
            text = text.rstrip(b"\n") + b"\n\n"
        with open(os.path.join(out_dir, os.path.basename(path)), "wb") as f:
            for _ in range(scale):
                f.write(text)
    return os.path.join(out_dir, os.path.basename(corpus_glob))


def _shard_hashes(out_dir: str) -> dict:
    return {os.path.basename(p): json.load(open(p, encoding="utf-8"))["sha256"]
            for p in glob.glob(os.path.join(out_dir, "*.done"))}


def bench_prepare(corpus_glob: str, vocab: str, workdir: str, *, workers: int, scale: int,
                  runners: tuple[str, ...] = ("local",)) -> dict:
    """Each runner on the corpus and on its `scale`-times copy. Keys: x1, xSCALE for the local
    runner, beam_x1, beam_xSCALE for the Beam DirectRunner (same workers, same settings)."""
    files = sorted(glob.glob(corpus_glob))
    size = sum(os.path.getsize(p) for p in files)
    extra = ("--max_seq_length=128", "--max_predictions_per_seq=20", "--masking=static",
             "--dupe_factor=1", "--seed=1")
    big_glob = scaled_copy(corpus_glob, os.path.join(workdir, f"corpus_x{scale}"), scale)
    used = min(workers, len(files))
    out, hashes = {}, {}
    for runner in runners:
        tag = "" if runner == "local" else f"{runner}_"
        runs = []
        for name, glob_, nbytes in (("x1", corpus_glob, size), (f"x{scale}", big_glob,
                                                                 size * scale)):
            out_dir = os.path.join(workdir, f"prep_{tag}{name}")
            run = run_prepare(glob_, vocab, out_dir, workers=workers,
                              extra=(*extra, f"--runner={runner}"))
            hashes[tag + name] = _shard_hashes(out_dir)
            runs.append(run)
            out[tag + name] = {
                "runner": runner, "input_mb": nbytes / 1e6, "files": len(files), "workers": used,
                "wall_s": round(run["wall_s"], 2), "instances": run["instances"],
                "mb_per_s_per_worker_wall": round(nbytes / 1e6 / run["wall_s"] / used, 3),
                "mb_per_s_per_worker_in_shards": round(nbytes / 1e6 / run["shard_seconds"], 3),
                # Per CPU-second a worker actually got: what a core does when it is not shared.
                "mb_per_cpu_s_in_shards": round(nbytes / 1e6 / run["shard_cpu_seconds"], 3),
                # Per CPU-second of every process of the run (launcher, runner, workers,
                # validation pass): what the whole job costs in cores.
                "mb_per_cpu_s_whole_run": round(nbytes / 1e6 / run["tree_cpu_seconds"], 3),
                "peak_tree_rss_mb": round(run["peak_tree_rss_mb"], 1),
                "peak_process_rss_mb": round(run["peak_process_rss_mb"], 1),
                "peak_worker_rss_mb": round(run["peak_worker_rss_mb"], 1),
            }
            if tag:
                out[tag + name]["same_shards_as_local"] = hashes[tag + name] == hashes.get(name)
        out[f"{tag}peak_tree_ratio"] = round(runs[1]["peak_tree_rss_mb"] /
                                             runs[0]["peak_tree_rss_mb"], 3)
    return out


# -------------------------------------------------------------------------------------- pipeline


_PIPELINE_CHILD = r"""
import json, os, sys, time
cores, data_dir, batch, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
os.sched_setaffinity(0, set(range(cores)))  # before TensorFlow starts its thread pools
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from bertjax.data import pipeline
it = pipeline.make_pretrain_input(data_dir, batch_size=batch, seed=0, shuffle_buffer=10000)
for _ in range(30):
    next(it)
n, start, cpu = 0, time.perf_counter(), time.process_time()
while time.perf_counter() - start < seconds:
    next(it)
    n += 1
wall, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seq_per_s": n * batch / wall, "seq_per_cpu_s": n * batch / cpu, "batches": n}))
"""


def bench_pipeline(data_dir: str, *, cores: int, batch: int, seconds: float) -> dict:
    cmd = [sys.executable, "-c", _PIPELINE_CHILD, str(cores), data_dir, str(batch), str(seconds)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"pipeline benchmark failed:\n{res.stderr[-3000:]}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    # seq_per_cpu_s counts the CPU time of all the process's threads (TensorFlow's pools, the
    # Python loop): sequences per core-second actually used, robust to other jobs on the box.
    return {"cores": cores, "batch": batch, "seq_per_s": round(got["seq_per_s"]),
            "seq_per_s_per_core": round(got["seq_per_s"] / cores),
            "seq_per_cpu_s": round(got["seq_per_cpu_s"])}


# ------------------------------------------------------------------------------------------ main


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])}; all options are --flags")
    f = flags.FLAGS
    os.makedirs(f.workdir, exist_ok=True)
    corpus_glob, vocab = f.corpus, f.vocab
    if not corpus_glob:
        corpus_glob, vocab = synthetic_corpus(os.path.join(f.workdir, "synthetic"), files=4,
                                              docs_per_file=2000, sentences=(5, 40),
                                              words=(5, 30), vocab_words=20000)
    elif not vocab:
        raise UserError("--corpus needs --vocab (a vocab.txt or its directory)")
    report = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
              "corpus": corpus_glob}
    if f.what in ("prepare", "all"):
        report["prepare"] = bench_prepare(corpus_glob, vocab, f.workdir, workers=f.workers,
                                          scale=f.scale, runners=tuple(f.runners.split(",")))
    if f.what in ("pipeline", "all"):
        results = {}
        for wwm in (False, True):
            data_dir = os.path.join(f.workdir, "pipe_wwm" if wwm else "pipe")
            if not os.path.exists(os.path.join(data_dir, "metadata.json")):
                run_prepare(corpus_glob, vocab, data_dir, workers=f.workers, extra=(
                    "--max_seq_length=128", "--max_predictions_per_seq=20", "--masking=dynamic",
                    "--dupe_factor=1", f"--whole_word_masking={wwm}"))
            name = "dynamic_wwm" if wwm else "dynamic"
            results[name] = [bench_pipeline(data_dir, cores=c, batch=f.batch, seconds=f.seconds)
                             for c in sorted({1, f.cores})]
        report["pipeline"] = results
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    from absl import app, flags

    from bertjax.errors import user_errors_exit

    flags.DEFINE_string("what", "all", "prepare | pipeline | all")
    flags.DEFINE_string("workdir", "/tmp/bertjax_bench_data", "Scratch directory.")
    flags.DEFINE_string("corpus", "", "Corpus glob; empty = a generated corpus.")
    flags.DEFINE_string("vocab", "", "Vocabulary for --corpus.")
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "prepare --num_workers.")
    flags.DEFINE_integer("scale", 10, "The larger corpus is this many times the first.")
    flags.DEFINE_string("runners", "local", "prepare runners to measure: local, beam or both "
                        "(local,beam).")
    flags.DEFINE_integer("cores", os.cpu_count() or 1, "Also measure the pipeline on this many.")
    flags.DEFINE_integer("batch", 256, "Pipeline batch size.")
    flags.DEFINE_float("seconds", 10.0, "Pipeline measuring time per setting.")
    sys.exit(app.run(user_errors_exit(main)))
