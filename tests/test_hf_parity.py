"""bertjax equals Hugging Face transformers (PyTorch) in fp32 on CPU, both directions, every head,
for every family member with a layout table. Random weights (perturbed so no tensor sits at its
initial 0 or 1) and odd sizes (hidden 48, 3 heads, FFN 37), so a transposed or swapped matrix
shows; RoBERTa with a pad id of 3, so positions must follow the pad id, not a constant 1;
ELECTRA with an embedding width of 24, so the E->H projection and the generator head's H->E show;
DistilBERT with no segment table, its own names and config keys and a ReLU pre_classifier;
DeBERTa-v2 with disentangled attention over log buckets and no position table."""
import numpy as np
import pytest
import torch
import transformers

from bertjax.interop import hf_dir, params as interop

TOL = 1e-4
SIZES = dict(vocab_size=99, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
             intermediate_size=37, hidden_act="gelu")
# member -> (HF config class, its knobs, our task model -> HF class)
MEMBERS = {
    "bert": (transformers.BertConfig, dict(max_position_embeddings=64, type_vocab_size=2), {
        "pretraining": "BertForPreTraining",
        "base": "BertModel",
        "masked_lm": "BertForMaskedLM",
        "sequence_classification": "BertForSequenceClassification",
        "token_classification": "BertForTokenClassification",
        "question_answering": "BertForQuestionAnswering",
    }),
    "roberta": (transformers.RobertaConfig,
                dict(max_position_embeddings=64 + 4, type_vocab_size=1, pad_token_id=3,
                     bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5), {
        "base": "RobertaModel",
        "masked_lm": "RobertaForMaskedLM",
        "sequence_classification": "RobertaForSequenceClassification",
        "token_classification": "RobertaForTokenClassification",
        "question_answering": "RobertaForQuestionAnswering",
    }),
    "electra": (transformers.ElectraConfig,
                dict(max_position_embeddings=64, type_vocab_size=2, embedding_size=24), {
        "base": "ElectraModel",
        "replaced_token_detection": "ElectraForPreTraining",
        "masked_lm": "ElectraForMaskedLM",
        "sequence_classification": "ElectraForSequenceClassification",
        "token_classification": "ElectraForTokenClassification",
        "question_answering": "ElectraForQuestionAnswering",
    }),
}
# ALBERT: E = 16 != H, one layer shared by 3, and 2 groups over 4 layers (0,0,1,1: a mapping by
# l mod G would show). A member id "arch/variant" tests one more configuration of that arch.
ALBERT = {"pretraining": "AlbertForPreTraining", "base": "AlbertModel",
          "masked_lm": "AlbertForMaskedLM",
          "sequence_classification": "AlbertForSequenceClassification",
          "token_classification": "AlbertForTokenClassification",
          "question_answering": "AlbertForQuestionAnswering"}
MEMBERS["albert"] = (transformers.AlbertConfig, dict(
    max_position_embeddings=64, type_vocab_size=2, embedding_size=16, num_hidden_groups=1,
    num_hidden_layers=3, hidden_act="gelu_new"), ALBERT)
MEMBERS["albert/g2"] = (transformers.AlbertConfig, dict(
    max_position_embeddings=64, type_vocab_size=2, embedding_size=16, num_hidden_groups=2,
    num_hidden_layers=4, hidden_act="gelu_new"), ALBERT)
# DistilBERT: no segment table and its own config keys (dim, n_heads, hidden_dim, activation).
MEMBERS["distilbert"] = (transformers.DistilBertConfig, dict(max_position_embeddings=64), {
    "base": "DistilBertModel",
    "masked_lm": "DistilBertForMaskedLM",
    "sequence_classification": "DistilBertForSequenceClassification",
    "token_classification": "DistilBertForTokenClassification",
    "question_answering": "DistilBertForQuestionAnswering",
})
# DeBERTa-v2/v3: no absolute positions or segments, c2p + p2c over a shared LayerNorm'd table, and
# 8 log buckets spanning 10, so the 12-token batch reaches past the exact range (+/- 4) into the
# log-spaced one (test_deberta.py has 600 tokens at v3's 256 buckets).
MEMBERS["deberta-v2"] = (transformers.DebertaV2Config, dict(
    max_position_embeddings=64, type_vocab_size=0, relative_attention=True,
    position_biased_input=False, pos_att_type=["p2c", "c2p"], position_buckets=8,
    max_relative_positions=10, norm_rel_ebd="layer_norm", share_att_key=True,
    layer_norm_eps=1e-7), {
    "base": "DebertaV2Model",
    "masked_lm": "DebertaV2ForMaskedLM",
    "sequence_classification": "DebertaV2ForSequenceClassification",
    "token_classification": "DebertaV2ForTokenClassification",
    "question_answering": "DebertaV2ForQuestionAnswering",
})
# A member's spelling of SIZES' keys where it differs from BERT's.
RENAMED = {"distilbert": dict(hidden_size="dim", num_hidden_layers="n_layers",
                              num_attention_heads="n_heads", intermediate_size="hidden_dim",
                              hidden_act="activation")}
CASES = [(m, t) for m, (_, _, classes) in MEMBERS.items() for t in classes]
HF_CLASSES = MEMBERS["bert"][2]


def hf_config(member="bert", **kw):
    config_cls, knobs, _ = MEMBERS[member]
    names = RENAMED.get(member, {})
    sizes = {names.get(k, k): v for k, v in SIZES.items()}
    return config_cls(**{**sizes, **knobs, "num_labels": 3, **kw})


def hf_class(member, task):
    return getattr(transformers, MEMBERS[member][2][task])


def make_batch(seed=0, batch=3, seq=12, vocab=99, member="bert"):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, seq)).astype(np.int32)
    lengths = np.array([seq, seq - 4, 5])[:batch]
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    seg = np.zeros_like(ids)
    pad = MEMBERS[member][1].get("pad_token_id", 0)
    if MEMBERS[member][1].get("type_vocab_size", 0) > 1:
        for b, n in enumerate(lengths):
            seg[b, n // 2:n] = 1  # two segments
    ids = np.where(mask == 1, ids, pad).astype(np.int32)
    positions = np.stack([rng.choice(n, 4, replace=False) for n in lengths]).astype(np.int32)
    positions.sort(axis=1)
    return dict(input_ids=ids, segment_ids=seg, input_mask=mask, masked_lm_positions=positions)


def hf_forward(model, b):
    t = {k: torch.tensor(v, dtype=torch.long) for k, v in b.items()}
    # A member without segment embeddings (DistilBERT) takes no token_type_ids.
    types = {"token_type_ids": t["segment_ids"]} if hasattr(model.config, "type_vocab_size") \
        else {}
    with torch.no_grad():
        return model(input_ids=t["input_ids"], attention_mask=t["input_mask"],
                     output_hidden_states=True, **types)


def ours_forward(model, task, b):
    args = (b["input_ids"], b["segment_ids"], b["input_mask"])
    if task in ("pretraining", "masked_lm"):
        return model(*args, b["masked_lm_positions"])
    return model(*args)


def compare(task, ours_model, hf_model, b):
    hf = hf_forward(hf_model, b)
    out = ours_forward(ours_model, task, b)
    real = b["input_mask"].astype(bool)

    def close(a, ref, what, select=None):
        a, ref = np.asarray(a), ref.detach().numpy()
        if select is not None:
            a, ref = a[select], ref[select]
        diff = np.max(np.abs(a - ref))
        assert diff < TOL, f"{task} {what}: max abs diff {diff}"

    if task == "base":
        seq, pooled = out
        close(seq, hf.last_hidden_state, "hidden states", real)
        if pooled is None:  # ElectraModel has no pooler
            assert getattr(hf, "pooler_output", None) is None
        else:
            close(pooled, hf.pooler_output, "pooled")
        return
    elif task == "replaced_token_detection":
        close(out["rtd_logits"], hf.logits, "replaced-token logits", real)
    elif task == "pretraining":
        pos = b["masked_lm_positions"]
        hf_mlm = torch.gather(hf.prediction_logits, 1,
                              torch.tensor(pos, dtype=torch.long)[..., None].expand(-1, -1, 99))
        close(out["mlm_logits"], hf_mlm, "mlm logits")
        pair = getattr(hf, "seq_relationship_logits", None)  # ALBERT's pair head is SOP's
        close(out["nsp_logits"], hf.sop_logits if pair is None else pair, "nsp logits")
        hidden, _ = ours_model.bert(b["input_ids"], b["segment_ids"], b["input_mask"])
        close(hidden, hf.hidden_states[-1], "hidden states", real)
        base = hf_forward(hf_model.base_model, b)
        close(out["pooled_output"], base.pooler_output, "pooled")
    elif task == "masked_lm":
        pos = torch.tensor(b["masked_lm_positions"], dtype=torch.long)[..., None].expand(-1, -1, 99)
        close(out["mlm_logits"], torch.gather(hf.logits, 1, pos), "mlm logits")
        hidden, _ = ours_model.bert(b["input_ids"], b["segment_ids"], b["input_mask"])
        close(hidden, hf.hidden_states[-1], "hidden states", real)
    elif task == "sequence_classification":
        close(out["logits"], hf.logits, "logits")
    elif task == "token_classification":
        close(out["logits"], hf.logits, "logits", real)
    else:
        close(out["start_logits"], hf.start_logits, "start", real)
        close(out["end_logits"], hf.end_logits, "end", real)


@pytest.mark.parametrize("member,task", CASES)
def test_hf_to_bertjax_to_hf(member, task, tmp_path):
    torch.manual_seed(0)
    # HF's QA head is sized by num_labels and needs exactly 2 (start, end).
    # So is ALBERT's SOP head (sop_classifier.classifier), a 2-way pair head like BERT's NSP.
    labels = 2 if task == "question_answering" or member.startswith("albert") and \
        task == "pretraining" else 3
    hf_model = hf_class(member, task)(hf_config(member, num_labels=labels)).eval()
    # Random init leaves biases and LayerNorm at 0/1; perturb them so the test sees every tensor.
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf_model.save_pretrained(tmp_path / "hf")
    model, cfg, got_task, report = interop.load_hf(str(tmp_path / "hf"))
    assert got_task == task and report["unexpected"] == [] and report["missing"] == []
    assert cfg.arch == member.split("/")[0]
    compare(task, model, hf_model, make_batch(member=member))

    # Round trip: HF -> bertjax -> HF reproduces every tensor exactly.
    original = hf_dir.read_tensors(str(tmp_path / "hf"))
    back = interop.to_hf_tensors(model, cfg, task)
    for k, v in original.items():
        if k in back:
            np.testing.assert_array_equal(back[k], v, err_msg=k)
    tied = {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
            "lm_head.decoder.weight", "lm_head.decoder.bias",
            "predictions.decoder.weight", "predictions.decoder.bias", "generator_lm_head.weight",
            "vocab_projector.weight"}
    assert set(original) - set(back) <= tied


@pytest.mark.parametrize("member,task", CASES)
def test_bertjax_to_hf_loads_cleanly_and_matches(member, task, tmp_path):
    from bertjax.interop.layouts import for_hf_config
    from bertjax.model import BertConfig, build_model

    hf = hf_config(member).to_dict()
    cfg = BertConfig.from_dict(for_hf_config(hf).config_from_hf(hf))
    model = build_model(task, cfg, seed=1)
    flat = interop.flat_params(model)
    rng = np.random.default_rng(1)
    interop.set_flat_params(model, {k: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype)
                                     for k, v in flat.items()})
    interop.save_hf(model, cfg, task, str(tmp_path / "out"))
    for cls in (hf_class(member, task), transformers.AutoModel):
        if cls is transformers.AutoModel and task != "base":
            continue
        hf_model, info = cls.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
        assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    compare(task, model, hf_model.eval(), make_batch(seed=2, member=member))


def test_padding_does_not_change_real_tokens():
    from bertjax.model import BertConfig, build_model

    cfg = BertConfig(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=37,
                     max_position_embeddings=64)
    model = build_model("base", cfg)
    b = make_batch(batch=1, seq=8)
    b["input_mask"][:] = 1
    short, _ = model(b["input_ids"], b["segment_ids"], b["input_mask"])
    pad = lambda x, v: np.concatenate([x, np.full((1, 8), v, x.dtype)], axis=1)  # noqa: E731
    rng = np.random.default_rng(3)
    long_ids = pad(b["input_ids"], 0)
    long_ids[0, 8:] = rng.integers(5, 99, 8)  # whatever sits under the padding must not matter
    long, _ = model(long_ids, pad(b["segment_ids"], 1), pad(b["input_mask"], 0))
    np.testing.assert_allclose(np.asarray(long)[:, :8], np.asarray(short), atol=1e-5)


def test_param_counts_match_hf_base_and_large():
    from flax import nnx

    from bertjax.config import model_config
    from bertjax.model import BertConfig, build_model, count_params

    for preset, (h, n_layers, heads, ff) in {"base": (768, 12, 12, 3072),
                                             "large": (1024, 24, 16, 4096)}.items():
        cfg = BertConfig.from_dict(model_config(preset).to_dict())
        ours = count_params(nnx.eval_shape(lambda cfg=cfg: build_model("pretraining", cfg)))
        with torch.device("meta"):
            hf = transformers.BertForPreTraining(transformers.BertConfig(
                hidden_size=h, num_hidden_layers=n_layers, num_attention_heads=heads,
                intermediate_size=ff))
        assert ours == sum(p.numel() for p in hf.parameters()), preset
