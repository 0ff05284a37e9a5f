"""DeBERTa-v2/v3 (`model.arch=deberta-v2`): the log buckets equal transformers' for every
distance; a 600-token sequence through a model with v3's 256 buckets (so distances past the
exact +/-128 range and past 512) matches DebertaV2Model; an export with a SentencePiece
vocabulary is an spm.model that AutoTokenizer loads as a DebertaV2Tokenizer with our ids, and a
DebertaV2ForSequenceClassification with our logits; the recipe's shapes are Hugging Face's
parameter counts; bad input ends in one line. The per-class parity, both directions, is in
test_hf_parity.py (member "deberta-v2"); fine-tuning on every task from a DeBERTa directory in
test_roberta.py."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import transformers
from cli_support import one_line, run_cli
from finetune_support import recipe
from flax import nnx
from transformers.models.deberta_v2 import modeling_deberta_v2 as hf_deberta

import deberta_support
from bertjax.errors import UserError
from bertjax.interop import params as interop
from bertjax.load import model_files
from bertjax.model import BertConfig, build_model, count_params
from bertjax.model.attention import relative_index
from bertjax.train.optim import layer_depth

TOL = 1e-4


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("seq,buckets,max_distance", [(600, 256, 512), (300, 16, 128),
                                                       (40, 8, 10), (20, 0, 0)])
def test_relative_index_is_transformers_for_every_distance(seq, buckets, max_distance):
    span = buckets or max_distance or 512
    ref = hf_deberta.build_relative_position(torch.zeros(1, seq, 1), torch.zeros(1, seq, 1),
                                             bucket_size=buckets or -1,
                                             max_position=max_distance or -1)[0].numpy()
    want = np.clip(ref + span, 0, 2 * span - 1)
    got = relative_index(seq, span, buckets, max_distance)
    np.testing.assert_array_equal(got, want)
    if buckets:
        # The log-spaced range is reached: distances past buckets/2 share buckets.
        assert len(np.unique(got[:, 0])) < seq


def test_600_tokens_at_256_buckets_match_transformers(tmp_path):
    torch.manual_seed(5)
    config = transformers.DebertaV2Config(
        vocab_size=99, hidden_size=24, num_hidden_layers=1, num_attention_heads=3,
        intermediate_size=37, max_position_embeddings=512, **{**deberta_support.KNOBS,
                                                              "position_buckets": 256,
                                                              "max_relative_positions": -1})
    hf = _perturb(transformers.DebertaV2Model(config))
    hf.save_pretrained(tmp_path / "hf")
    model, cfg, task, report = interop.load_hf(str(tmp_path / "hf"))
    assert (task, cfg.position_buckets, cfg.relative_span) == ("base", 256, 256)
    assert report == {"missing": [], "unexpected": []}
    rng = np.random.default_rng(5)
    ids = rng.integers(5, 99, size=(2, 600)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 450:] = 0
    seq, pooled = model(ids, np.zeros_like(ids), mask)
    assert pooled is None  # DebertaV2Model has no pooler
    with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids).long(),
                  attention_mask=torch.tensor(mask).long()).last_hidden_state.numpy()
    real = mask.astype(bool)
    assert np.abs(np.asarray(seq)[real] - want[real]).max() < TOL


def test_export_with_spm_model_loads_as_deberta_tokenizer_with_equal_ids_and_logits(tmp_path):
    from bertjax.text import load_tokenizer
    from bertjax.tools import export as export_lib

    spm_dir = deberta_support.train_spm(str(tmp_path / "vocab"))
    tok = load_tokenizer(spm_dir)
    cfg = BertConfig.from_dict({
        **{k: v for k, v in BertConfig().to_dict().items() if not k.startswith("lora_")},
        "arch": "deberta-v2", "vocab_size": tok.vocab_size, "hidden_size": 24, "num_layers": 2,
        "num_heads": 3, "intermediate_size": 37, "max_position_embeddings": 64,
        "type_vocab_size": 0, "position_biased_input": False, "relative_attention": True,
        "pos_att_type": "c2p|p2c", "position_buckets": 8, "norm_rel_ebd": "layer_norm",
        "layer_norm_eps": 1e-7, "pooler_act": "gelu", "num_labels": 3})
    model = build_model("sequence_classification", cfg, seed=2)
    rng = np.random.default_rng(2)
    interop.set_flat_params(model, {k: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype)
                                    for k, v in interop.flat_params(model).items()})
    model_files.save_checkpoint(str(tmp_path / "ckpt"), model, cfg, "sequence_classification",
                                extra_files=model_files.tokenizer_extras(spm_dir))
    out = tmp_path / "hf"
    export_lib.export(str(tmp_path / "ckpt"), "hf", str(out))
    assert (out / "spm.model").read_bytes() == open(os.path.join(spm_dir, "spiece.model"),
                                                    "rb").read()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "deberta-v2" and config["share_att_key"] is True
    assert config["architectures"] == ["DebertaV2ForSequenceClassification"]

    texts = deberta_support.toy_texts(seed=3, n=40)
    pairs = list(zip(texts[:20], texts[20:]))
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    assert isinstance(auto, transformers.DebertaV2Tokenizer)
    os.remove(out / "tokenizer.json")  # and from spm.model alone
    from_spm = transformers.DebertaV2Tokenizer.from_pretrained(str(out))
    for a, b in pairs:
        ids, seg = tok.build_inputs(tok.encode(a), tok.encode(b))
        for hf_tok in (auto, from_spm):
            ref = hf_tok(a, b)
            assert ids == ref["input_ids"] and seg == ref["token_type_ids"], (a, b)

    hf, info = transformers.DebertaV2ForSequenceClassification.from_pretrained(
        str(out), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    enc = auto([a for a, _ in pairs[:4]], [b for _, b in pairs[:4]], padding=True,
               return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    assert ids.shape[1] > 8  # past the exact bucket range (+/- 4)
    ours = np.asarray(model(ids, np.zeros_like(ids), mask)["logits"])
    with torch.no_grad():
        want = hf.eval()(input_ids=torch.tensor(ids).long(),
                         attention_mask=torch.tensor(mask).long()).logits.numpy()
    assert np.abs(ours - want).max() < TOL


@pytest.mark.parametrize("preset", ["xsmall", "small", "base"])
def test_recipe_shapes_have_hugging_faces_parameter_counts(preset):
    c = recipe("deberta", preset)
    cfg = BertConfig.from_dict(c.model.to_dict())
    ours = count_params(nnx.eval_shape(lambda: build_model("base", cfg)))
    with torch.device("meta"):
        hf = transformers.DebertaV2Model(transformers.DebertaV2Config(
            vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size, max_position_embeddings=512,
            **{**deberta_support.KNOBS, "position_buckets": 256, "max_relative_positions": -1}))
    assert ours == sum(p.numel() for p in hf.parameters())
    # Under layer decay the shared relative table runs at the top layer's rate.
    assert layer_depth(("bert", "encoder", "relative", "table", "embedding"),
                       cfg.num_layers) == cfg.num_layers


def test_v1_and_splash_end_in_one_line_and_conv_is_refused(tmp_path):
    transformers.DebertaModel(transformers.DebertaConfig(
        vocab_size=40, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16)).save_pretrained(tmp_path / "v1")
    proc = run_cli("convert", f"--from_hf={tmp_path / 'v1'}", f"--out={tmp_path / 'out'}")
    one_line(proc, "model_type 'deberta'", "not supported yet, use v2/v3")
    assert not (tmp_path / "out").exists()

    proc = run_cli("plan", "--config=configs/deberta.py:tiny", "--topology=v5e:2x2",
                   "--config.model.attention_backend=splash")
    one_line(proc, "attention_backend='splash'", "takes no bias terms")

    config = transformers.DebertaV2Config(
        vocab_size=40, hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16, conv_kernel_size=3, conv_act="gelu",
        **deberta_support.KNOBS)
    transformers.DebertaV2Model(config).save_pretrained(tmp_path / "conv")
    with pytest.raises(UserError, match="conv_kernel_size 3 .*nGiE.* not support"):
        interop.load_hf(str(tmp_path / "conv"))


def test_a_model_hf_deberta_cannot_hold_is_refused_on_export():
    cfg = BertConfig(arch="deberta-v2", vocab_size=40, hidden_size=12, num_layers=1,
                     num_heads=2, intermediate_size=16, type_vocab_size=0,
                     position_biased_input=False, relative_attention=True, pos_att_type="c2p",
                     pooler_act="gelu")
    with pytest.raises(UserError, match="embedding_size=8"):
        interop.layouts.for_arch("deberta-v2").ours_to_hf(
            {}, dataclasses.replace(cfg, embedding_size=8), "base")
