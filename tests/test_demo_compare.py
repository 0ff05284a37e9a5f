"""The RoBERTa-vs-BERT demo comparison (bertjax/demo/compare.py): --pretrain_style changes only
the prepared data (pairs + NSP vs packed full sentences, no NSP, dynamic masks), and the held-out
scorer reads exactly the batches the pretraining loop evaluates."""
import json
import os

import numpy as np
import pytest

import pretrain_support as ps
from bertjax.data import records
from bertjax.demo import compare
from bertjax.demo import run as demo


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    """Both styles prepared through the demo's own prepare stage, on a tiny corpus."""
    root = tmp_path_factory.mktemp("demo-styles")
    ps.write_corpus(str(root / "train.txt"), n_docs=60, seed=1)
    os.makedirs(root / "heldout")
    ps.write_corpus(str(root / "heldout" / "held.txt"), n_docs=12, seed=2)
    vocab = str(root / "vocab.txt")
    ps.write_vocab(vocab)
    progress = demo.Progress(seeds=1)
    progress.tty, progress.show = False, lambda force=False: None  # no progress lines in the test
    out = {}
    for style in ("bert", "roberta", "sop"):
        train, held = demo.prepare_stage(progress, str(root / "logs" / style), str(root / "train.txt"),
                                         str(root / "heldout" / "*.txt"), vocab,
                                         str(root / style), style)
        out[style] = {"train": train, "heldout": held,
                      "train_meta": json.load(open(os.path.join(train, "metadata.json"))),
                      "heldout_meta": json.load(open(os.path.join(held, "metadata.json")))}
    return out


def _rows(data_dir):
    meta = json.load(open(os.path.join(data_dir, "metadata.json")))
    dtype = records.dtype_from_metadata(meta)
    return np.concatenate([np.asarray(records.read_shard(os.path.join(data_dir, s["file"]), dtype))
                           for s in meta["shards"]])


def test_roberta_style_prepares_packed_full_sentences_without_nsp_masked_dynamically(styles):
    r, b = styles["roberta"], styles["bert"]
    assert demo.prepared_summary(r["train"]) | {"instances": 0, "mean_tokens_per_instance": 0} == {
        "nsp": False, "masking": "dynamic", "static_masks": False, "dupe_factor": 1,
        "max_seq_length": demo.SEQ, "instances": 0, "mean_tokens_per_instance": 0,
        "random_next_share": 0.0}
    held = demo.prepared_summary(r["heldout"])
    assert (held["nsp"], held["masking"], held["static_masks"]) == (False, "static", True)
    # Packed: one segment per sequence, no second document, no random next; whole sentences fill
    # the sequences, which sentence pairs (one target per pair, short ones 10% of the time) do not.
    rows = _rows(r["train"])
    assert (rows["segment_start"] == rows["length"]).all() and (rows["b_doc"] == -1).all()
    assert not rows["next_sentence_label"].any()
    assert np.median(rows["length"]) >= demo.SEQ - 11  # whole sentences of up to 11 tokens
    bert = demo.prepared_summary(b["train"])
    assert (bert["nsp"], bert["masking"]) == (True, "dynamic")
    assert r["train_meta"]["stats"]["mean_tokens_per_instance"] > bert["mean_tokens_per_instance"]
    brows = _rows(b["train"])
    assert (brows["segment_start"] < brows["length"]).all() and brows["next_sentence_label"].any()
    # Nothing else differs: the same tokenizer, S, P, masking rule, seed and inputs.
    for kind in ("train_meta", "heldout_meta"):
        keys = [k for k in r[kind] if k not in ("stats", "shards", "corpus", "inputs")]
        differ = {k for k in keys if r[kind][k] != b[kind].get(k)}
        assert differ == {"nsp", "pair_task"}, differ
        assert r[kind]["inputs"] == b[kind]["inputs"]


def test_sop_style_changes_only_the_pair_task(styles):
    s, b = styles["sop"], styles["bert"]
    for kind in ("train_meta", "heldout_meta"):
        assert s[kind]["pair_task"] == "sop" and b[kind]["pair_task"] == "nsp"
        keys = [k for k in s[kind] if k not in ("stats", "shards", "corpus", "inputs")]
        assert {k for k in keys if s[kind][k] != b[kind].get(k)} == {"pair_task"}
    rows = _rows(s["heldout"])
    assert (rows["a_doc"] == rows["b_doc"]).all() and 0 < rows["next_sentence_label"].mean() < 1


def test_heldout_pair_scores_the_pair_head_on_the_sets_labels(styles, tmp_path):
    from bertjax.interop import params as interop
    from bertjax.load import model_files
    from bertjax.model import BertConfig, build_model

    vocab = styles["bert"]["train_meta"]["vocab_size"]
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_layers=1, num_heads=2,
                     intermediate_size=64, max_position_embeddings=demo.SEQ)
    for style in ("bert", "sop"):
        data = styles[style]["heldout"]
        labels = np.concatenate([b["next_sentence_labels"]
                                 for b in compare.heldout_batches(data, 8)])
        for always in (0, 1):
            # A head that always answers `always`: its accuracy is that label's share of the set.
            model = build_model("pretraining", cfg)
            flat = interop.flat_params(model)
            flat[("nsp", "dense", "kernel")] = np.zeros_like(flat[("nsp", "dense", "kernel")])
            flat[("nsp", "dense", "bias")] = np.eye(2, dtype=np.float32)[always]
            interop.set_flat_params(model, flat)
            ckpt = str(tmp_path / f"{style}{always}")
            model_files.save_checkpoint(ckpt, model, cfg, "pretraining")
            got = compare.heldout_pair(ckpt, data, 8)
            assert got["pairs"] == len(labels)
            assert got["pair_accuracy"] == pytest.approx(float(np.mean(labels == always)))


def test_interleaved_reads_shards_in_the_order_of_tf_data():
    import tensorflow as tf  # the reference: the interleave the pipeline runs

    arrays = [list(range(100 * a, 100 * a + n)) for a, n in enumerate((3, 1, 2, 4, 0, 5, 2))]
    padded = tf.ragged.constant(arrays).to_tensor(-1)  # one row per "shard", -1 past its end

    def shard(a):
        return tf.data.Dataset.from_tensor_slices(padded[a]).filter(lambda v: v >= 0)

    for cycle in (1, 2, 3, 16):
        ds = tf.data.Dataset.range(len(arrays)).interleave(
            shard, cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True)
        assert [arrays[a][k] for a, k in compare.interleaved(arrays, cycle)] == [
            int(v) for v in ds.as_numpy_iterator()], cycle


def test_heldout_batches_are_the_loops_eval_batches(styles):
    from bertjax.data import pipeline  # TensorFlow: the loop's own reader, for comparison

    for style in ("bert", "roberta"):
        data = styles[style]["heldout"]
        ours = list(compare.heldout_batches(data, 8))
        it = pipeline.make_pretrain_input(data, batch_size=8, process_index=0, process_count=1,
                                          seed=0, shuffle=False, repeat=False, masking=None)
        theirs = list(it)
        it.close()
        assert len(ours) == len(theirs) == len(_rows(data)) // 8
        for a, b in zip(ours, theirs):
            for k, v in a.items():
                np.testing.assert_array_equal(v, b[k], err_msg=f"{style} {k}")


def test_heldout_mlm_scores_the_masked_tokens_of_the_set(styles, tmp_path):
    from bertjax.load import model_files
    from bertjax.model import BertConfig, build_model

    vocab = styles["bert"]["train_meta"]["vocab_size"]
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_layers=1, num_heads=2,
                     intermediate_size=64, max_position_embeddings=demo.SEQ)
    results = {}
    for task in ("pretraining", "masked_lm"):
        ckpt = str(tmp_path / task)
        model_files.save_checkpoint(ckpt, build_model(task, cfg), cfg, task)
        results[task] = compare.heldout_mlm(ckpt, styles["bert"]["heldout"], 8)
    n_batches = len(_rows(styles["bert"]["heldout"])) // 8
    masked = sum(int(b["masked_lm_weights"].sum())
                 for b in compare.heldout_batches(styles["bert"]["heldout"], 8))
    for task, res in results.items():
        assert res["task"] == task and res["sequences"] == 8 * n_batches
        assert res["masked_tokens"] == masked and 0.0 <= res["mlm_accuracy"] <= 1.0


def _report(style, mlm, finals, nsp=None):
    ev = {"mlm_accuracy": mlm, **({"nsp_accuracy": nsp} if nsp is not None else {})}
    runs = [{"final": f} for f in finals]
    return {"pretrain_steps": 600, "heldout": ev, "wall_seconds": 700.0, "cpu_seconds": 1200.0,
            "most_frequent_token_baseline": {"accuracy": 0.05},
            "prepared": {"train": {"instances": 50000 if style == "bert" else 30000,
                                   "mean_tokens_per_instance": 50.0 if style == "bert" else 63.0,
                                   "max_seq_length": 64}},
            "finetune": {"pretrained": {"runs": runs, "final_mean": float(np.mean(finals)),
                                        "final_std": float(np.std(finals, ddof=1))}}}


def test_the_table_names_the_winner_of_each_measure():
    reports = {"bert": _report("bert", 0.07, [0.30, 0.32, 0.31], nsp=0.52),
               "roberta": _report("roberta", 0.09, [0.33, 0.34, 0.29])}
    cross = {"bert": {"bert": {"mlm_accuracy": 0.07, "masked_tokens": 100},
                      "roberta": {"mlm_accuracy": 0.06, "masked_tokens": 120}},
             "roberta": {"bert": {"mlm_accuracy": 0.08, "masked_tokens": 100},
                         "roberta": {"mlm_accuracy": 0.09, "masked_tokens": 120}}}
    v = compare.verdict(reports, cross)
    assert v["finetune"]["winner"] == "roberta" and not v["finetune"]["every_seed_above"]
    assert abs(v["finetune"]["margin"] - 0.01) < 1e-9
    assert v["heldout_mlm_on_bert"]["winner"] == v["heldout_mlm_on_roberta"]["winner"] == "roberta"
    result = {"arms": ["bert", "roberta"], "reports": reports, "heldout_mlm": cross,
              "batch_size": 64, "pretrain_steps": 600, "verdict": v,
              "baselines": {a: {"accuracy": 0.05} for a in reports}}
    text = compare.table(result)
    assert "batch 64 x sequence 64, every arm" in text
    assert "(its run: 7.00)" in text and "(its run: 9.00)" in text
    assert "fine-tuning: roberta ahead by 1.00 points" in text
    assert "bert's held-out NSP accuracy: 52.00%" in text
    assert "0.77 epochs" in text and "1.28 epochs" in text  # 38,400 sequences of 50,000 / 30,000
    tie = compare.verdict({"bert": reports["bert"], "roberta": _report("roberta", 0.07, [0.30, 0.32, 0.31])},
                          {a: {"bert": {"mlm_accuracy": 0.07}} for a in reports})
    assert tie["finetune"]["winner"] == tie["heldout_mlm_on_bert"]["winner"] == "tie"
