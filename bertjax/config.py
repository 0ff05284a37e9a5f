"""The one config schema. Every leaf has a typed default so any of them can be overridden from the
command line (a None default cannot be, see ml_collections #33); recipes in configs/ start here."""
from __future__ import annotations

import dataclasses

import ml_collections as mlc

from bertjax.data.masking import MODES as MASKING_MODES
from bertjax.data.tasks.glue import SOURCES as GLUE_SOURCES
from bertjax.errors import UserError
from bertjax.model.attention import BACKENDS
from bertjax.model.bert import TASK_MODELS
from bertjax.model.archs import ARCHS
from bertjax.model import lora as lora_lib
from bertjax.model.electra import SHARING as ELECTRA_SHARING
from bertjax.model.encoder import ACTIVATIONS, DTYPES, REMAT_POLICIES, BertConfig
from bertjax.model.presets import PRESETS
from bertjax.train.objectives import OBJECTIVES
from bertjax.train.optim import OPTIMIZERS, SCHEDULES, check_layer_decay


def model_config(preset: str = "base", arch: str = "bert") -> mlc.ConfigDict:
    """The model section: every BertConfig field at its default (model/encoder.py documents
    each), then the member's knobs (model/archs.py), then the size preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    # The lora_* fields come from the run's `lora` section (lora_fields), not the model's.
    fields = {f.name: f.default for f in dataclasses.fields(BertConfig)
              if not f.name.startswith("lora_")}
    return mlc.ConfigDict({**fields, **ARCHS[arch], "arch": arch, **PRESETS[preset]})


def base_config(preset: str = "base", arch: str = "bert") -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.model = model_config(preset, arch)
    c.data = mlc.ConfigDict(
        dict(
            train_dir="",
            eval_dir="",
            max_seq_length=128,
            max_predictions_per_seq=20,
            # "" = as prepared (metadata.json); "static" | "dynamic" to override.
            masking="",
            shuffle_buffer=10000,
            prefetch=2,
            # prepared: read data.train_dir (made by `bertjax prepare`); text: build the pairs
            # on the fly from data.text_files (globs, comma-separated, local or gs://) with the
            # tokenizer at data.vocab (bertjax/data/stream.py). The keys below are prepare's
            # flags of the same names and apply to text only (prepared data carry their own);
            # masking "" means static there, as prepare's default.
            source="prepared",
            text_files="",
            vocab="",
            pair_task="nsp",
            short_seq_prob=0.1,
            masked_lm_prob=0.15,
            whole_word_masking=False,
            masking_ngram=1,
            mask_budget="sequence",
            format="auto",
            partner_pool=100,
            # true: every epoch reuses epoch 0's pairs (as prepared data with dupe_factor=1);
            # false: new segment boundaries, partners and truncations each epoch.
            keep_epoch0_pairs=False,
            stream_workers=0,  # processes building pairs; 0 = every core this process may use
        )
    )
    c.optim = mlc.ConfigDict(
        dict(
            name="adamw",
            learning_rate=1e-4,
            schedule="linear",  # linear | cosine | constant | rsqrt
            warmup_steps=10000,
            end_lr_fraction=0.0,
            weight_decay=0.01,
            b1=0.9,
            b2=0.999,
            eps=1e-6,
            clip_norm=1.0,
            # The original BERT optimizer skips Adam bias correction.
            bias_correction=False,
            # Layer-wise learning-rate decay d in (0, 1]: lr * d**(L + 2 - depth), embeddings at
            # depth 0, layer i at i + 1, heads at L + 2 (train/optim.py). 1.0 = off; ELECTRA
            # fine-tunes with 0.8 (small/base) or 0.9 (large).
            layer_decay=1.0,
        )
    )
    c.train = mlc.ConfigDict(
        dict(
            batch_size=256,
            num_steps=1000000,
            grad_accum_steps=1,
            seed=0,
            log_every=100,
            eval_every=10000,
            eval_steps=100,
            checkpoint_every=10000,
            keep_checkpoints=3,
            async_checkpointing=True,
            profile_start_step=-1,
            profile_num_steps=5,
            debug_nans=False,
            plot=True,
        )
    )
    # What the step computes (bertjax.train.objectives.OBJECTIVES); "auto" = what the run is:
    # mlm_nsp or mlm from the prepared data, the task family's objective when fine-tuning.
    # mask_rate and disc_weight are ELECTRA's (objective.name=electra): the share of real tokens
    # the step masks (0.15; 0.25 for large) and the discriminator loss's weight (50);
    # embedding_sharing how its generator and discriminator share embeddings (plain: one set, as
    # ELECTRA; gdes: DeBERTa-v3's gradient-disentangled sharing; none: separate) and
    # generator_num_layers the generator's depth (0 = the discriminator's; DeBERTa-v3: half).
    c.objective = mlc.ConfigDict(dict(name="auto", mask_rate=0.15, disc_weight=50.0,
                                      embedding_sharing="plain", generator_num_layers=0))
    c.mesh = mlc.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.distributed = mlc.ConfigDict(
        dict(
            coordinator_address="",
            num_processes=1,
            process_id=0,
            initialization_timeout=300,
        )
    )
    # A checkpoint (bertjax or converted HF) whose params initialise the model; "" = from scratch.
    c.init_from = ""
    c.lock()
    return c


FINETUNE_FAMILIES = {
    "glue": "sequence_classification",
    "squad": "question_answering",
    "ner": "token_classification",
    "embeddings": "sentence_embedding",
}


# Every family's task section: what the driver reads for all of them.
_TASK_COMMON = dict(
    # GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli), "v1"/"v2" for SQuAD, a free
    # name for NER.
    name="",
    # GLUE: a GLUE directory (or one task's directory) or a TFDS data_dir holding glue/<task>;
    # SQuAD and NER: the directory the *_file names are relative to.
    data_dir="",
    vocab="",  # "" = the vocabulary stored with init_from
    epochs=3.0,
    warmup_fraction=0.1,
    eval_batch_size=0,  # 0 = train.batch_size
    eval_every=0,  # steps; 0 = once per epoch
    best_metric="",  # "" = the task's main dev metric
)
# What only one family reads; another family's key is an unknown key (refused at parse).
_TASK_FAMILY = {
    "glue": dict(
        source="auto",  # tsv | tfds | auto (TSV files when present)
        predict_test=False,  # write submission TSVs for the test split(s)
    ),
    "squad": dict(
        train_file="",  # SQuAD JSON; relative to data_dir unless absolute
        predict_file="",  # the JSON to predict and score (the dev set)
        doc_stride=128,
        max_query_length=64,
        n_best=20,
        max_answer_length=30,
        version_2=False,
        # SQuAD 2.0: "no answer" where null odds (null score - best span score) exceed this,
        # until a threshold is tuned on dev. 1.0 is the official evaluate-v2.0.py
        # --na-prob-thresh default, applied to null_odds as the original BERT README feeds them
        # to it (run_squad.py's own default margin was 0.0).
        null_threshold=1.0,
    ),
    "ner": dict(
        train_file="",  # CoNLL column files, relative to data_dir unless absolute
        dev_file="",
        test_file="",  # "" = none
    ),
    # Sentence embeddings (bertjax/finetuning/embedding_task.py): JSONL of {"query", "positive",
    # "negatives"} (infonce), {"text_a", "text_b", "score"} (cosent, cosine_mse) or
    # {"text_a", "text_b", "label"} (sbert_softmax) or {"text"} with task.teacher (embedding_mse);
    # objective.name=auto picks from the data.
    "embeddings": dict(
        train_file="",
        dev_file="",
        # mean | cls | last; "" = the start model's (init_from a sentence-transformers
        # directory or an embedding checkpoint), else mean
        pooling="",
        normalize=True,  # L2-normalise the pooled vector
        temperature=0.05,  # InfoNCE's tau (sentence-transformers' scale 20); E5/BGE use 0.01-0.02
        symmetric=False,  # InfoNCE: also passage -> query as a second softmax, averaged
        # InfoNCE's one denominator: query_to_doc plus any of query_to_query, doc_to_query,
        # doc_to_doc (GTE's improved contrastive loss), comma-separated
        directions="query_to_doc",
        scale=20.0,  # CoSENT's scale
        num_negatives=-1,  # hard negatives per query (static shape); -1 = the most any row has
        query_length=0,  # query tokens; 0 = data.max_seq_length
        query_prefix="",  # e.g. E5's "query: ", BGE's instruction; also on both texts of pairs
        passage_prefix="",  # e.g. E5's "passage: "
        # an empty query_prefix/passage_prefix takes the start model's query/document prompt;
        # false trains (and exports) with none
        prompts_from_start=True,
        # > 0: gradient caching, the encoder runs over chunks of this many texts (GradCache);
        # the batch can then exceed what one forward pass holds in memory
        mini_batch=0,
        # Sentence data ({"text"} rows): the teacher whose embeddings the student learns
        # (embedding_mse, sentence-transformers' model distillation); any checkpoint embed reads.
        teacher="",
    ),
}


# The data keys that only data.source=text reads (prepared data carry their own, in
# metadata.json): set with prepared data they would change nothing, silently.
TEXT_ONLY_DATA_KEYS = ("text_files", "vocab", "pair_task", "short_seq_prob", "masked_lm_prob",
                       "whole_word_masking", "masking_ngram", "mask_budget", "format",
                       "partner_pool", "keep_epoch0_pairs", "stream_workers")


def check_data_source(data) -> None:
    """Refuses keys of the other source: text-only keys changed with prepared data, or
    data.train_dir with text."""
    if data.source == "text":
        if data.train_dir:
            raise UserError("data.train_dir is read by data.source=prepared only; with "
                            "data.source=text the pairs come from data.text_files: drop one")
        return
    defaults = base_config().data
    changed = [k for k in TEXT_ONLY_DATA_KEYS if data[k] != defaults[k]]
    if changed:
        raise UserError(f"data.{changed[0]} applies to data.source=text only (prepared data carry "
                        "their own settings, made by `bertjax prepare`): set "
                        "--config.data.source=text or drop " + ", ".join(f"data.{k}" for k in changed))


def shaped_config(recipe: str, shapes: dict, arg: str, arch: str, base: str = "base"):
    """A member recipe's starting point: base_config(base, arch) with the preset's (layers,
    hidden, heads, FFN) from `shapes`; a preset not in `shapes` is refused naming the recipe."""
    preset = arg or "base"
    if preset not in shapes:
        raise ValueError(f"{recipe} takes one of {sorted(shapes)}, not {arg!r}")
    c = base_config(base, arch=arch)
    m = c.model
    m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size = shapes[preset]
    return c


def finetune_config(preset: str = "base", family: str = "glue",
                    arch: str = "bert") -> mlc.ConfigDict:
    """base_config plus a `task` section and `seeds`, for `bertjax finetune`.

    The model's shape comes from `init_from` when given (the recipe's preset only matters when
    training from scratch); data.max_seq_length is the task's sequence length. num_steps,
    warmup_steps and eval_every are derived from the training-set size (task.epochs,
    task.warmup_fraction, task.eval_every), and checkpoint_every is capped at eval_every, so the
    values here are placeholders: the run plan holds what a run uses (run_plan.json). The task
    section holds the keys every family reads plus its own family's."""
    if family not in FINETUNE_FAMILIES:
        raise ValueError(f"unknown fine-tuning family {family!r}; choose one of "
                         f"{sorted(FINETUNE_FAMILIES)}")
    c = base_config(preset, arch)
    with c.unlocked():
        # N > 1 trains N runs (seeds train.seed .. train.seed + N - 1) in <workdir>/seed-K and
        # reports the mean and spread of their best dev metric.
        c.seeds = 1
        c.task = mlc.ConfigDict({**_TASK_COMMON, "family": family,
                                 "model_task": FINETUNE_FAMILIES[family],
                                 **_TASK_FAMILY[family]})
        c.train.batch_size = 32
        c.train.log_every = 50
        c.train.keep_checkpoints = 1
        c.optim.learning_rate = 2e-5
        c.optim.warmup_steps = 0
        # LoRA (model/lora.py): adapters of rank r on `targets` (query, key, value,
        # attention_output, intermediate, output, or all), the update scaled by alpha/r; only
        # they and the task head train, the base stays frozen and out of the checkpoints.
        c.lora = mlc.ConfigDict(dict(enabled=False, rank=8, alpha=8.0, dropout=0.0,
                                     targets=lora_lib.DEFAULT_TARGETS))
    return c


def check_lora(section) -> None:
    """The `lora` section: its values when enabled; a changed value while it is off (a run that
    would silently fine-tune every weight) is refused too."""
    if section.enabled:
        lora_lib.check(section.rank, section.alpha, section.dropout, section.targets)
        return
    defaults = dict(rank=8, alpha=8.0, dropout=0.0, targets=lora_lib.DEFAULT_TARGETS)
    changed = [k for k, v in defaults.items() if section[k] != v]
    if changed:
        raise UserError(f"lora.{changed[0]} is set but lora.enabled is false; add "
                        "--config.lora.enabled=true to fine-tune with LoRA")


def lora_fields(cfg) -> dict:
    """The model fields (BertConfig.lora_*) of a config's `lora` section; {} without LoRA."""
    section = cfg.get("lora")
    if section is None or not section.enabled:
        return {}
    return {"lora_rank": int(section.rank), "lora_alpha": float(section.alpha),
            "lora_dropout": float(section.dropout), "lora_targets": str(section.targets)}


# Config keys whose value must be one of a fixed set, with the set taken from the code that acts
# on it, so a typo fails at parse (before any data is read or any compile) and the list can never
# drift from what the code accepts.
CHOICES: dict[str, tuple[str, ...]] = {
    "model.arch": tuple(ARCHS),
    "model.attention_backend": tuple(BACKENDS),
    "model.hidden_act": tuple(ACTIVATIONS),
    "model.remat": tuple(REMAT_POLICIES),
    "model.dtype": DTYPES,
    "model.param_dtype": DTYPES,
    "optim.name": tuple(OPTIMIZERS),
    "objective.name": ("auto", *OBJECTIVES),
    "objective.embedding_sharing": ELECTRA_SHARING,
    "optim.schedule": tuple(SCHEDULES),
    "data.masking": ("", *MASKING_MODES),  # "" = as prepared
    "data.source": ("prepared", "text"),
    "data.pair_task": ("nsp", "sop", "none"),
    "task.family": tuple(FINETUNE_FAMILIES),
    "task.model_task": tuple(TASK_MODELS),
    "task.source": GLUE_SOURCES,
    "task.pooling": ("", "mean", "cls", "last"),
}


# Numeric keys checked at parse by the code that acts on them (each check raises a UserError
# naming its key), for the same reason.
CHECKS = {
    "optim.layer_decay": check_layer_decay,
    "lora": check_lora,
}


def _lookup(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node.get(part) if hasattr(node, "get") else None
    return node


def check_choices(cfg) -> None:
    """Raises UserError naming the allowed values for the first enum-like key set to another,
    then runs CHECKS. Keys a config does not have (a pretraining config has no task) are
    skipped."""
    for key, allowed in CHOICES.items():
        node = _lookup(cfg, key)
        if node is not None and node not in allowed:
            shown = ", ".join(repr(a) if a == "" else a for a in allowed)
            raise UserError(f"{key}={node!r} is not one of {shown}; set --config.{key} to one "
                            "of them")
    for key, check in CHECKS.items():
        node = _lookup(cfg, key)
        if node is not None:
            check(node)
