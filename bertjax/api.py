"""bertjax from Python, for scripts and notebooks: the code the commands run, without a shell.

    import bertjax.api as bj
    model = bj.load("CHECKPOINT")             # bertjax checkpoint, pretraining workdir or HF dir
    model.tokenize(texts)                     # the model inputs, numpy int32
    model.hidden_states(texts)                # final hidden states, input mask, pooler output
    model.embed(texts, pooling="cls"|"mean")  # sentence embeddings, as `bertjax embed` writes them
    model.fill_mask(["the [MASK] sat ."])     # top-k per [MASK], as `bertjax fill-mask` prints them
    model.with_adapter("LORA_DIR")            # LoRA adapters over the loaded model (docs/lora.md)
    bj.finetune(bj.recipe("configs/glue.py:rte"), "WORKDIR")  # `bertjax finetune`, returns summary

Mistakes a user can make raise bertjax.errors.UserError, whose message names the fix (the
commands print that message and exit 2).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from flax import nnx

from bertjax.tools import embed as embed_lib
from bertjax.tools import fill_mask as fill_lib
from bertjax.config import check_choices
from bertjax.errors import UserError
from bertjax.finetuning import run as finetune_run
from bertjax.load import lora_files, model_files
from bertjax.model.encoder import BertConfig
from bertjax.text.base import Tokenizer

__all__ = ["Encoded", "Model", "finetune", "load", "recipe"]


class Encoded(NamedTuple):
    hidden: np.ndarray               # [N, L, H] float32 final hidden states (padding rows included)
    input_mask: np.ndarray           # [N, L] int32, 1 on real tokens ([CLS] and [SEP] included)
    pooled: np.ndarray | None        # [N, H] float32 pooler output (tanh dense on [CLS]); None
                                     # for models without a pooler (token classification, QA, MLM)


def _encode(graphdef, state, ids, seg, mask):
    seq, pooled = nnx.merge(graphdef, state)(ids, seg, mask)
    return seq.astype(jnp.float32), None if pooled is None else pooled.astype(jnp.float32)


# One jitted function for every model: models of one structure and batches of one shape share a
# compilation, as embed's pooler does.
_encode_jit = jax.jit(_encode, static_argnums=0)


@dataclasses.dataclass(frozen=True)
class Model:
    """A loaded checkpoint: its task model, config and the tokenizer it was trained with."""

    module: nnx.Module       # the task model (BertForPretraining, BertForSequenceClassification, ...)
    config: BertConfig
    task: str                # "pretraining", "masked_lm", "base", "sequence_classification", ...
    tokenizer: Tokenizer
    path: str
    # Parameters the checkpoint had no weights for (kept at their fresh initialisation); only an HF
    # directory of an architecture bertjax has no task model for has any, outside the encoder.
    untrained: tuple[str, ...] = ()

    @property
    def encoder(self) -> nnx.Module:
        """The BertModel inside the task model."""
        return embed_lib.encoder_of(self.module, self.task)

    def _ids(self, texts: Sequence[str], max_seq_length: int) -> tuple[list[list[int]], int]:
        if isinstance(texts, str):
            raise UserError("pass a list of texts, not one string (wrap it: [text])")
        if not texts:
            raise UserError("pass at least one text")
        length = embed_lib.seq_limit(self.config, max_seq_length)
        return embed_lib.encode_cut(self.tokenizer, list(texts), length), length

    def tokenize(self, texts: Sequence[str], max_seq_length: int = 0) -> dict[str, np.ndarray]:
        """[CLS] pieces [SEP] per text, cut to max_seq_length (0 = the model's limit) and padded
        to the longest: {"input_ids", "segment_ids", "input_mask"}, each [N, L] int32."""
        seqs, _ = self._ids(texts, max_seq_length)
        ids, seg, mask = embed_lib.pack(seqs, max(map(len, seqs)), len(seqs), self.tokenizer.pad_id)
        return {"input_ids": ids, "segment_ids": seg, "input_mask": mask}

    def hidden_states(self, texts: Sequence[str], batch_size: int = 32,
                      max_seq_length: int = 0) -> Encoded:
        """The encoder's outputs for every text, padded to one length L: the longest text rounded
        up to a power of two (at least 8), so a handful of shapes are ever compiled."""
        embed_lib.check_batch_size(batch_size)
        seqs, limit = self._ids(texts, max_seq_length)
        length = embed_lib.bucket_length(max(map(len, seqs)), limit)
        graphdef, state = nnx.split(self.encoder)
        rows = min(batch_size, len(seqs))
        hidden, pooled, masks = [], [], []
        for start in range(0, len(seqs), rows):
            chunk = seqs[start:start + rows]
            ids, seg, mask = embed_lib.pack(chunk, length, rows, self.tokenizer.pad_id)
            seq, pool = _encode_jit(graphdef, state, ids, seg, mask)
            hidden.append(np.asarray(seq)[:len(chunk)])
            masks.append(mask[:len(chunk)])
            if pool is not None:
                pooled.append(np.asarray(pool)[:len(chunk)])
        return Encoded(np.concatenate(hidden), np.concatenate(masks),
                       np.concatenate(pooled) if pooled else None)

    def embed(self, texts: Sequence[str], pooling: str = "cls", batch_size: int = 32,
              max_seq_length: int = 0) -> np.ndarray:
        """[N, H] float32: "cls" is the final hidden state at [CLS], "mean" the average over the
        real tokens ([CLS] and [SEP] included), exactly what `bertjax embed` saves."""
        self._ids(texts, max_seq_length)  # the same argument checks as the other methods
        return embed_lib.embed_texts(self.encoder, self.tokenizer, list(texts), pooling,
                                     batch_size, max_seq_length or self.config.max_length)

    def fill_mask(self, texts: Sequence[str], top_k: int = 5) -> list[list[dict]]:
        """Per text, one entry per [MASK] in order: {"position", "candidates": [{"token", "id",
        "prob"}, ...]} with the top_k tokens, most probable first (`bertjax fill-mask --json`)."""
        fill_lib.check_mlm_task(self.path, self.task)
        fresh = [p for p in self.untrained if p.startswith("mlm")]
        if fresh:
            raise UserError(f"{self.path} has no weights for the masked-LM head "
                            f"({', '.join(fresh[:3])}); use a pretraining or masked-LM checkpoint")
        return fill_lib.fill_mask(self.module, self.tokenizer, list(texts), top_k)

    def with_adapter(self, adapter: str) -> "Model":
        """This model as the base of LoRA adapters (a bertjax LoRA checkpoint or a PEFT
        directory): a new Model, built from the weights already loaded, so one loaded base serves
        several adapters. Adapters trained on other weights are refused (their base's
        fingerprint)."""
        module, cfg, task = lora_files.attach(self.module, self.config, adapter, self.path)
        return Model(module, cfg, task, self.tokenizer, str(adapter))


def load(path: str, vocab: str | None = None) -> Model:
    """A bertjax params-only checkpoint, a training workdir (its latest committed step) or a
    Hugging Face BERT directory, with the tokenizer stored beside it (or `vocab`, checked against
    the tokenizer identity stored with the checkpoint)."""
    model, cfg, task, untrained = model_files.load_checkpoint(path, needs=model_files.ENCODER,
                                                            with_untrained=True)
    tokenizer = model_files.checkpoint_tokenizer(path, cfg.vocab_size, vocab)
    return Model(model, cfg, task, tokenizer, str(path), tuple(untrained))


def recipe(spec: str) -> mlc.ConfigDict:
    """A recipe as `--config=` reads it: "configs/glue.py:rte" calls get_config("rte"), a path
    with no ":arg" calls get_config(). Set fields on the result as --config.a.b=v would."""
    path, sep, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise UserError(f"recipe {path} does not exist; pass a configs/*.py file, e.g. "
                        "configs/glue.py:rte")
    module_spec = importlib.util.spec_from_file_location(
        f"bertjax_recipe_{os.path.splitext(os.path.basename(path))[0]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        cfg = module.get_config(arg) if sep else module.get_config()
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"recipe {spec}: {e}") from None
    cfg.lock()  # as the command line locks it: a misspelt field fails instead of being added
    return cfg


def check_finetune(cfg: Any, workdir: str) -> None:
    """What can be checked of a fine-tuning request before anything is read or built."""
    if not hasattr(cfg, "get") or "task" not in cfg:
        raise UserError("--config must be a fine-tuning recipe (configs/glue.py:TASK, "
                        "configs/squad.py:v1|v2, configs/ner.py, configs/polarity.py)")
    if not workdir:
        raise UserError("a workdir is required (--workdir=DIR, a local path)")
    check_choices(cfg)


def finetune(cfg: Any, workdir: str, log: Callable[[str], None] = print) -> dict:
    """Runs what `bertjax finetune --config=... --workdir=WORKDIR` runs: every seed, resumable by
    calling again with the same workdir; returns the summary also written to
    <workdir>/summary.json. `cfg` is a fine-tuning recipe (see `recipe`); it is not changed.

    On several hosts (one Python process each), call
    bertjax.train.distributed.initialize(cfg.distributed) first, before any other JAX call, as
    the command does; one process needs nothing."""
    check_finetune(cfg, workdir)
    return finetune_run.finetune(cfg, workdir, log)
