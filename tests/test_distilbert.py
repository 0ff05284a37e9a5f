"""DistilBERT end to end: a Hugging Face directory written by transformers' own save_pretrained
(model and a WordPiece DistilBertTokenizer made here from the toy vocabulary, so it holds
tokenizer.json only) converts with `bertjax convert`, exports back as a DistilBERT that
transformers loads cleanly, tokenizes the same way (no token_type_ids) and runs to the same
logits; it fine-tunes on a toy GLUE task, and the fine-tuned classifier exports to a
DistilBertForSequenceClassification with our logits. The per-class parity, both directions, is in
test_hf_parity.py."""
import dataclasses
import os
import re

import numpy as np
import pytest
import torch
import transformers
from cli_support import one_line, run_cli
from finetune_support import compile_cache, recipe, tiny  # noqa: F401  (autouse fixture)

import toy_tasks as toy
from bertjax.errors import UserError
from bertjax.finetuning import run as ft_run
from bertjax.interop import layouts
from bertjax.load import model_files
from bertjax.model import BertConfig
from bertjax.tools import export as export_lib

CLEAN = ("missing_keys", "unexpected_keys", "mismatched_keys")
TEXTS = ["Anna lives in Paris.", "the big dog sees a red bird near the tree!", "Kofi works"]


def _perturbed(model):
    # Random init leaves biases and LayerNorms at 0/1; perturbed, a swapped tensor shows.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def distil_hf(tmp_path_factory):
    """DistilBertForMaskedLM with odd sizes (dim 48, 3 heads, FFN 37), saved with its tokenizer by
    transformers."""
    root = tmp_path_factory.mktemp("distilbert")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(toy.toy_vocab()) + "\n", encoding="utf-8")
    tok = transformers.DistilBertTokenizer(vocab=str(vocab))
    torch.manual_seed(0)
    config = transformers.DistilBertConfig(vocab_size=len(tok), dim=48, n_layers=2, n_heads=3,
                                           hidden_dim=37, max_position_embeddings=64)
    model = _perturbed(transformers.DistilBertForMaskedLM(config))
    path = root / "hf"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    assert "vocab.txt" not in os.listdir(path)
    return str(path), model, tok


def _logits(model, tok, texts=TEXTS, pair=None):
    enc = tok(texts, pair, padding=True, return_tensors="pt")
    with torch.no_grad():
        return enc, model(**enc).logits.numpy()


def _loads_cleanly(cls, path):
    model, info = cls.from_pretrained(path, output_loading_info=True)
    assert not any(info[k] for k in CLEAN), info
    return model.eval()


def test_convert_and_export_round_trip_with_equal_ids_and_logits(distil_hf, tmp_path):
    path, hf_model, hf_tok = distil_hf
    ckpt = str(tmp_path / "ckpt")
    proc = run_cli("convert", f"--from_hf={path}", f"--out={ckpt}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, cfg, task, _, _ = model_files.load_model(ckpt)
    assert (cfg.arch, task, cfg.type_vocab_size, cfg.pooler_act) == ("distilbert", "masked_lm", 0,
                                                                     "relu")
    out = str(tmp_path / "export")
    export_lib.export(ckpt, "hf", out)

    auto = transformers.AutoTokenizer.from_pretrained(out)
    assert isinstance(auto, transformers.DistilBertTokenizer) and auto.model_max_length == 64
    for a, b in [(t, None) for t in TEXTS] + [(TEXTS[0], TEXTS[1])]:
        enc = auto(a, b)
        assert "token_type_ids" not in enc and enc["input_ids"] == hf_tok(a, b)["input_ids"]
    back = _loads_cleanly(transformers.DistilBertForMaskedLM, out)
    assert not back.config.sinusoidal_pos_embds and back.config.activation == "gelu"
    enc, want = _logits(hf_model, hf_tok)
    _, got = _logits(back, auto)
    assert np.abs(got - want).max() < 1e-5
    # Ours on the same ids, every position (the MLM head gathers the positions it is given).
    ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
    positions = np.tile(np.arange(ids.shape[1]), (len(TEXTS), 1)).astype(np.int32)
    mine = np.asarray(model(ids, np.zeros_like(ids), mask, positions)["mlm_logits"])
    real = mask.astype(bool)
    assert np.abs(mine[real] - want[real]).max() < 1e-4


@pytest.mark.slow
def test_fine_tunes_on_glue_and_exports_a_sequence_classifier(distil_hf, tmp_path):
    path, _, hf_tok = distil_hf
    glue_dir = str(tmp_path / "glue")
    toy.make_toy_glue_dir(glue_dir, "sst2", n_train=32, n_dev=16, n_test=4)
    cfg = tiny(recipe("glue", "sst2"), path, epochs=1)
    cfg.task.data_dir = glue_dir
    work = str(tmp_path / "sst2")
    dev = ft_run.finetune(cfg, work)["runs"][0]["dev"]
    assert np.isfinite(dev["accuracy"]), dev
    ckpt = os.path.join(work, "seed-0", "best")
    model, mcfg, task, _, _ = model_files.load_model(ckpt)
    assert (mcfg.arch, task) == ("distilbert", "sequence_classification")
    out = str(tmp_path / "export")
    export_lib.export(ckpt, "hf", out)
    back = _loads_cleanly(transformers.DistilBertForSequenceClassification, out)
    enc, want = _logits(back, transformers.AutoTokenizer.from_pretrained(out), TEXTS[:2],
                        TEXTS[1:])
    assert "token_type_ids" not in enc
    ids, mask = enc["input_ids"].numpy(), enc["attention_mask"].numpy()
    mine = np.asarray(model(ids, np.zeros_like(ids), mask)["logits"])
    assert np.abs(mine - want).max() < 1e-4


def test_sinusoidal_positions_end_in_one_line(tmp_path):
    config = transformers.DistilBertConfig(vocab_size=40, dim=12, n_layers=1, n_heads=2,
                                           hidden_dim=16, max_position_embeddings=16,
                                           sinusoidal_pos_embds=True)
    transformers.DistilBertModel(config).save_pretrained(tmp_path / "hf")
    proc = run_cli("convert", f"--from_hf={tmp_path / 'hf'}", f"--out={tmp_path / 'ckpt'}")
    one_line(proc, "sinusoidal_pos_embds")
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("knobs,needle", [
    (dict(type_vocab_size=2), "type_vocab_size=2"),
    (dict(layer_norm_eps=1e-5), "layer_norm_eps=1e-05"),
    (dict(pooler_act="tanh"), "pooler_act='tanh'"),
])
def test_a_model_hf_distilbert_cannot_hold_is_refused_on_export(knobs, needle):
    # The table refuses before it reads a weight, so no model needs building.
    cfg = BertConfig(arch="distilbert", vocab_size=40, hidden_size=12, num_layers=1, num_heads=2,
                     intermediate_size=16, type_vocab_size=0, pooler_act="relu")
    layout = layouts.for_arch("distilbert")
    assert layout.entries(cfg, "sequence_classification")
    with pytest.raises(UserError, match=re.escape(needle)):
        layout.ours_to_hf({}, dataclasses.replace(cfg, **knobs), "sequence_classification")
