"""Small real pretraining data for the trainer tests: a generated corpus, a vocab, `prepare`."""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the cat dog bird sat on mat tree ran fast slow red blue green house car road river hill "
         "sun moon star big small old new happy sad city lake boat ship rain snow wind cloud field "
         "stone wall door window table chair book paper pen ink").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SEQ, PREDS = 32, 5


def write_corpus(path: str, n_docs: int = 40, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_docs):
            topic = rng.sample(WORDS, 8)  # documents differ, so next-sentence is learnable
            for _ in range(rng.randint(3, 7)):
                n = rng.randint(4, 10)
                f.write(" ".join(rng.choice(topic) for _ in range(n)).capitalize() + ".\n")
            f.write("\n")


def write_vocab(path: str) -> int:
    tokens = SPECIALS + sorted(set(WORDS)) + [".", ","]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(tokens) + "\n")
    return len(tokens)


def prepare(root: str, *, n_files: int = 1, masking: str = "dynamic", dupe_factor: int = 2,
            seed: int = 0, nsp: bool = True) -> tuple[str, int]:
    """Returns (data_dir, vocab_size)."""
    from bertjax.data import prepare as prep

    os.makedirs(root, exist_ok=True)
    for i in range(n_files):
        write_corpus(os.path.join(root, f"corpus-{i}.txt"), seed=seed + i)
    vocab = os.path.join(root, "vocab.txt")
    size = write_vocab(vocab)
    out = os.path.join(root, "data")
    prep.prepare(prep.Options(input=os.path.join(root, "corpus-*.txt"), vocab=vocab, output_dir=out,
                              max_seq_length=SEQ, max_predictions_per_seq=PREDS, masking=masking,
                              dupe_factor=dupe_factor, num_workers=1, seed=seed, nsp=nsp))
    return out, size


def overrides(data_dir: str, vocab_size: int, **kw) -> list[str]:
    """Command-line overrides for a tiny, fast pretraining run on `data_dir`."""
    values = {
        "data.train_dir": data_dir, "data.max_seq_length": SEQ,
        "data.max_predictions_per_seq": PREDS, "data.shuffle_buffer": 64,
        "model.vocab_size": vocab_size, "model.hidden_size": 32, "model.num_heads": 2,
        "model.intermediate_size": 64, "model.num_layers": 2, "model.max_position_embeddings": 64,
        "train.batch_size": 16, "train.num_steps": 12, "train.log_every": 1,
        "train.checkpoint_every": 4, "train.eval_every": 1000, "train.plot": False,
        "optim.warmup_steps": 2, "optim.learning_rate": 1e-3,
    }
    values.update(kw)
    return [f"--config.{k}={v}" for k, v in values.items()]


def apply(cfg, args: list[str]):
    """Applies `--config.a.b=v` strings to a ConfigDict in-process (tests that skip the CLI)."""
    cfg.unlock()
    for a in args:
        key, value = a[len("--config."):].split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        old = node[leaf]
        node[leaf] = type(old)(value) if not isinstance(old, bool) else value.lower() == "true"
    cfg.lock()
    return cfg


# LLVM at -O0 in XLA's CPU backend: the suite's tiny programs compile about 40% faster (a
# DistilBERT fine-tune test: 45.8 -> 33.5 CPU-s from a cold cache) and run no slower that
# matters. It changes only the machine-code optimiser, not XLA's HLO passes. conftest.py sets
# it for the test processes; every subprocess gets it through xla_flags.
FAST_CPU_COMPILE = "--xla_backend_optimization_level=0"


def xla_flags(devices: int | None = None) -> str:
    """XLA_FLAGS for a test subprocess: `devices` virtual CPU devices (None: JAX's own count)."""
    count = f"--xla_force_host_platform_device_count={devices} " if devices else ""
    return count + FAST_CPU_COMPILE


def run_pretrain(workdir: str, args: list[str], *, devices: int = 8, env_extra=None, wait=True,
                 timeout=300, config: str = "configs/bert_tiny.py"):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(devices))
    env.update(env_extra or {})
    cmd = [sys.executable, "-m", "bertjax.pretrain", f"--config={config}",
           f"--workdir={workdir}", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def losses(workdir: str) -> dict[int, float]:
    from bertjax.train.metrics import read_jsonl

    steps, values = read_jsonl(os.path.join(workdir, "metrics.jsonl"))["train/loss"]
    return {int(s): float(v) for s, v in zip(steps, values)}


# TensorFlow's native start-up log (oneDNN, "could not find cuda drivers", cuInit) reaches stderr
# from C++ before absl is initialised and ignores TF_CPP_MIN_LOG_LEVEL on this TF: not our output.
_TF_NATIVE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog)")


def error_lines(stderr: str) -> list[str]:
    """The non-empty stderr lines a CLI printed itself (TensorFlow's native log left out)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not _TF_NATIVE.match(ln)]


# ELECTRA at the tiny sizes above: E = 16 < H = 32 (both networks project), a 16-wide generator.
ELECTRA = {"model.embedding_size": 16, "model.generator_hidden_size": 16,
           "model.generator_num_heads": 1, "model.generator_intermediate_size": 32}
