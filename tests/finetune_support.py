"""Shared pieces of the fine-tuning tests: a tiny "pretrained" checkpoint on the toy vocabulary,
the recipes loaded as the CLI loads them, and settings that make a run take seconds."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                  max_position_embeddings=64)


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """A persistent XLA cache for the module: every seed and every run compiles the same few
    programs, and reading them back takes a fraction of compiling them again on 2 cores."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update(names[0], str(tmp_path_factory.getbasetemp() / "xla-cache"))
    jax.config.update(names[1], 0.0)
    yield
    for n, v in old.items():
        jax.config.update(n, v)


def make_checkpoint(root: str, task: str = "pretraining", extra_words: tuple[str, ...] = ()):
    """A params-only checkpoint of a tiny randomly initialised model, stored with its toy
    vocabulary and tokenizer identity the way the converters store real ones. Returns
    (checkpoint dir, tokenizer)."""
    import toy_tasks as toy
    from bertjax.load import model_files
    from bertjax.model import BertConfig, build_model

    tok = toy.toy_tokenizer(os.path.join(root, "vocab"), extra_words)
    path = os.path.join(root, "ckpt")
    cfg = BertConfig(vocab_size=tok.vocab_size, **TINY_MODEL)
    model_files.save_checkpoint(path, build_model(task, cfg), cfg, task, extra_files={
        "vocab.txt": tok.vocab_path,
        "tokenizer_identity.json": json.dumps(tok.identity()).encode()})
    return path, tok


def recipe(name: str, arg: str = ""):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}",
                                                  os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def tiny(cfg, init_from: str, *, epochs: float = 6.0, lr: float = 3e-3, seq: int = 32,
         batch: int = 16):
    """Recipe -> a run of a few dozen steps of the tiny model."""
    cfg.init_from = init_from
    cfg.data.max_seq_length = seq
    cfg.train.batch_size = batch
    cfg.task.epochs = epochs
    cfg.optim.learning_rate = lr
    cfg.train.log_every = 8
    cfg.train.plot = False
    cfg.train.async_checkpointing = False
    return cfg


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "bertjax.finetune", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_failure(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]
