"""Opening any checkpoint: a Hugging Face directory of any family member (through its layout
table), a params-only bertjax checkpoint, or a training workdir (its newest committed step), as a
whole task model, with the tokenizer it was trained with; and saving a model as a params-only
checkpoint. Every command that reads weights (convert, export, embed, fill-mask, fine-tuning's
init_from, the Python API) comes through here. It sits above interop/ (the formats) and train/
(Orbax), so neither imports the other's users.
"""
from __future__ import annotations

import json
import os

from flax import nnx

from bertjax.errors import UserError
from bertjax.interop import electra_pair, hf_dir, layouts, params as interop
from bertjax.model import electra as electra_lib
from bertjax.model.bert import TASK_MODELS, build_model
from bertjax.model.encoder import BertConfig
from bertjax.store import workdir as wd
from bertjax.interop import peft
from bertjax.load import lora_files
from bertjax.text import check_identity, load_tokenizer
from bertjax.train import checkpoint as ckpt_lib
from bertjax.train import rtd


ELECTRA_OPTIONS = "electra_pretraining_options"


def save_checkpoint(out_dir: str, model: nnx.Module, cfg: BertConfig, task: str,
                    extra_files: dict | None = None, overwrite: bool = False) -> None:
    config = {**cfg.to_dict(), "task": task}
    if task == electra_pair.PRETRAINING and electra_lib.options(model):
        # How the pair is tied is the objective's, not a model field: kept beside the fields.
        config[ELECTRA_OPTIONS] = electra_lib.options(model)
    ckpt_lib.save_params(out_dir, nnx.state(model, nnx.Param), config, extra_files=extra_files,
                         overwrite=overwrite)


def _tokenizer_extras(src: str) -> dict:
    """Vocabulary files found beside a model, plus the tokenizer identity computed from them."""
    extras = {os.path.basename(p): p for p in hf_dir.tokenizer_files(src)}
    if extras:
        try:
            extras[wd.IDENTITY_FILE] = json.dumps(load_tokenizer(src).identity(), indent=2).encode()
        except UserError:
            pass  # a directory with only a tokenizer.json: copied as is, no identity
    return extras


def load_model(path: str, task: str | None = None, allow_missing: bool = False,
               base: str | None = None):
    """Returns (model, cfg, task, report, source_dir) from an HF dir, a params-only checkpoint or
    a training workdir (its latest committed step). LoRA adapters (a bertjax LoRA checkpoint or a
    PEFT directory) come with their base: the one they name, or `base`."""
    if peft.is_peft_dir(path):
        model, cfg, task = lora_files.load_peft(path, base, load_model, task)
        return model, cfg, task, {"missing": [], "unexpected": []}, path
    contents = wd.inspect(path)
    if contents.kind == "hf_pair":
        if task in (None, electra_pair.PRETRAINING):
            model, cfg, task, report = electra_pair.load_hf(path)
            return model, cfg, task, report, path
        # Any other task model is the discriminator's: it is the network ELECTRA fine-tunes.
        return load_model(os.path.join(path, "discriminator"), task, allow_missing)
    if contents.kind == "hf":
        model, cfg, task, report = interop.load_hf(path, task=task, allow_missing=allow_missing)
        return model, cfg, task, report, path
    model_cfg = dict(contents.model)
    task = task or contents.task
    if task not in TASK_MODELS:
        raise UserError(f"unknown task {task!r} in {path}; expected one of {sorted(TASK_MODELS)}")
    model_cfg.pop("id2label", None)  # label names, read by export
    pair_options = model_cfg.pop(ELECTRA_OPTIONS, None)
    cfg = BertConfig.from_dict(model_cfg, what=f"the model config of {path}")
    if cfg.lora_rank:
        model = lora_files.load(path, cfg, task, base, load_model)
        return model, cfg, task, {"missing": [], "unexpected": []}, path
    build = _builder(contents, task, cfg, pair_options)
    # Restore into an abstract model: no initialiser runs unless a weight is missing.
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    params, report = ckpt_lib.load_params(path, abstract)
    if report.missing:
        if not allow_missing:
            raise UserError(f"{path} has no weights for {len(report.missing)} parameters of a "
                            f"{task} model: {', '.join(report.missing[:10])}")
        fresh = nnx.state(build(), nnx.Param)
        params, report = ckpt_lib.load_params(path, fresh, fallback=fresh)
    model = nnx.merge(graphdef, params)
    return model, cfg, task, {"missing": report.missing, "unexpected": report.unexpected}, path


def _builder(contents, task: str, cfg: BertConfig, pair_options: dict | None):
    """How the task model of `contents` is built: an ELECTRA pretraining pair is tied as its run's
    objective section says (embedding_sharing, generator_num_layers: train/rtd.py), or as a
    params-only checkpoint of it recorded."""
    if task == electra_pair.PRETRAINING and (pair_options or contents.kind == "run"):
        opts = pair_options or rtd.model_options(
            wd.step_config(contents.path, contents.step)["config"])
        return lambda: electra_lib.build_pretraining(
            cfg, 0, opts.get("embedding_sharing", "plain"),
            int(opts.get("generator_num_layers", 0)))
    return lambda: build_model(task, cfg)


def gdes_discriminator(path: str, dst: str) -> str | None:
    """For an ELECTRA pretraining checkpoint trained with gdes sharing: writes its discriminator,
    with its effective token table (shared + residual), as a params-only checkpoint at dst and
    returns dst; None for any other checkpoint (its `bert/*` is the discriminator as stored)."""
    contents = wd.inspect(path)
    if contents.task != electra_pair.PRETRAINING or contents.kind not in ("run", "params"):
        return None
    model, cfg, _, _, _ = load_model(path)
    if model.embedding_sharing != "gdes":
        return None
    disc_cfg, task, flat = electra_pair.split(interop.flat_params(model), cfg,
                                              model.generator.config)["discriminator"]
    disc = interop.model_from_flat(task, disc_cfg, flat)
    save_checkpoint(dst, disc, disc_cfg, task, extra_files=tokenizer_extras(path), overwrite=True)
    return dst


def tokenizer_extras(path: str) -> dict:
    src = wd.vocab_dir(path)
    return _tokenizer_extras(src) if src else {}


ENCODER = ("bert/embeddings", "bert/encoder")


def load_checkpoint(path: str, needs: tuple[str, ...], with_untrained: bool = False):
    """(model, cfg, task) from anything load_model reads, plus Hugging Face BERT
    directories whose architecture bertjax has no task model for (BertLMHeadModel, ...): those are
    read as a pretraining model, and weights they lack are accepted only outside `needs`, a tuple
    of parameter path prefixes such as ("bert/encoder", "mlm"). with_untrained adds a fourth
    item: the paths of the parameters left at their fresh initialisation."""
    untrained: list[str] = []
    if wd.is_hf_dir(path):
        hf = hf_dir.read_config(path)
        archs = hf.get("architectures") or []
        if archs and not any(a in layouts.for_hf_config(hf).architectures for a in archs):
            model, cfg, task, report, _ = load_model(path, task="pretraining",
                                                              allow_missing=True)
            untrained = [m.split(" <- ")[0] for m in report["missing"]]
            lacking = [m for m in report["missing"] if m.split(" <- ")[0].startswith(needs)]
            if lacking:
                raise UserError(f"{path} ({archs[0]}) lacks weights this command needs: "
                                f"{'; '.join(lacking[:6])}")
            return (model, cfg, task, untrained) if with_untrained else (model, cfg, task)
    model, cfg, task, _, _ = load_model(path)
    return (model, cfg, task, untrained) if with_untrained else (model, cfg, task)


def checkpoint_tokenizer(checkpoint: str, vocab_size: int, vocab: str | None = None):
    """The tokenizer a checkpoint was trained with: --vocab if given, else the vocabulary files
    stored with it. A tokenizer_identity.json stored with the checkpoint must match, and the
    vocabulary must fit the model's embedding table."""
    src = wd.vocab_dir(checkpoint)
    if vocab is None and src is None:
        raise UserError(f"no vocabulary (vocab.txt or a SentencePiece .model) found with "
                        f"{checkpoint}; pass --vocab=PATH to the vocabulary it was trained with")
    tok = load_tokenizer(vocab or src)
    stored = os.path.join(src, wd.IDENTITY_FILE) if src else None
    if stored and os.path.isfile(stored):
        with open(stored, encoding="utf-8") as f:
            check_identity(json.load(f), tok.identity(), f"checkpoint {checkpoint}")
    if tok.vocab_size > vocab_size:
        raise UserError(f"the vocabulary has {tok.vocab_size} tokens but the model at {checkpoint} "
                        f"only {vocab_size}; pass the vocabulary this model was trained with")
    return tok
