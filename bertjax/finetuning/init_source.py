"""Where a fine-tuning run starts from: the init_from checkpoint, its model shape and vocabulary.

init_from may be a params-only bertjax checkpoint (model_config.json, vocab files,
tokenizer_identity.json), a pretraining workdir (config.json, checkpoints/<step>,
tokenizer_identity.json) or a Hugging Face directory (config.json + weights + vocab.txt). The
training loop reads Orbax checkpoints only, so an HF directory is converted once into
<workdir>/init (its encoder; a task head is always trained afresh).

The text is tokenized here, from raw task files, so the vocabulary must be the one the checkpoint
was trained with: a stored tokenizer identity that differs from the vocabulary in use is refused.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable

from etils import epath
from flax import nnx

from bertjax.errors import UserError
from bertjax.interop import peft
from bertjax.model import lora as lora_lib
from bertjax.train import adapters
from bertjax.interop import electra_pair
from bertjax.model.encoder import arch_fields
from bertjax.load import model_files
from bertjax.text import check_identity, load_tokenizer
from bertjax.store import workdir as wd
from bertjax.text.base import Tokenizer
from bertjax.train import checkpoint as ckpt_lib

# The fields that fix the shape and function of the pretrained weights; dropout, dtype, attention
# backend and remat stay as the recipe says.
ARCH_FIELDS = arch_fields()


@dataclasses.dataclass
class Source:
    init_from: str          # what the loop loads ("" = train from scratch)
    model: dict             # architecture fields to apply to cfg.model ({} = the recipe's)
    tokenizer: Tokenizer
    vocab_path: str
    identity: dict


def convert_hf(src: str, dst: str, model_task: str, log: Callable[[str], None]) -> str:
    """Writes the encoder of an HF BERT directory as a params-only checkpoint at dst (with its
    vocabulary files and tokenizer identity); reuses dst when a previous run already wrote it."""
    if epath.Path(dst, wd.MODEL_CONFIG_FILE).exists():
        return dst
    model, mcfg, _, report, _ = model_files.load_model(src, task=model_task, allow_missing=True)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    if "bert" not in params:
        raise UserError(f"{src}: no BERT encoder weights found; pass a BERT model directory")
    ckpt_lib.save_params(dst, {"bert": params["bert"]}, {**mcfg.to_dict(), "task": model_task},
                         extra_files=model_files.tokenizer_extras(src), overwrite=True)
    if report.get("unexpected"):
        log(f"{src}: ignored {len(report['unexpected'])} tensors a {model_task} model does not use "
            f"({', '.join(report['unexpected'][:5])})")
    log(f"converted Hugging Face model {src} -> {dst}")
    return dst


def _lora_fields(path: str) -> dict:
    """The lora_* model fields of LoRA adapters at `path` (a PEFT directory or a bertjax LoRA
    checkpoint); {} for anything else."""
    if peft.is_peft_dir(path):
        return {"lora_rank": int(peft.read_config(path)["r"])}
    try:
        model = wd.inspect(path).model or {}
    except UserError:
        return {}
    return {k: model[k] for k in ("lora_rank", "lora_targets") if model.get("lora_rank")}


def adapters_checkpoint(cfg, src: str, dst: str, model_task: str,
                        log: Callable[[str], None]) -> str:
    """LoRA adapters to train further: the whole model (their base, the adapters and the head)
    written once as a params-only checkpoint at dst, which a LoRA run with the same rank and
    targets loads completely. Reused when a previous run already wrote it."""
    if epath.Path(dst, wd.MODEL_CONFIG_FILE).exists():
        return dst
    section = cfg.get("lora")
    if section is None or not section.enabled:
        raise UserError(f"--config.init_from={src} holds LoRA adapters; train them further with "
                        "--config.lora.enabled=true (same rank and targets), or start a full "
                        "fine-tune from `bertjax export --format=hf --merge_lora` of it")
    model, mcfg, task, _, _ = model_files.load_model(src, task=model_task)
    have = lora_lib.parse_targets(mcfg.lora_targets)
    want = lora_lib.parse_targets(section.targets)
    if (mcfg.lora_rank, have) != (int(section.rank), want):
        raise UserError(f"--config.init_from={src} holds rank-{mcfg.lora_rank} adapters on "
                        f"{','.join(have)}; set --config.lora.rank={mcfg.lora_rank} "
                        f"--config.lora.targets={','.join(have)} to train them further")
    base = (peft.read_config(src).get("base_model_name_or_path") if peft.is_peft_dir(src) else
            (adapters.read_reference(src) or {}).get("base"))
    extras = model_files.tokenizer_extras(src)
    if not extras and base and os.path.isdir(base):
        extras = model_files.tokenizer_extras(base)
    ckpt_lib.save_params(dst, nnx.state(model, nnx.Param), {**mcfg.to_dict(), "task": task},
                         extra_files=extras, overwrite=True)
    log(f"LoRA adapters {src} with their base -> {dst}")
    return dst


def _vocab_path(cfg, init_dir: str) -> str:
    if cfg.task.vocab:
        return cfg.task.vocab
    if init_dir:
        found = wd.vocab_dir(init_dir)
        if found:
            return found
        raise UserError(f"no vocabulary (vocab.txt or *.model) found with --config.init_from="
                        f"{cfg.init_from}; pass --config.task.vocab=PATH (the vocabulary the "
                        "checkpoint was pretrained with)")
    raise UserError("set --config.init_from=CHECKPOINT (a pretrained model) or, to train from "
                    "scratch, --config.task.vocab=PATH")


def _expected_identity(init_dir: str, vocab_path: str) -> dict | None:
    """The tokenizer identity a checkpoint was trained with, when it can be known."""
    if not init_dir:
        return None
    stored = wd.read_identity(init_dir)
    if stored is not None:
        return stored
    beside = wd.vocab_dir(init_dir)
    if beside and os.path.abspath(beside) != os.path.abspath(vocab_path):
        return load_tokenizer(beside).identity()
    return None


def resolve(cfg, workdir: str, log: Callable[[str], None] = print) -> Source:
    """Finds the checkpoint, its model shape and the vocabulary, and checks they belong together
    (and with any earlier run in the same workdir)."""
    init = str(cfg.init_from)
    init_dir = ""
    if init:
        if not epath.Path(init).exists():
            raise UserError(f"--config.init_from={init} does not exist; pass a bertjax checkpoint, "
                            "a pretraining workdir or a Hugging Face model directory")
        init_dir = init
        hf = wd.is_hf_dir(init) or electra_pair.is_pair_dir(init)
        if _lora_fields(init):
            init_dir = adapters_checkpoint(cfg, init, os.path.join(workdir, "init"),
                                           str(cfg.task.model_task), log)
        elif hf and not epath.Path(init, wd.MODEL_CONFIG_FILE).exists():
            init_dir = convert_hf(init, os.path.join(workdir, "init"), str(cfg.task.model_task), log)
        elif not hf:
            # A gdes ELECTRA pair stores its discriminator's token table in two halves; the
            # fine-tuned encoder starts from their sum.
            init_dir = model_files.gdes_discriminator(init, os.path.join(workdir, "init")) or init
    vocab = _vocab_path(cfg, init_dir)
    tokenizer = load_tokenizer(vocab)
    identity = tokenizer.identity()
    expected = _expected_identity(init_dir, vocab)
    if expected is not None:
        check_identity(expected, identity, f"--config.init_from={init}")
    elif init_dir:
        log(f"warning: {init} stores no tokenizer identity; make sure {vocab} is the vocabulary "
            "it was pretrained with")
    wd.check_identity(workdir, identity, f"the earlier run in {workdir}")
    model = {}
    if init_dir:
        stored = wd.inspect(init_dir).model
        model = {k: stored[k] for k in ARCH_FIELDS if k in stored}
    if identity["vocab_size"] > model.get("vocab_size", identity["vocab_size"]):
        raise UserError(f"the vocabulary {vocab} has {identity['vocab_size']} entries but the "
                        f"checkpoint's model has only {model['vocab_size']} embedding rows; use the "
                        "checkpoint's own vocabulary")
    if not init_dir:
        # A model trained from scratch needs exactly one embedding row per vocabulary entry.
        model["vocab_size"] = identity["vocab_size"]
    return Source(init_from=init_dir, model=model, tokenizer=tokenizer, vocab_path=vocab,
                  identity=identity)


def model_for(cfg, source: Source, num_labels: int, log: Callable[[str], None] = print) -> dict:
    """The model section a run uses: the recipe's, with the checkpoint's architecture and the
    task's label count (for the run plan; cfg.model is left as given)."""
    model = cfg.model.to_dict()
    changed = []
    for k, v in source.model.items():
        if model[k] != v:
            changed.append(f"{k}={v}")
            model[k] = type(model[k])(v)
    if changed and source.init_from:
        log(f"model shape from {cfg.init_from}: {', '.join(changed)}")
    model["num_labels"] = int(num_labels)
    seq = int(cfg.data.max_seq_length)
    limit = model["max_position_embeddings"] - model["position_offset"]
    if seq > limit:
        raise UserError(f"data.max_seq_length {seq} exceeds the model's {limit} positions "
                        f"(max_position_embeddings {model['max_position_embeddings']}, offset "
                        f"{model['position_offset']}); lower --config.data.max_seq_length")
    return model
