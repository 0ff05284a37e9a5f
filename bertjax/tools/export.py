"""Exporting a checkpoint, heads and vocabulary included, for use outside bertjax.

bertjax export --checkpoint=DIR --format=hf|safetensors|msgpack --out=DIR [--overwrite]

The checkpoint may be a params-only bertjax checkpoint, a training workdir (its latest committed
step) or a Hugging Face BERT directory. Formats:
  hf           config.json + model.safetensors that transformers loads with no missing or
               unexpected weights, for every task model, plus vocab.txt, tokenizer_config.json
               (do_lower_case) and special_tokens_map.json. An ELECTRA pretraining run writes
               two such directories, OUT/discriminator (ElectraForPreTraining) and
               OUT/generator (ElectraForMaskedLM).
  safetensors  params.safetensors: bertjax's own parameter tree, keys joined with "/"
               (e.g. "bert/encoder/layers/0/attention/qkv/kernel").
  msgpack      params.msgpack: the same tree written by flax.serialization.msgpack_serialize.
  sentence-transformers
               the encoder as a plain HF model plus modules.json, the pooling and Normalize
               modules, the max sequence length and the prompts, which
               `SentenceTransformer(dir)` loads (bertjax/interop/sentence_transformers.py).
  peft         a LoRA checkpoint's adapters and head as adapter_config.json +
               adapter_model.safetensors, which `peft.PeftModel.from_pretrained` loads over the
               base exported with --format=hf (a sentence-embedding run's: over the bare
               encoder, which SentenceTransformer.load_adapter reads; bertjax/interop/peft.py).
               --format=hf --merge_lora
               writes the adapters merged into the weights (W0 + alpha/r B A) instead.
Every export also holds model_config.json (the model config plus "task"), the vocabulary files and
tokenizer_identity.json; `load_export` reads the two own formats back.

A checkpoint that lacks any weight of its task model is refused (never exported with a freshly
initialised head), and so is one holding weights the model does not use. The export is built in a
temporary sibling directory and renamed into place only once complete.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx, serialization
from flax.nnx import traversals
from safetensors.numpy import load_file, save_file

from bertjax import cli
from bertjax.errors import UserError
from bertjax.interop import electra_pair, hf_dir, params as interop, sentence_transformers as st
from bertjax.interop import layouts
from bertjax.model.bert import TASK_MODELS, build_model
from bertjax.model.encoder import BertConfig
from bertjax.interop import peft
from bertjax.train import adapters
from bertjax.store import workdir as wd

FORMATS = ("hf", "safetensors", "msgpack", "sentence-transformers", "peft")
# The name bertjax.train.checkpoint uses; repeated so load_export works without importing Orbax.
MODEL_CONFIG_FILE = "model_config.json"
PARAMS_FILES = {"safetensors": "params.safetensors", "msgpack": "params.msgpack"}
HF_FORMATS = ("hf", "sentence-transformers")
_STORED_DTYPES = (np.float16, np.float32, np.float64, np.int32, np.int64)


def export(checkpoint: str, fmt: str, out: str, vocab: str | None = None,
           overwrite: bool = False, merge_lora: bool = False, base: str | None = None) -> str:
    """Writes `checkpoint` to `out` in format `fmt`; returns the task of the exported model."""
    # Reading checkpoints brings in Orbax (through load/model_files.py); imported here, not at
    # the top, so
    # that load_export, what the users of an export run, works without Orbax installed.
    from bertjax.load import model_files

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    _check_out(checkpoint, out, overwrite)
    out = os.path.normpath(out)  # "dir/" would give the staging directory an empty name
    model, cfg, task, report, _ = model_files.load_model(checkpoint, base=base)
    model, cfg = _lora_export(checkpoint, model, cfg, task, fmt, merge_lora)
    if report["unexpected"]:
        raise UserError(f"{checkpoint} holds weights a {task} model does not use "
                        f"({', '.join(report['unexpected'][:6])}); exporting would drop them, "
                        "check that the checkpoint and its model config belong together")
    tokenizer = model_files.checkpoint_tokenizer(checkpoint, cfg.vocab_size, vocab)
    labels = _id2label(checkpoint, cfg.num_labels) if "classification" in task else None

    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        stage = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.export-", dir=parent)
    except OSError as e:
        raise UserError(f"cannot write to {parent} ({e.strerror}); choose a writable --out") from None
    try:
        tok_files = _write_tokenizer(tokenizer, os.path.join(stage, "tokenizer"), fmt in HF_FORMATS,
                                     cfg.max_length, cfg.arch)
        built = os.path.join(stage, "export")
        if fmt == "sentence-transformers":
            _save_sentence_transformers(checkpoint, model, cfg, task, built, tok_files)
        elif fmt == "hf" and task == electra_pair.PRETRAINING:
            electra_pair.save_hf(model, cfg, built, extra_files=tok_files)
        elif fmt == "hf":
            interop.save_hf(model, cfg, task, built, extra_files=tok_files, id2label=labels)
        elif fmt == "peft":
            _save_peft(checkpoint, model, cfg, task, built, tok_files, base)
        else:
            os.mkdir(built)
            for f in tok_files:
                shutil.copy(f, built)
            config = {**cfg.to_dict(), "task": task}
            if labels:
                config["id2label"] = {str(k): v for k, v in labels.items()}
            with open(os.path.join(built, MODEL_CONFIG_FILE), "w") as f:
                json.dump(config, f, indent=2, sort_keys=True)
            _write_params(fmt, model, task, os.path.join(built, PARAMS_FILES[fmt]))
        _install(built, out, stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return task


def _save_sentence_transformers(checkpoint, model, cfg, task, built, tok_files) -> None:
    """The encoder as the arch's bare HF model (BertModel, RobertaModel) plus the module files
    (interop/sentence_transformers.py), with the pooling, normalisation, length and prompts the
    checkpoint was fine-tuned with (its sentence_config.json), else mean pooling, normalised."""
    encoder = model if task == "base" else model.bert
    if encoder.pooler is None:
        raise UserError(f"{checkpoint} is a {task} model, whose encoder has no pooler for a "
                        "Hugging Face BertModel; fine-tune it with configs/embeddings.py first")
    sentence = st.read_config(checkpoint) or {"pooling": "mean", "normalize": True}
    sentence["max_seq_length"] = int(sentence.get("max_seq_length") or cfg.max_length)
    interop.save_hf(encoder, cfg, "base", built, extra_files=tok_files)
    st.write_modules(built, cfg.hidden_size, sentence)


def _lora_export(checkpoint, model, cfg, task, fmt, merge_lora):
    """The model to write: merged (W0 + (alpha/r) B A) with --merge_lora; a LoRA model goes to
    an HF format only merged, and only a LoRA model to PEFT's."""
    if merge_lora and not cfg.lora_rank:
        raise UserError(f"--merge_lora: {checkpoint} holds no LoRA adapters (it was not "
                        "fine-tuned with lora.enabled=true); export it without --merge_lora")
    if fmt == "peft" and (not cfg.lora_rank or merge_lora):
        raise UserError(f"--format=peft writes LoRA adapters; {checkpoint} holds none to write"
                        if not cfg.lora_rank else "--format=peft writes the adapters apart from "
                        "their base; drop --merge_lora, or use --format=hf --merge_lora")
    if cfg.lora_rank and fmt in HF_FORMATS and not merge_lora:
        raise UserError(f"{checkpoint} holds LoRA adapters, which a plain Hugging Face model has "
                        "no place for; pass --merge_lora to merge them into its weights, or use "
                        "--format=peft")
    if not merge_lora:
        return model, cfg
    plain = dataclasses.replace(cfg, lora_rank=0)
    merged = peft.merge(interop.flat_params(model), cfg, task)
    return interop.model_from_flat(task, plain, {tuple(int(p) if p.isdigit() else p for p in k): v
                                                 for k, v in merged.items()}), plain


def _save_peft(checkpoint, model, cfg, task, built, tok_files, base) -> None:
    """adapter_config.json and adapter_model.safetensors (interop/peft.py), which
    `peft.PeftModel.from_pretrained(AutoModelFor<task>.from_pretrained(BASE), dir)` loads over the
    base exported as a Hugging Face model, plus the tokenizer files. A sentence-embedding model's
    adapters go over the bare encoder (AutoModel), as sentence-transformers loads them."""
    flat = interop.flat_params(model)
    head = [k for k in flat if "lora" not in map(str, k) and not adapters.in_base(k, task)]
    if task == "sentence_embedding":
        # sentence-transformers runs the encoder as the arch's bare HF model (AutoModel), so the
        # adapters go over that: PEFT's FEATURE_EXTRACTION, which `SentenceTransformer(base)
        # .load_adapter(dir)` reads. The pooling lives in the ST directory, not in weights.
        if head:
            raise UserError(f"{checkpoint} trained {', '.join('/'.join(map(str, k)) for k in head[:4])}"
                            " outside the encoder, which a PEFT adapter over AutoModel has no place "
                            "for; use --format=hf --merge_lora")
        flat = {k[1:]: v for k, v in flat.items() if k[0] == "bert"}
        task = "base"
    ref = adapters.read_reference(checkpoint) or {}
    config, tensors = peft.to_peft(flat, cfg, task, base or ref.get("base", ""), head)
    peft.write(built, config, tensors)
    for f in tok_files:
        shutil.copy(f, built)


def _check_out(checkpoint: str, out: str, overwrite: bool) -> None:
    if not out:
        raise UserError("--out is required: the directory to write the export to")
    real_out, real_ckpt = os.path.realpath(out), os.path.realpath(checkpoint)
    if real_ckpt == real_out or real_ckpt.startswith(real_out + os.sep):
        raise UserError(f"--out {out} would replace the checkpoint {checkpoint} itself; choose "
                        "another output directory")
    if os.path.lexists(out) and not overwrite:
        raise UserError(f"{out} already exists; choose a new --out or pass --overwrite")


def _install(built: str, out: str, stage: str) -> None:
    """Renames the finished export to `out`; an old `out` is moved aside first and put back if
    the rename fails, so `out` is always either the old export or the complete new one."""
    previous = None
    if os.path.lexists(out):
        previous = os.path.join(stage, "previous")
        os.replace(out, previous)
    try:
        os.replace(built, out)
    except BaseException:
        if previous:
            os.replace(previous, out)
        raise


def _write_tokenizer(tokenizer, directory: str, hf: bool, max_length: int,
                     arch: str = "bert") -> list[str]:
    """The tokenizer's files for an export. hf: tokenizer.json and a tokenizer_config.json that
    transformers' AutoTokenizer loads (the tokenizer's hf_tokenizer_config(): BertTokenizer,
    RobertaTokenizer, ..., as the arch's layout adapts it: DistilBertTokenizer) plus
    special_tokens_map.json. The own formats keep the vocabulary in
    its legacy spelling (vocab.txt, spiece.model, vocab.json + merges.txt), and tokenizer.json
    only where that is the tokenizer's one spelling."""
    os.makedirs(directory)
    paths = tokenizer.save(directory)
    identity = tokenizer.identity()
    legacy = [p for p in paths if os.path.basename(p) not in ("tokenizer.json", "tokenizer_config.json")]
    if not hf and legacy:
        paths = [p for p in paths if os.path.basename(p) != "tokenizer.json"]
    paths.append(_write_json(os.path.join(directory, wd.IDENTITY_FILE), identity))
    if not hf:
        return paths
    layout = layouts.for_arch(arch)
    for ours, theirs in layout.tokenizer_renames:
        src = os.path.join(directory, ours)
        if src in paths:
            os.replace(src, os.path.join(directory, theirs))
            paths[paths.index(src)] = os.path.join(directory, theirs)
    config = layout.tokenizer_config(tokenizer.hf_tokenizer_config())
    config["model_max_length"] = max_length
    config_path = _write_json(os.path.join(directory, "tokenizer_config.json"), config)
    if config_path not in paths:
        paths.append(config_path)
    specials = {k: v for k, v in config.items() if k.endswith("_token")}
    paths.append(_write_json(os.path.join(directory, "special_tokens_map.json"), specials))
    return paths


def _write_json(path: str, body: dict) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def _id2label(checkpoint: str, num_labels: int) -> dict[int, str] | None:
    """Label names stored with the checkpoint (HF config.json or model_config.json "id2label")."""
    if wd.is_hf_dir(checkpoint):
        labels = hf_dir.read_config(checkpoint).get("id2label")
    else:
        path = os.path.join(checkpoint, MODEL_CONFIG_FILE)
        labels = None
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                labels = json.load(f).get("id2label")
    if not labels:
        return None
    if isinstance(labels, list):
        labels = dict(enumerate(labels))
    try:
        labels = {int(k): str(v) for k, v in labels.items()}
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"id2label in {checkpoint} must map label ids to names, e.g. "
                        '{"0": "negative", "1": "positive"}') from None
    if sorted(labels) != list(range(num_labels)):
        raise UserError(f"id2label in {checkpoint} names ids {sorted(labels)} but the model has "
                        f"{num_labels} labels; fix id2label to name ids 0..{num_labels - 1}")
    return labels


def _storable(x: np.ndarray) -> np.ndarray:
    # bfloat16 has no numpy or safetensors.numpy dtype; float32 holds it exactly and load_export
    # casts back to the model's parameter dtype.
    x = np.asarray(x)
    return np.ascontiguousarray(x if x.dtype in _STORED_DTYPES else x.astype(np.float32))


def _write_params(fmt: str, model, task: str, path: str) -> None:
    flat = {k: _storable(v) for k, v in interop.flat_params(model).items()}
    if fmt == "safetensors":
        save_file({"/".join(map(str, k)): v for k, v in flat.items()}, path,
                  metadata={"task": task})
    else:
        tree = serialization.to_state_dict(traversals.unflatten_mapping(flat))
        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize(tree))


def _read_params(path: str) -> dict[tuple[str, ...], np.ndarray]:
    """{path of string keys: array} from params.safetensors or params.msgpack in `path`."""
    st, mp = (os.path.join(path, PARAMS_FILES[f]) for f in ("safetensors", "msgpack"))
    try:
        if os.path.isfile(st):
            return {tuple(k.split("/")): v for k, v in load_file(st).items()}
        if os.path.isfile(mp):
            with open(mp, "rb") as f:
                tree = serialization.msgpack_restore(f.read())
            return {tuple(map(str, k)): np.asarray(v)
                    for k, v in traversals.flatten_mapping(tree).items()}
    except Exception as e:  # both readers raise assorted types for a damaged file
        raise UserError(f"cannot read the parameters in {path} ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); export the checkpoint again") from None
    raise UserError(f"{path} holds neither {PARAMS_FILES['safetensors']} nor "
                    f"{PARAMS_FILES['msgpack']}; pass a directory written by bertjax.tools.export")


def load_export(path: str):
    """(model, cfg, task) from a safetensors or msgpack export. Every parameter of the task model
    must be present with its shape, and nothing else."""
    config_path = os.path.join(path, MODEL_CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise UserError(f"{path} is not a bertjax export: it has no "
                        f"{MODEL_CONFIG_FILE}")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    task = config.pop("task", "pretraining")
    if task not in TASK_MODELS:
        raise UserError(f"unknown task {task!r} in {config_path}; expected one of "
                        f"{sorted(TASK_MODELS)}")
    config.pop("id2label", None)  # label names, read by _id2label
    cfg = BertConfig.from_dict(config, what=config_path)
    # Built abstractly: a concrete build would compile and run every random initialiser only for
    # the loaded values to replace them.
    model = nnx.eval_shape(lambda: build_model(task, cfg))
    state = nnx.state(model, nnx.Param)
    want = traversals.flatten_mapping(nnx.to_pure_dict(state))
    by_name = {tuple(map(str, k)): k for k in want}
    saved = _read_params(path)
    missing = sorted("/".join(k) for k in by_name if k not in saved)
    unexpected = sorted("/".join(k) for k in saved if k not in by_name)
    misshaped = sorted(f"{'/'.join(k)} {tuple(v.shape)} vs {tuple(want[by_name[k]].shape)}"
                       for k, v in saved.items()
                       if k in by_name and tuple(v.shape) != tuple(want[by_name[k]].shape))
    if missing or unexpected or misshaped:
        parts = [f"{what}: {', '.join(keys[:5])}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped))
                 if keys]
        raise UserError(f"{path} does not hold a {task} model matching its model_config.json "
                        f"({'; '.join(parts)}); export the checkpoint again")
    values = {by_name[k]: jnp.asarray(v, dtype=want[by_name[k]].dtype) for k, v in saved.items()}
    nnx.replace_by_pure_dict(state, traversals.unflatten_mapping(values))
    nnx.update(model, state)
    return model, cfg, task


def define_flags() -> None:
    # Only when run as a command: tests import this module beside others defining --checkpoint.
    flags.DEFINE_string("checkpoint", None,
                        "bertjax checkpoint, training workdir or Hugging Face BERT directory.")
    flags.DEFINE_enum("format", "hf", list(FORMATS),
                      "hf | safetensors | msgpack | sentence-transformers (see module doc).")
    flags.DEFINE_string("out", None, "Directory to write; must not exist unless --overwrite.")
    flags.DEFINE_string("vocab", None, "Vocabulary to use when none is stored with the checkpoint.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --out once the new export is complete.")
    flags.DEFINE_bool("merge_lora", False, "A LoRA checkpoint as a plain model: its adapters merged "
                      "into the weights (W0 + alpha/r B A).")
    flags.DEFINE_string("base", None, "The base model of LoRA adapters, when not the one they name.")


FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.checkpoint:
        raise UserError("--checkpoint is required: bertjax export --checkpoint=DIR "
                        "--format=hf --out=DIR")
    task = export(FLAGS.checkpoint, FLAGS.format, FLAGS.out, FLAGS.vocab, FLAGS.overwrite,
                  merge_lora=FLAGS.merge_lora, base=FLAGS.base)
    print(f"wrote {task} model as {FLAGS.format} to {FLAGS.out}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
