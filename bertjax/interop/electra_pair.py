"""ELECTRA's two networks as Hugging Face holds them: two directories, `discriminator/`
(ElectraForPreTraining) and `generator/` (ElectraForMaskedLM at the generator's width and depth),
each with its own copy of the shared embeddings; for DeBERTa-v3, DebertaV2Model with the RTD head
beside it and DebertaV2ForMaskedLM. `split` makes the two models of an `electra_pretraining`
model; `join` makes one back from the two, refusing a pair that does not belong together.

Whatever the run's `embedding_sharing`, each directory holds the embeddings its network computes
with: under "gdes" the discriminator's token table is written as its effective table, the
generator's shared table + the residual (so ElectraForPreTraining runs it as our
discriminator), and the generator's as the shared table alone; under "none" each its own. Such a
pair no longer shares one set of embeddings, so `join` refuses it: import either directory alone
(the discriminator to fine-tune it).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from bertjax.errors import UserError
from bertjax.interop import hf_dir, layouts, params as interop
from bertjax.model.electra import (GDES_RESIDUAL, GDES_SHARED, SHARED_EMBEDDINGS,
                                   build_pretraining)
from bertjax.model.encoder import BertConfig

PRETRAINING = "electra_pretraining"
PARTS = {"discriminator": "replaced_token_detection", "generator": "masked_lm"}
# The HF model types a pair is written in: ELECTRA's own, and DeBERTa-v3's (its discriminator as
# DebertaV2Model with our RTD head beside it, interop/layouts/deberta_v2.py).
PAIR_MODEL_TYPES = ("electra", "deberta-v2")
_NO_GENERATOR = dict(generator_hidden_size=0, generator_num_heads=0, generator_intermediate_size=0)


def is_pair_dir(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, part, "config.json")) for part in PARTS)


def _generator_fields(gen: dict) -> dict:
    return dict(generator_hidden_size=gen["hidden_size"], generator_num_heads=gen["num_heads"],
                generator_intermediate_size=gen["intermediate_size"])


def model_config(path: str) -> dict:
    """Our model fields of a pair directory: the discriminator's, with the generator's widths."""
    disc, gen = (layouts.config_from_hf(hf_dir.read_config(os.path.join(path, part)))
                 for part in PARTS)
    return {**disc, **_generator_fields(gen)}


def _shared(key: tuple) -> bool:
    return key[:2] == ("bert", "embeddings") and key[2] in SHARED_EMBEDDINGS


_WORD = ("bert", "embeddings", "word_embeddings")


def split(flat: dict[tuple, np.ndarray], cfg: BertConfig,
          gen_cfg: BertConfig | None = None) -> dict[str, tuple]:
    """{part: (cfg, task, flat params)} of an electra_pretraining model's parameters. Tables the
    networks share sit under the discriminator's path (nnx keeps a shared array once, at its
    first path); the generator gets them under its own `bert/embeddings` unless it has its own.
    A gdes residual is added into the discriminator's token table. `gen_cfg` is the generator's
    encoder config (its depth may be less than the discriminator's); default: the same depth."""
    disc = {k: v for k, v in flat.items() if k[0] in ("bert", "discriminator")}
    residual = disc.pop(_WORD + (GDES_RESIDUAL,), None)
    gen = {("bert",) + k[1:]: v for k, v in flat.items() if k[0] == "generator"}
    gen.update({k: v for k, v in flat.items() if k[0] == "mlm" or (_shared(k) and k not in gen)})
    if residual is not None:
        # GDES: what the discriminator computes with is stop_gradient(shared) + residual.
        disc[_WORD + (GDES_SHARED,)] = disc[_WORD + (GDES_SHARED,)] + residual
    return {"discriminator": (dataclasses.replace(cfg, **_NO_GENERATOR), PARTS["discriminator"],
                              disc),
            "generator": (gen_cfg or cfg.generator_config(), PARTS["generator"], gen)}


def join(disc_cfg: BertConfig, disc: dict, gen_cfg: BertConfig, gen: dict,
         where: str) -> tuple[BertConfig, dict]:
    """(cfg, flat params) of the electra_pretraining model made of a discriminator and a
    generator; they must share the architecture, vocabulary, embedding width and embedding
    values, and the generator may be shallower (DeBERTa-v3's is half as deep)."""
    checks = (("arch", "architecture"), ("vocab_size", "vocabulary"),
              ("embedding_width", "embedding width"),
              ("max_position_embeddings", "position table"), ("type_vocab_size", "segment table"))
    for attr, what in checks:
        a, b = getattr(disc_cfg, attr), getattr(gen_cfg, attr)
        if a != b:
            raise UserError(f"{where}: the generator's {what} ({b}) differs from the "
                            f"discriminator's ({a}); an ELECTRA pair shares them")
    if gen_cfg.num_layers > disc_cfg.num_layers:
        raise UserError(f"{where}: the generator ({gen_cfg.num_layers} layers) is deeper than the "
                        f"discriminator ({disc_cfg.num_layers}); an ELECTRA generator is as deep "
                        "or shallower")
    differ = [("/".join(k[2:])) for k, v in disc.items()
              if _shared(k) and not np.array_equal(v, gen.get(k))]
    if differ:
        raise UserError(f"{where}: the generator's embeddings differ from the discriminator's "
                        f"({', '.join(differ)}); ELECTRA pretraining shares one set, so this is "
                        "not a pair (import each directory alone to fine-tune it)")
    cfg = dataclasses.replace(disc_cfg, **_generator_fields(dataclasses.asdict(gen_cfg)))
    flat = dict(disc)
    flat.update({("generator",) + k[1:]: v for k, v in gen.items()
                 if k[0] == "bert" and not _shared(k)})
    flat.update({k: v for k, v in gen.items() if k[0] == "mlm"})
    return cfg, flat


def save_hf(model, cfg: BertConfig, out_dir: str, extra_files=()) -> None:
    """`out_dir/discriminator` and `out_dir/generator`, each a complete HF directory."""
    os.makedirs(out_dir, exist_ok=True)
    parts = split(interop.flat_params(model), cfg, model.generator.config)
    for part, (part_cfg, task, flat) in parts.items():
        interop.save_hf(interop.model_from_flat(task, part_cfg, flat), part_cfg, task,
                        os.path.join(out_dir, part), extra_files=extra_files)


def load_hf(path: str):
    """(model, cfg, task, report) of the electra_pretraining model in a pair directory."""
    loaded = {}
    for part, task in PARTS.items():
        sub = os.path.join(path, part)
        kind = hf_dir.read_config(sub).get("model_type")
        if kind not in PAIR_MODEL_TYPES:
            raise UserError(f"{sub} is not half of an ELECTRA-objective pair (config.json "
                            f"model_type {kind!r}; pairs are {', '.join(PAIR_MODEL_TYPES)})")
        model, cfg, _, _ = interop.load_hf(sub, task=task)
        loaded[part] = (cfg, interop.flat_params(model))
    (d_cfg, d_flat), (g_cfg, g_flat) = loaded["discriminator"], loaded["generator"]
    cfg, flat = join(d_cfg, d_flat, g_cfg, g_flat, path)
    model = interop.model_from_flat(PRETRAINING, cfg, flat, build=lambda: build_pretraining(
        cfg, generator_layers=g_cfg.num_layers))
    return model, cfg, PRETRAINING, {"missing": [], "unexpected": []}
