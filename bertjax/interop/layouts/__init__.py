"""One two-way table per architecture, dispatched on Hugging Face's `model_type` (reading) or our
`model.arch` (writing). convert, export, embed, fill-mask, init_from and the original-TF import
all come through here."""
from __future__ import annotations

from bertjax.errors import UserError
from bertjax.interop.layouts import albert, bert, deberta_v2, distilbert, electra, roberta
from bertjax.interop.layouts.common import Entry, Layout  # noqa: F401

LAYOUTS: dict[str, Layout] = {m.LAYOUT.model_type: m.LAYOUT
                              for m in (bert, roberta, electra, albert, distilbert, deberta_v2)}
_BY_ARCH = {layout.arch: layout for layout in LAYOUTS.values()}


def for_hf_config(hf: dict) -> Layout:
    model_type = hf.get("model_type", "bert")
    if model_type == "deberta":
        raise UserError("config.json has model_type 'deberta' (DeBERTa v1): not supported yet, "
                        "use v2/v3 (model_type 'deberta-v2')")
    if model_type not in LAYOUTS:
        raise UserError(f"config.json has model_type {model_type!r}, which bertjax does not "
                        f"convert; it reads {', '.join(sorted(LAYOUTS))}")
    return LAYOUTS[model_type]


def for_arch(arch: str) -> Layout:
    if arch not in _BY_ARCH:
        raise UserError(f"model.arch={arch!r} has no Hugging Face layout; bertjax writes "
                        f"{', '.join(sorted(_BY_ARCH))}")
    return _BY_ARCH[arch]


def task_from_hf_config(hf: dict) -> str:
    return for_hf_config(hf).task_from_hf_config(hf)


def config_from_hf(hf: dict) -> dict:
    return for_hf_config(hf).config_from_hf(hf)
