"""DeBERTa-v2/v3 (`model.arch=deberta-v2`): the log buckets equal transformers' for every
distance; a 600-token sequence through a model with v3's 256 buckets (so distances past the
exact +/-128 range and past 512) matches DebertaV2Model; an export with a SentencePiece
vocabulary is an spm.model that AutoTokenizer loads as a DebertaV2Tokenizer with our ids, and a
DebertaV2ForSequenceClassification with our logits; the recipe's shapes are Hugging Face's
parameter counts; bad input ends in one line. v3's tokenizer layout (an spm.model without [MASK],
which Hugging Face adds after the last piece) reads, from spm.model and from tokenizer.json, to
DebertaV2Tokenizer's ids, typed "[MASK]" included, and a wrong [MASK] id is refused. v3's
pretraining pair exports as DebertaV2Model plus our RTD head and a half-depth
DebertaV2ForMaskedLM, at transformers' outputs. The per-class parity, both directions, is in
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


def _v3_tokenizer_dirs(root):
    """DeBERTa-v3's tokenizer layout at toy size: an spm.model whose pieces are [PAD] [CLS] [SEP]
    [UNK] then words, with no [MASK] piece; (n pieces, the directory as v3's Hub copy spells it,
    Hugging Face's DebertaV2Tokenizer read from it, and what its save_pretrained writes)."""
    import sentencepiece as spm

    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(deberta_support.toy_texts()) + "\n", encoding="utf-8")
    v3 = root / "v3"
    v3.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(v3 / "spm"), vocab_size=130, model_type="unigram",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]",
        eos_piece="[SEP]", unk_piece="[UNK]", minloglevel=2)
    os.remove(v3 / "spm.vocab")
    n = spm.SentencePieceProcessor(model_file=str(v3 / "spm.model")).get_piece_size()
    (v3 / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "vocab_type": "spm"}))
    (v3 / "added_tokens.json").write_text(json.dumps({"[MASK]": n}))
    (v3 / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]",
         "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}))
    hf = transformers.DebertaV2Tokenizer.from_pretrained(str(v3))
    saved = root / "saved"
    hf.save_pretrained(str(saved))
    return n, v3, hf, saved


V3_TEXTS = ["Alice went to Paris.", "[MASK]", "Alice [MASK] to Paris [MASK]",
            "x[MASK]y [MASK][MASK] z", "  [MASK]  spaced   out  ", "[mask] MASK [MASK",
            "Free text with numbers 12 and Émile"]


def test_v3_tokenizer_with_added_mask_reads_as_hugging_face_does(tmp_path):
    import shutil

    from bertjax.text import load_tokenizer, tokenizer_files

    n, v3, hf, saved = _v3_tokenizer_dirs(tmp_path)
    # The facts of v3's layout, from Hugging Face: [MASK] follows the last piece.
    assert hf.mask_token_id == n and hf.cls_token_id == 1 and hf.sep_token_id == 2
    body = json.loads((saved / "tokenizer.json").read_text())
    assert len(body["model"]["vocab"]) == n
    assert {"id": n, "content": "[MASK]"}.items() <= next(
        a for a in body["added_tokens"] if a["content"] == "[MASK]").items()
    # spm.model beside the tokenizer_config.json Hugging Face writes (mask_token, no ids).
    from_config = tmp_path / "from_config"
    from_config.mkdir()
    shutil.copy(v3 / "spm.model", from_config / "spm.model")
    shutil.copy(saved / "tokenizer_config.json", from_config / "tokenizer_config.json")
    assert "added_tokens.json" in {os.path.basename(f) for f in tokenizer_files(str(v3))}

    pairs = [(a, None) for a in V3_TEXTS] + list(zip(V3_TEXTS, reversed(V3_TEXTS)))
    for where in (v3, from_config, saved):
        tok = load_tokenizer(str(where))
        assert (tok.mask_id, tok.vocab_size) == (n, n + 1), where
        assert tok.convert_ids_to_tokens([n]) == ["[MASK]"] and not tok.is_continuation(n)
        for a, b in pairs:
            ref = hf(a, b) if b is not None else hf(a)
            ids, seg = tok.build_inputs(tok.encode(a), None if b is None else tok.encode(b))
            assert ids == ref["input_ids"] and seg == ref["token_type_ids"], (where, a, b)
            assert (n in ids) == ("[MASK]" in a + (b or "")), (a, b)
        texts = [a for a, _ in pairs]
        assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
        assert tok.tokenize("a [MASK] b").count("[MASK]") == 1
    spm_ident = load_tokenizer(str(v3)).identity()
    assert spm_ident == load_tokenizer(str(from_config)).identity()
    assert spm_ident["vocab_size"] == n + 1 and spm_ident["added_tokens"] == {"[MASK]": n}
    # bertjax's own tokenizer.json of it gives Hugging Face's [MASK] id too.
    assert load_tokenizer(str(v3)).backend().token_to_id("[MASK]") == n

    # Another token added after [MASK] changes the identity of the tokenizer.json.
    body["added_tokens"].append({**body["added_tokens"][-1], "id": n + 1, "content": "[X]"})
    more = tmp_path / "more"
    more.mkdir()
    (more / "tokenizer.json").write_text(json.dumps(body))
    shutil.copy(saved / "tokenizer_config.json", more / "tokenizer_config.json")
    grown, base = load_tokenizer(str(more)).identity(), load_tokenizer(str(saved)).identity()
    assert grown["vocab_size"] == n + 2 and grown["vocab_sha256"] != base["vocab_sha256"]


def test_v3_tokenizer_with_a_wrong_mask_id_is_refused_in_one_line(tmp_path):
    from bertjax.text import load_tokenizer

    n, v3, _, saved = _v3_tokenizer_dirs(tmp_path)
    (v3 / "added_tokens.json").write_text(json.dumps({"[MASK]": n + 5}))
    with pytest.raises(UserError) as e:
        load_tokenizer(str(v3))
    assert "\n" not in str(e.value) and "[MASK]" in str(e.value) and str(n + 5) in str(e.value)
    (v3 / "added_tokens.json").write_text(json.dumps({"[MASK]": n, "[X]": n + 1}))
    with pytest.raises(UserError, match="X"):
        load_tokenizer(str(v3))
    body = json.loads((saved / "tokenizer.json").read_text())
    for a in body["added_tokens"]:
        if a["content"] == "[MASK]":
            a["id"] = n + 5  # a gap after the last piece
    (saved / "tokenizer.json").write_text(json.dumps(body))
    with pytest.raises(UserError) as e:
        load_tokenizer(str(saved))
    assert "\n" not in str(e.value) and "[MASK]" in str(e.value) and str(n + 5) in str(e.value)


def _v3_pair(sharing):
    """A v3-shaped ELECTRA-objective pair at toy size: the generator at the discriminator's
    width and half its depth, every weight perturbed off its initialisation (a gdes residual
    included)."""
    from bertjax.model.electra import build_pretraining

    cfg = BertConfig(arch="deberta-v2", vocab_size=99, hidden_size=24, num_layers=2, num_heads=3,
                     intermediate_size=37, max_position_embeddings=64, type_vocab_size=0,
                     position_biased_input=False, relative_attention=True,
                     pos_att_type="c2p|p2c", position_buckets=8, max_relative_positions=16,
                     norm_rel_ebd="layer_norm", layer_norm_eps=1e-7, pooler_act="gelu",
                     generator_hidden_size=24, generator_num_heads=3,
                     generator_intermediate_size=37, hidden_dropout=0.0, attention_dropout=0.0)
    model = build_pretraining(cfg, seed=4, sharing=sharing, generator_layers=1)
    rng = np.random.default_rng(4)
    interop.set_flat_params(model, {k: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype)
                                    for k, v in interop.flat_params(model).items()})
    return model, cfg


@pytest.mark.parametrize("sharing", ["gdes", "plain"])
def test_v3_pretraining_pair_exports_as_deberta_v2_model_plus_heads(tmp_path, sharing):
    """HF has no RTD class for DeBERTa: the discriminator is written as DebertaV2Model with our
    RTD head (ELECTRA's) beside it as `discriminator_predictions.*`, the half-depth generator as
    DebertaV2ForMaskedLM. transformers runs both to our outputs; the head's weights give our RTD
    logits on transformers' hidden states; a task class fine-tunes from the discriminator."""
    from safetensors.numpy import load_file

    from bertjax.interop import electra_pair

    model, cfg = _v3_pair(sharing)
    out = str(tmp_path / "pair")
    electra_pair.save_hf(model, cfg, out)
    disc_dir, gen_dir = os.path.join(out, "discriminator"), os.path.join(out, "generator")
    disc_config = json.load(open(os.path.join(disc_dir, "config.json")))
    gen_config = json.load(open(os.path.join(gen_dir, "config.json")))
    assert disc_config["architectures"] == ["DebertaV2Model"]
    assert (gen_config["architectures"], gen_config["num_hidden_layers"]) == (
        ["DebertaV2ForMaskedLM"], 1)

    rng = np.random.default_rng(5)
    ids = rng.integers(5, 99, size=(2, 20)).astype(np.int32)  # past the exact range (+/- 4)
    mask = np.ones_like(ids)
    mask[1, 14:] = 0
    real, seg = mask.astype(bool), np.zeros_like(ids)
    t = dict(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())

    hf, info = transformers.DebertaV2Model.from_pretrained(disc_dir, output_loading_info=True)
    head = sorted(k for k in load_file(os.path.join(disc_dir, "model.safetensors"))
                  if k.startswith("discriminator_predictions."))
    assert len(head) == 4 and not info["missing_keys"] and not info["mismatched_keys"]
    assert sorted(info["unexpected_keys"]) == head
    with torch.no_grad():
        hidden = hf.eval()(**t).last_hidden_state
    ours_hidden, _ = model.bert(ids, seg, mask)
    assert np.abs(np.asarray(ours_hidden)[real] - hidden.numpy()[real]).max() < TOL
    w = {k: torch.tensor(v) for k, v in load_file(os.path.join(disc_dir,
                                                               "model.safetensors")).items()}
    p = "discriminator_predictions."
    with torch.no_grad():
        x = torch.nn.functional.gelu(hidden @ w[p + "dense.weight"].T + w[p + "dense.bias"])
        rtd = (x @ w[p + "dense_prediction.weight"].T + w[p + "dense_prediction.bias"])[..., 0]
    ours_rtd = np.asarray(model(ids, seg, mask)["rtd_logits"])
    assert np.abs(ours_rtd[real] - rtd.numpy()[real]).max() < TOL

    gen, info = transformers.DebertaV2ForMaskedLM.from_pretrained(gen_dir,
                                                                  output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    positions = np.tile(np.arange(ids.shape[1]), (2, 1)).astype(np.int32)
    with torch.no_grad():
        want = gen.eval()(**t).logits.numpy()
    ours_mlm = np.asarray(model.generate(ids, seg, mask, positions)["mlm_logits"])
    assert np.abs(ours_mlm[real] - want[real]).max() < TOL

    _, info = transformers.DebertaV2ForSequenceClassification.from_pretrained(
        disc_dir, output_loading_info=True, num_labels=3)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight",
                                            "pooler.dense.bias", "pooler.dense.weight"]
    # bertjax reads the directory as the encoder HF sees, or with its head when asked.
    base, _, base_task, _, _ = model_files.load_model(disc_dir)
    assert base_task == "base"
    assert np.abs(np.asarray(base(ids, seg, mask)[0]) - np.asarray(ours_hidden))[real].max() == 0
    back, _, _, _, _ = model_files.load_model(disc_dir, task="replaced_token_detection")
    np.testing.assert_array_equal(np.asarray(back(ids, seg, mask)["rtd_logits"]), ours_rtd)
    if sharing == "gdes":  # the two tables differ by the residual: not one set, so not a pair
        with pytest.raises(UserError, match="embeddings differ"):
            model_files.load_model(out)
    else:  # plain: the pair reads back whole, its generator half as deep
        pair, _, task, _, _ = model_files.load_model(out)
        assert task == "electra_pretraining" and pair.generator.config.num_layers == 1
        a, b = interop.flat_params(model), interop.flat_params(pair)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
