"""ALBERT (issue 30): one shared layer called L times, the factorised embedding, the export with a
SentencePiece tokenizer that transformers reads back with equal ids and logits, the mlm_sop
objective, and the bad inputs ending in one line. Parity of every HF class is in
test_hf_parity.py (members "albert" and "albert/g2")."""
import dataclasses
import json
import os
import re
import sys

import gensim
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from cli_support import one_line, run_cli
from bertjax.errors import UserError
from bertjax.interop import params as interop
from bertjax.load import model_files
from bertjax.model import BertConfig, build_model, count_params
from bertjax.model.encoder import ModelConfigError
from bertjax.train import objectives

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data", "lee_background.cor")
TINY = BertConfig(arch="albert", vocab_size=99, hidden_size=48, num_layers=4, num_heads=3,
                  intermediate_size=37, embedding_size=16, num_hidden_groups=1,
                  hidden_act="gelu_tanh", max_position_embeddings=64, hidden_dropout=0.0,
                  attention_dropout=0.0)


def _batch(rng, batch=2, seq=10, vocab=99):
    ids = rng.integers(5, vocab, size=(batch, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, seq - 3:] = 0
    seg = np.zeros_like(ids)
    seg[:, seq // 2:] = 1
    return ids, seg, mask


# ---------------------------------------------------------------------------- the shared layer


def _paths(model):
    return {"/".join(map(str, k)) for k in interop.flat_params(model)}


@pytest.mark.parametrize("groups", [1, 2])
def test_the_shared_layer_is_one_set_of_arrays_called_at_every_depth(groups):
    cfg = dataclasses.replace(TINY, num_hidden_groups=groups)
    model = build_model("base", cfg, seed=0)
    layers = {p.split("/")[2] for p in _paths(model) if p.startswith("encoder/layers/")}
    assert layers == {str(g) for g in range(groups)}
    # The parameter count is Hugging Face's for the same config: nothing stacked per depth.
    hf_cfg = transformers.AlbertConfig(vocab_size=99, hidden_size=48, num_hidden_layers=4,
                                       num_attention_heads=3, intermediate_size=37,
                                       embedding_size=16, num_hidden_groups=groups,
                                       max_position_embeddings=64)
    with torch.device("meta"):
        hf = transformers.AlbertModel(hf_cfg)
    assert count_params(model) == sum(p.numel() for p in hf.parameters())

    # The forward pass is the embeddings, then group l*G/L at depth l, spelled out by hand here:
    # layers 0, 0, 0, 0 for one group and 0, 0, 1, 1 for two.
    ids, seg, mask = _batch(np.random.default_rng(0))
    seq, _ = model(ids, seg, mask)
    from bertjax.model.encoder import DropoutKeys
    x = model.embeddings(ids, seg, DropoutKeys(None), mask)
    order = [0, 0, 0, 0] if groups == 1 else [0, 0, 1, 1]
    for g in order:
        x = model.encoder.layers[g](x, mask, DropoutKeys(None))
    np.testing.assert_allclose(np.asarray(seq), np.asarray(x), atol=1e-6)

    # One set of arrays: a change to the one layer's weights moves the output of every depth.
    assert len(model.encoder.layers) == groups
    kernel = model.encoder.layers[0].output.kernel
    kernel[...] = kernel[...] * 0.0
    changed, _ = model(ids, seg, mask)
    assert not np.allclose(np.asarray(changed), np.asarray(seq))


def test_albert_base_is_a_ninth_of_bert_base_as_in_hugging_face():
    from bertjax.config import model_config

    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import albert as albert_recipe  # configs/albert.py

    cfg = BertConfig.from_dict(albert_recipe.get_config("base").model.to_dict())
    ours = count_params(nnx.eval_shape(lambda: build_model("base", cfg)))
    with torch.device("meta"):
        hf = transformers.AlbertModel(transformers.AlbertConfig(
            vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
            num_attention_heads=12, intermediate_size=3072))
        bert_hf = transformers.BertModel(transformers.BertConfig())
    assert ours == sum(p.numel() for p in hf.parameters())
    bert = BertConfig.from_dict(model_config("base").to_dict())
    bert_ours = count_params(nnx.eval_shape(lambda: build_model("base", bert)))
    assert bert_ours == sum(p.numel() for p in bert_hf.parameters())
    assert ours * 8 < bert_ours  # the paper's 12M against 108M


def test_albert_knobs_come_from_the_arch_table():
    from bertjax.config import model_config

    m = model_config("base", arch="albert")
    assert (m.embedding_size, m.num_hidden_groups, m.hidden_act) == (128, 1, "gelu_tanh")


# ------------------------------------------------------------------------------- bad input


def test_groups_that_do_not_divide_the_depth_are_refused():
    with pytest.raises(ModelConfigError, match="num_hidden_groups=3 does not divide"):
        dataclasses.replace(TINY, num_hidden_groups=3)
    proc = run_cli("plan", "--config=configs/albert.py:tiny", "--topology=v5e:2x2",
                   "--config.model.num_hidden_groups=3")
    one_line(proc, "model.num_hidden_groups=3 does not divide model.num_layers=4")


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("albert_bad")
    base = dict(vocab_size=99, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                intermediate_size=37, max_position_embeddings=64)
    transformers.AlbertModel(transformers.AlbertConfig(
        **base, embedding_size=16, inner_group_num=2)).save_pretrained(root / "inner")
    transformers.AlbertModel(transformers.AlbertConfig(
        **base, embedding_size=48)).save_pretrained(root / "square")
    return root


@pytest.mark.parametrize("name,needles", [
    ("inner", ["inner_group_num 2"]),
    ("square", ["embedding_size == hidden_size (48)"]),
])
def test_hf_albert_that_bertjax_cannot_express_ends_in_one_line(hf_dirs, name, needles):
    proc = run_cli("convert", f"--from_hf={hf_dirs / name}", f"--out={hf_dirs / (name + '_out')}")
    one_line(proc, *needles)
    assert not (hf_dirs / (name + "_out")).exists()


def test_export_of_an_albert_without_projection_is_refused():
    model = build_model("base", dataclasses.replace(TINY, embedding_size=0))
    with pytest.raises(UserError, match="embedding_size == hidden_size"):
        interop.to_hf_tensors(model, dataclasses.replace(TINY, embedding_size=0), "base")


# ------------------------------------------------------------------------------ objective


def _objective_cfg(name):
    from bertjax.config import base_config

    c = base_config("tiny", arch="albert")
    c.objective.name = name
    return c


def test_mlm_sop_is_picked_by_sop_data_and_refuses_the_other_pair_task():
    assert objectives.from_config(_objective_cfg("auto"), nsp=True, pair_task="sop").name == \
        "mlm_sop"
    assert objectives.from_config(_objective_cfg("auto"), nsp=True, pair_task="nsp").name == \
        "mlm_nsp"
    # Data prepared before pair_task existed has no key: NSP, as it was.
    assert objectives.from_config(_objective_cfg("auto"), nsp=True).name == "mlm_nsp"
    with pytest.raises(UserError, match="trains SOP but the prepared data holds NSP"):
        objectives.from_config(_objective_cfg("mlm_sop"), nsp=True, pair_task="nsp")
    with pytest.raises(UserError, match="trains NSP but the prepared data holds SOP"):
        objectives.from_config(_objective_cfg("mlm_nsp"), nsp=True, pair_task="sop")
    with pytest.raises(UserError, match="needs sentence-pair labels"):
        objectives.from_config(_objective_cfg("mlm_sop"), nsp=False, pair_task="none")


def test_mlm_sop_loss_is_mlm_plus_the_pair_cross_entropy_by_hand():
    obj = objectives.make("mlm_sop")
    assert obj.model_task == "pretraining" and "sop_accuracy" in obj.metrics
    rng = np.random.default_rng(4)
    mlm = rng.standard_normal((2, 3, 7)).astype(np.float32)
    pair = rng.standard_normal((2, 2)).astype(np.float32)
    batch = {"masked_lm_ids": np.array([[1, 2, 0], [3, 0, 0]], np.int32),
             "masked_lm_weights": np.array([[1, 1, 0], [1, 0, 0]], np.float32),
             "next_sentence_labels": np.array([1, 0], np.int32)}
    loss, sums = obj.loss({"mlm_logits": mlm, "nsp_logits": pair}, batch)

    def ce(logits, label):
        z = logits - logits.max()
        return float(np.log(np.exp(z).sum()) - z[label])

    want_mlm = (ce(mlm[0, 0], 1) + ce(mlm[0, 1], 2) + ce(mlm[1, 0], 3)) / 3
    want_sop = (ce(pair[0], 1) + ce(pair[1], 0)) / 2
    assert abs(float(loss) - (want_mlm + want_sop)) < 1e-4
    assert set(sums) >= {"sop_loss", "sop_accuracy", "mlm_loss"} and "nsp_loss" not in sums
    hits = int(np.argmax(pair[0]) == 1) + int(np.argmax(pair[1]) == 0)
    assert float(sums["sop_accuracy"][0]) == hits


# ------------------------------------------------------------------ export with spiece.model


def _sentences(n):
    with open(CORPUS, encoding="utf-8") as f:
        text = f.read()
    out = [s for line in text.splitlines() for s in re.split(r"(?<=[.!?])\s+", line.strip()) if s]
    return out[:n]


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    from bertjax.text.train_vocab import train_vocab

    d = tmp_path_factory.mktemp("spm")
    train_vocab(CORPUS, "sentencepiece", 1000, str(d), lower_case=True, fmt="text")
    return d


def test_export_is_an_albert_transformers_loads_with_equal_ids_and_logits(spm_dir, tmp_path):
    from bertjax.text import load_tokenizer
    from bertjax.tools import export as export_lib

    tok = load_tokenizer(str(spm_dir))
    cfg = dataclasses.replace(TINY, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                              max_position_embeddings=128)
    model = build_model("pretraining", cfg, seed=3)
    rng = np.random.default_rng(3)
    interop.set_flat_params(model, {k: v + 0.05 * rng.standard_normal(v.shape).astype(v.dtype)
                                    for k, v in interop.flat_params(model).items()})
    model_files.save_checkpoint(str(tmp_path / "ckpt"), model, cfg, "pretraining",
                                extra_files=model_files.tokenizer_extras(str(spm_dir)))
    out = tmp_path / "hf"
    assert export_lib.export(str(tmp_path / "ckpt"), "hf", str(out)) == "pretraining"
    assert (out / "spiece.model").read_bytes() == (spm_dir / "spiece.model").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "albert" and config["architectures"] == ["AlbertForPreTraining"]

    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    sentences = _sentences(200)
    pairs = list(zip(sentences[:100], sentences[100:]))
    for a, b in pairs:
        ids, seg = tok.build_inputs(tok.encode(a), tok.encode(b))
        ref = auto(a, b)
        assert ids == ref["input_ids"] and seg == ref["token_type_ids"], (a, b)
    for a in sentences:
        assert tok.build_inputs(tok.encode(a))[0] == auto(a)["input_ids"], a

    hf, info = transformers.AlbertForPreTraining.from_pretrained(str(out),
                                                                 output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    enc = auto([a for a, _ in pairs[:4]], [b for _, b in pairs[:4]], padding=True,
               truncation=True, max_length=96, return_tensors="np")
    ids, seg = enc["input_ids"].astype(np.int32), enc["token_type_ids"].astype(np.int32)
    mask = enc["attention_mask"].astype(np.int32)
    positions = np.stack([np.sort(rng.choice(int(m.sum()), 5, replace=False)) for m in mask])
    ours = model(ids, seg, mask, positions.astype(np.int32))
    with torch.no_grad():
        ref = hf.eval()(input_ids=torch.tensor(ids).long(), token_type_ids=torch.tensor(seg).long(),
                        attention_mask=torch.tensor(mask).long())
    want_mlm = np.take_along_axis(ref.prediction_logits.numpy(), positions[..., None], axis=1)
    assert np.abs(np.asarray(ours["mlm_logits"]) - want_mlm).max() < 1e-4
    assert np.abs(np.asarray(ours["nsp_logits"]) - ref.sop_logits.numpy()).max() < 1e-4


# ------------------------------------------------------------------------ SOP data (prepare)


@pytest.fixture(scope="module")
def demo_shard(tmp_path_factory):
    from bertjax.demo.corpus import build_demo_corpus

    out = str(tmp_path_factory.mktemp("demo"))
    m = build_demo_corpus(out, shards=1, heldout_every=20, max_articles=42)
    return os.path.join(out, m["wiki"]["files"][0])


def test_sop_pairs_on_the_demo_corpus_are_in_order_or_swapped_half_the_time(
        demo_shard, spm_dir, tmp_path):
    from bertjax.data import prepare, records
    from bertjax.data.corpus import iter_documents
    from bertjax.text import load_tokenizer

    meta = prepare.prepare(prepare.Options(
        input=demo_shard, vocab=str(spm_dir), output_dir=str(tmp_path / "sop"),
        max_seq_length=64, max_predictions_per_seq=10, masking="dynamic", dupe_factor=3,
        pair_task="sop", num_workers=1, seed=5))
    assert meta["pair_task"] == "sop" and meta["nsp"] is True
    dtype = records.dtype_from_metadata(meta)
    r = np.concatenate([records.read_shard(str(tmp_path / "sop" / s["file"]), dtype)
                        for s in meta["shards"]])
    n = len(r)
    assert n > 1000
    # No partner from another document, ever.
    assert (r["a_doc"] == r["b_doc"]).all()
    # Swapped with p = 0.5: within 4 standard deviations of a fair coin over n instances.
    share = float(r["next_sentence_label"].mean())
    assert abs(share - 0.5) < 4 * 0.5 / np.sqrt(n), share
    assert meta["stats"]["random_next_share"] == pytest.approx(share)

    # Order, checked against the text: label 0 = the first segment comes first in its document,
    # label 1 = it comes after the second. Both segments are contiguous runs of the document's
    # tokens (truncation only trims their ends); runs that occur more than once are skipped.
    tok = load_tokenizer(str(spm_dir))
    docs = [np.array([t for s in d for t in tok.encode(s)], np.int64)
            for d in iter_documents(demo_shard, "original")]
    text = [" ".join(map(str, d.tolist())) + " " for d in docs]
    checked = 0
    for row in r:
        doc = text[int(row["a_doc"]) & 0xFFFFFFFF]
        toks = row["tokens"][:row["length"]]
        first = " ".join(map(str, toks[1:row["segment_start"] - 1])) + " "
        second = " ".join(map(str, toks[row["segment_start"]:-1])) + " "
        if doc.count(first) != 1 or doc.count(second) != 1:
            continue
        checked += 1
        assert (doc.find(first) > doc.find(second)) == bool(row["next_sentence_label"])
    assert checked > 0.9 * n


def test_sop_never_draws_a_partner_and_drops_one_sentence_chunks():
    from bertjax.data import instances

    # Token ids encode their place: document d's k-th token is 1000 * (d + 1) + k.
    docs = [(0, [[1000 + k] for k in range(40)]), (1, [[2000]]), (2, [[3000, 3001, 3002]])]
    counts = instances.BuildCounts()
    out = list(instances.pair_instances(iter(docs), max_seq_length=12, short_seq_prob=0.0,
                                        cls_id=2, sep_id=3, rng=np.random.default_rng(0),
                                        counts=counts, pair_task="sop"))
    assert out and all(i.a_doc == i.b_doc == 0 for i in out)
    assert counts.dropped_chunks == 2 and counts.forced_random == 0
    for inst in out:
        a, b = inst.tokens[1:inst.segment_start - 1], inst.tokens[inst.segment_start:-1]
        assert (a[0] > b[-1]) == inst.is_random_next  # swapped: the later run comes first
        # consecutive: the two runs meet with nothing between them
        first, second = (b, a) if inst.is_random_next else (a, b)
        assert second[0] == first[-1] + 1


def _bad_prepare(tmp_path, text, *flags_):
    from bertjax.text.train_vocab import train_vocab  # noqa: F401 (vocab below is WordPiece)

    (tmp_path / "c.txt").write_text(text)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "one", "two",
                                "three", "."]) + "\n")
    return run_cli("prepare", f"--input={tmp_path / 'c.txt'}", f"--vocab={vocab}",
                   f"--output_dir={tmp_path / 'out'}", "--num_workers=1", "--dupe_factor=1",
                   *flags_)


def test_sop_on_one_sentence_documents_ends_in_one_line(tmp_path):
    text = "".join(f"one two three {i} .\n\n" for i in range(30))
    one_line(_bad_prepare(tmp_path, text, "--pair_task=sop"),
             "--pair_task=sop: every one of the 30 documents is a single sentence")
    assert not (tmp_path / "out" / "metadata.json").exists()


@pytest.mark.parametrize("flags_,needle", [
    (["--pair_task=sop", "--no_nsp"], "--no_nsp means --pair_task=none"),
    (["--pair_task=order"], "--pair_task='order'; use one of nsp, sop, none"),
])
def test_contradictory_pair_flags_end_in_one_line(tmp_path, flags_, needle):
    one_line(_bad_prepare(tmp_path, "one two .\nthree one .\n\ntwo three .\none .\n", *flags_),
             needle)


# ------------------------------------------------------------------------- n-gram masking

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 500
CONT = np.zeros(VOCAB, bool)
CONT[400:] = True  # ids 400.. continue the word before them


def _spec(whole_word, ngram, budget="sequence", p=20):
    from bertjax.data import masking

    return masking.MaskSpec(
        max_predictions=p, rate=0.15, whole_word=whole_word, cls_id=CLS, sep_id=SEP,
        mask_id=MASK, replacement_ids=masking.replacement_ids(VOCAB, [PAD, UNK, CLS, SEP, MASK]),
        is_continuation=CONT, budget=budget, ngram=ngram)


def _mask_batch(n=256, s=128, seed=0, cont_share=0.35):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, s), np.int32)
    lengths = rng.integers(8, s + 1, n)
    for i, length in enumerate(lengths):
        body = rng.integers(5, 400, length)
        body = np.where(rng.random(length) < cont_share, rng.integers(400, VOCAB, length), body)
        tokens[i, :length] = body
        tokens[i, 0], tokens[i, length // 2], tokens[i, length - 1] = CLS, SEP, SEP
    return tokens, lengths.astype(np.int32), np.arange(n, dtype=np.int64) * 977 + 5


def _words(tokens, length, whole_word):
    """Each row's words as lists of positions, written out: a candidate starts a word unless
    whole-word masking is on and it is a continuation piece right after another candidate."""
    words = []
    for j in range(length):
        if tokens[j] in (CLS, SEP):
            continue
        if whole_word and CONT[tokens[j]] and words and words[-1][-1] == j - 1:
            words[-1].append(j)
        else:
            words.append([j])
    return words


@pytest.mark.parametrize("whole_word,budget", [(True, "sequence"), (False, "sequence"),
                                               (True, "candidates")])
def test_ngram_masks_numpy_and_tensorflow_agree(whole_word, budget):
    import tensorflow as tf

    from bertjax.data import masking

    tokens, lengths, ids = _mask_batch()
    epochs = np.full(len(ids), 3, np.int64)
    sp = _spec(whole_word, 3, budget)
    a = masking.mask_batch_np(tokens, lengths, ids, epochs, 11, sp)
    b = masking.mask_batch_tf(tf.constant(tokens), tf.constant(lengths), tf.constant(ids),
                              tf.constant(epochs), 11, sp)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key].numpy(), err_msg=key)


def test_ngram_walk_matches_albert_written_out():
    """_ngram_np against ALBERT's loop as plain Python: words in a random order, each with a
    drawn n, shrunk until the span fits what is left, skipped if it overlaps a taken word."""
    from bertjax.data import masking

    rng = np.random.default_rng(8)
    rows, seq, ngram = 300, 30, 3
    word_len = rng.integers(1, 4, (rows, seq))
    num_words = rng.integers(0, seq + 1, rows)
    word_len[np.arange(seq)[None, :] >= num_words[:, None]] = 0
    sorted_word = np.stack([rng.permutation(seq) for _ in range(rows)])
    # valid: the row's real words, first in the order (as the scores sort them)
    for r in range(rows):
        real = [w for w in sorted_word[r] if w < num_words[r]]
        sorted_word[r] = real + [w for w in sorted_word[r] if w >= num_words[r]]
    valid = np.arange(seq)[None, :] < num_words[:, None]
    span = rng.integers(1, ngram + 1, (rows, seq))
    budget = rng.integers(1, 20, rows)
    got = masking._ngram_np(word_len, num_words, sorted_word, valid, span, budget, ngram)
    for r in range(rows):
        taken, count = set(), 0
        for k in range(num_words[r]):
            w = int(sorted_word[r, k])
            chosen = None
            for n in range(min(span[r, w], num_words[r] - w), 0, -1):
                words = list(range(w, w + n))
                if count + sum(word_len[r, v] for v in words) <= budget[r]:
                    chosen = words
                    break
            if chosen is None or taken & set(chosen):
                continue
            taken |= set(chosen)
            count += sum(word_len[r, v] for v in chosen)
        assert set(np.flatnonzero(got[r]).tolist()) == taken, r


def test_span_lengths_are_drawn_one_over_n():
    from bertjax.data import masking

    # p(n) = (1/n) / (1 + 1/2 + 1/3): 6/11, 3/11, 2/11 for ALBERT's n <= 3.
    t1, t2 = masking.span_thresholds(3)
    grid = 1 << 24
    assert abs(t1 / grid - 6 / 11) < 1e-6 and abs((t2 - t1) / grid - 3 / 11) < 1e-6
    assert masking.span_thresholds(1) == []


def test_ngram_masks_whole_words_in_spans_within_the_budget():
    from bertjax.data import masking

    tokens, lengths, ids = _mask_batch(n=1500, s=128, seed=1)
    stats = {}
    for ngram in (1, 3):
        m = masking.mask_batch_np(tokens, lengths, ids, 0, 5, _spec(True, ngram))
        w = m["masked_lm_weights"] > 0
        neighbours = masked_words = 0
        for row in range(len(tokens)):
            chosen = set(m["masked_lm_positions"][row][w[row]].tolist())
            assert len(chosen) <= min(20, max(1, round(int(lengths[row]) * 0.15)))
            words = _words(tokens[row], int(lengths[row]), True)
            hit = []
            for wd in words:
                inside = [j in chosen for j in wd]
                assert all(inside) or not any(inside), "a word was split"
                hit.append(all(inside))
            for i, h in enumerate(hit):
                if h:
                    masked_words += 1
                    neighbours += (i > 0 and hit[i - 1]) or (i + 1 < len(hit) and hit[i + 1])
        stats[ngram] = neighbours / masked_words
    # Spans of 2 and 3 words put 2/3 of the masked words next to another masked word
    # ((2 * 3/11 + 3 * 2/11) / (6/11 + 2 * 3/11 + 3 * 2/11)), a little more where spans touch; single
    # words at a 15% rate rarely do.
    assert 0.6 < stats[3] < 0.85 and stats[1] < 0.4, stats


def test_prepare_records_ngram_masking_and_the_pipeline_uses_it(tmp_path):
    from bertjax.bench.data import synthetic_corpus
    from bertjax.data import masking, pipeline, prepare, records

    corpus_glob, vocab = synthetic_corpus(str(tmp_path / "c"), files=1, docs_per_file=20, seed=2)
    common = dict(input=corpus_glob, vocab=vocab, max_seq_length=64, max_predictions_per_seq=10,
                  num_workers=1, seed=1, dupe_factor=1, whole_word_masking=True,
                  masking_ngram=3, pair_task="sop")
    static = prepare.prepare(prepare.Options(output_dir=str(tmp_path / "s"), **common))
    dyn = prepare.prepare(prepare.Options(output_dir=str(tmp_path / "d"), masking="dynamic",
                                          **common))
    assert static["masking_ngram"] == dyn["masking_ngram"] == 3
    # Static masks are the numpy masking of the same instances with n = 3.
    dtype = records.dtype_from_metadata(dyn)
    raw = np.concatenate([records.read_shard(str(tmp_path / "d" / s["file"]), dtype)
                          for s in dyn["shards"]])
    done = np.concatenate([records.read_shard(str(tmp_path / "s" / s["file"]),
                                              records.dtype_from_metadata(static))
                           for s in static["shards"]])
    it = pipeline.make_pretrain_input(str(tmp_path / "d"), batch_size=8, seed=7,
                                      shuffle_buffer=16, with_example_ids=True)
    assert it._spec.ngram == 3
    spec = it._spec
    twin = masking.mask_batch_np(raw["tokens"].astype(np.int32), raw["length"],
                                 raw["example_id"], 0, 1, spec)
    np.testing.assert_array_equal(twin["input_ids"], done["tokens"])
    b = next(it)
    by_id = {int(e): x for e, x in zip(raw["example_id"], raw)}
    ex = [by_id[int(e)] for e in b["example_id"]]
    again = masking.mask_batch_np(np.stack([x["tokens"] for x in ex]).astype(np.int32),
                                  np.array([x["length"] for x in ex]), b["example_id"],
                                  b["epoch"], 7, spec)
    for k, v in again.items():
        np.testing.assert_array_equal(b[k], v, err_msg=k)


def test_the_comparison_table_shows_the_nsp_sop_two_by_two():
    from bertjax.demo import compare

    arms = ["bert", "sop"]
    report = {"pretrain_steps": 600, "heldout": {}, "wall_seconds": 1.0, "cpu_seconds": 1.0,
              "prepared": {"train": {"instances": 100, "mean_tokens_per_instance": 60.0,
                                     "max_seq_length": 64}}}
    cross = {a: {h: {"mlm_accuracy": 0.07, "masked_tokens": 10} for h in arms} for a in arms}
    pair = {"bert": {"bert": {"pair_accuracy": 0.525, "pairs": 640, "pair_task": "nsp"},
                     "sop": {"pair_accuracy": 0.5, "pairs": 576, "pair_task": "sop"}},
            "sop": {"bert": {"pair_accuracy": 0.61, "pairs": 640, "pair_task": "nsp"},
                    "sop": {"pair_accuracy": 0.7, "pairs": 576, "pair_task": "sop"}}}
    result = {"arms": arms, "reports": {a: report for a in arms}, "heldout_mlm": cross,
              "heldout_pair": pair, "batch_size": 64, "pretrain_steps": 600,
              "baselines": {a: {"accuracy": 0.05} for a in arms},
              "verdict": compare.verdict({a: report for a in arms}, cross)}
    lines = compare.table(result).splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("pair-head accuracy"))
    assert "bert's NSP pairs (640)" in lines[head + 1] and "sop's SOP pairs (576)" in lines[head + 1]
    assert lines[head + 2].split() == ["bert", "52.50", "50.00"]
    assert lines[head + 3].split() == ["sop", "61.00", "70.00"]


@pytest.mark.parametrize("preset", ["tiny", "base", "large", "xlarge", "xxlarge"])
def test_every_recipe_size_is_hugging_faces_albert_of_that_size(preset):
    sys.path.insert(0, os.path.join(ROOT, "configs"))
    import albert as albert_recipe  # configs/albert.py

    c = albert_recipe.get_config(preset)
    assert (c.objective.name, c.optim.name, c.optim.learning_rate) == ("mlm_sop", "lamb", 0.00176)
    cfg = BertConfig.from_dict(c.model.to_dict())
    assert cfg.num_hidden_groups == 1 and cfg.embedding_width < cfg.hidden_size
    ours = count_params(nnx.eval_shape(lambda: build_model("base", cfg)))
    with torch.device("meta"):
        hf = transformers.AlbertModel(transformers.AlbertConfig(
            vocab_size=cfg.vocab_size, embedding_size=cfg.embedding_width,
            hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size))
    assert ours == sum(p.numel() for p in hf.parameters())
