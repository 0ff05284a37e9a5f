"""The tf.data pretraining input: the batch contract, per-host slices, determinism, dynamic masks
(equal to the numpy twin), resume equality, eval mode, overrides and refusals."""
import json
import os
import shutil

import numpy as np
import pytest

from bertjax.bench.data import synthetic_corpus
from bertjax.data import masking, pipeline, prepare, records
from bertjax.errors import UserError

CLS, SEP, MASK = 2, 3, 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    corpus_glob, vocab = synthetic_corpus(str(root / "c"), files=3, docs_per_file=12, seed=5)
    common = dict(input=corpus_glob, vocab=vocab, max_seq_length=64, max_predictions_per_seq=10,
                  num_workers=1, seed=1)
    prepare.prepare(prepare.Options(output_dir=str(root / "dyn"), masking="dynamic", dupe_factor=2,
                                    whole_word_masking=True, **common))
    prepare.prepare(prepare.Options(output_dir=str(root / "static"), masking="static",
                                    dupe_factor=1, **common))
    return {"dyn": str(root / "dyn"), "static": str(root / "static"), "root": root}


def make(path, **kw):
    args = dict(batch_size=16, seed=7, shuffle_buffer=64)
    args.update(kw)
    return pipeline.make_pretrain_input(path, **args)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def all_records(path):
    meta = pipeline.read_metadata(path)
    dtype = records.dtype_from_metadata(meta)
    r = np.concatenate([records.read_shard(os.path.join(path, s["file"]), dtype)
                        for s in meta["shards"]])
    return {int(e): x for e, x in zip(r["example_id"], r)}


@pytest.mark.parametrize("kind", ["dyn", "static"])
def test_batch_contract(data, kind):
    b = next(make(data[kind]))
    assert tuple(sorted(b)) == tuple(sorted(pipeline.BATCH_KEYS))
    for k in ("input_ids", "segment_ids", "input_mask"):
        assert b[k].shape == (16, 64) and b[k].dtype == np.int32
    for k in ("masked_lm_positions", "masked_lm_ids"):
        assert b[k].shape == (16, 10) and b[k].dtype == np.int32
    assert b["masked_lm_weights"].shape == (16, 10) and b["masked_lm_weights"].dtype == np.float32
    assert b["next_sentence_labels"].shape == (16,) and b["next_sentence_labels"].dtype == np.int32
    ids, seg, mask = b["input_ids"], b["segment_ids"], b["input_mask"]
    length = mask.sum(1)
    assert (ids[:, 0] == CLS).all()
    for row in range(16):
        first_sep = int(np.argmax(ids[row] == SEP))
        want = np.zeros(64, np.int32)
        want[first_sep + 1:length[row]] = 1
        np.testing.assert_array_equal(seg[row], want)  # 0 up to and including the first [SEP]
        assert mask[row, :length[row]].all() and not mask[row, length[row]:].any()
        assert ids[row, length[row] - 1] == SEP and (ids[row, length[row]:] == 0).all()
        w = b["masked_lm_weights"][row] > 0
        assert (b["masked_lm_positions"][row][w] < length[row]).all()
        assert (ids[row, b["masked_lm_positions"][row][w]] != SEP).all()


def test_dynamic_masks_are_the_numpy_twin_and_change_with_the_epoch(data):
    it = make(data["dyn"], with_example_ids=True)
    per_epoch = it.examples_in_epoch(0)
    batches = take(it, 2 * per_epoch // 16 + 1)
    raw = all_records(data["dyn"])
    meta = pipeline.read_metadata(data["dyn"])
    spec = it._spec
    masks = {}
    for b in batches:
        ex = [raw[int(e)] for e in b["example_id"]]
        tokens = np.stack([x["tokens"] for x in ex]).astype(np.int32)
        lengths = np.array([x["length"] for x in ex])
        twin = masking.mask_batch_np(tokens, lengths, b["example_id"], b["epoch"], 7, spec)
        for k, v in twin.items():
            np.testing.assert_array_equal(b[k], v, err_msg=k)
        for e, ep, pos in zip(b["example_id"], b["epoch"], b["masked_lm_positions"]):
            masks.setdefault(int(e), {})[int(ep)] = pos
    assert meta["whole_word_masking"] and spec.whole_word
    assert meta["mask_budget"] == spec.budget == "sequence"
    # Whole words can fall short of the budget, never over it: the original's count, written out.
    for b in batches:
        for length, w in zip(b["input_mask"].sum(1), b["masked_lm_weights"]):
            assert w.sum() <= min(spec.max_predictions, max(1, int(round(int(length) * 0.15))))
    both = [m for m in masks.values() if len(m) == 2]
    assert len(both) > 100
    differ = np.mean([not np.array_equal(m[0], m[1]) for m in both])
    assert differ > 0.9


def test_deterministic_and_seeded(data):
    assert_same(take(make(data["dyn"]), 6), take(make(data["dyn"]), 6))
    a, b = take(make(data["dyn"], seed=8), 3), take(make(data["dyn"]), 3)
    assert not np.array_equal(a[0]["input_ids"], b[0]["input_ids"])


@pytest.mark.parametrize("hosts,batch", [(1, 16), (8, 2)])
def test_restore_gives_the_batches_of_an_unbroken_run(data, hosts, batch):
    # 6 shards: one host reads whole shards; with 8 hosts each keeps every 8th example.
    def build(**kw):
        return make(data["dyn"], process_count=hosts, process_index=hosts - 1, batch_size=batch,
                    **kw)

    it = build()
    assert it.split_files == (hosts == 1)
    per_epoch = it.examples_in_epoch(0) // batch
    assert per_epoch > 5
    unbroken = take(it, 2 * per_epoch + 6)
    for at in (per_epoch - 1, per_epoch, 2 * per_epoch + 3):
        it.restore({"batches": at})  # restore on a used iterator
        assert it.state() == {"batches": at}
        assert_same(take(it, 3), unbroken[at:at + 3])
        assert it.state() == {"batches": at + 3}
    json.dumps(it.state())
    again = build(start_batch=5)  # a fresh iterator started at a saved position
    assert_same(take(again, 2), unbroken[5:7])


@pytest.mark.parametrize("hosts", [2, 8])
def test_hosts_get_disjoint_slices_that_cover_each_epoch(data, hosts):
    everything = set(all_records(data["dyn"]))
    seen = {0: [], 1: []}
    for h in range(hosts):
        it = make(data["dyn"], process_count=hosts, process_index=h, batch_size=4,
                  with_example_ids=True)
        assert it.split_files == (hosts <= 6)
        want = {e: it.examples_in_epoch(e) for e in (0, 1)}
        ids, eps = [], []
        while len(ids) < want[0] + want[1]:
            b = next(it)
            ids += b["example_id"].tolist()
            eps += b["epoch"].tolist()
        for e in (0, 1):
            mine = [i for i, ep in zip(ids, eps) if ep == e]
            assert len(mine) == want[e] > 0
            seen[e] += mine
    for e in (0, 1):
        assert len(seen[e]) == len(set(seen[e])) and set(seen[e]) == everything


def test_eval_mode(data):
    hosts = 3
    its = [make(data["dyn"], repeat=False, process_count=hosts, process_index=h, batch_size=8,
                with_example_ids=True) for h in range(hosts)]
    counts = {it.num_batches for it in its}
    assert len(counts) == 1
    runs = [list(it) for it in its]
    assert all(len(r) == its[0].num_batches for r in runs)
    ids = [e for r in runs for b in r for e in b["example_id"].tolist()]
    assert len(ids) == len(set(ids))
    assert len(all_records(data["dyn"])) - len(ids) < hosts * 8  # only partial batches dropped
    again = list(make(data["dyn"], repeat=False, process_count=hosts, process_index=0,
                      batch_size=8, with_example_ids=True))
    assert_same(runs[0], again)  # no shuffle, epoch-0 masks: the same every time
    assert (runs[0][0]["epoch"] == 0).all()
    it = its[0]
    with pytest.raises(StopIteration):
        next(it)
    resumed = make(data["dyn"], repeat=False, process_count=hosts, process_index=0, batch_size=8,
                   with_example_ids=True, start_batch=2)
    assert_same(list(resumed), runs[0][2:])


def test_overrides_are_checked_against_metadata(data):
    b = next(make(data["static"], max_seq_length=80, max_predictions_per_seq=12))
    assert b["input_ids"].shape == (16, 80) and b["masked_lm_weights"].shape == (16, 12)
    assert not b["input_mask"][:, 64:].any() and not b["masked_lm_weights"][:, 10:].any()
    with pytest.raises(UserError, match="shorter"):
        make(data["static"], max_seq_length=32)
    with pytest.raises(UserError, match="bert #516"):
        make(data["static"], max_predictions_per_seq=5)
    with pytest.raises(UserError, match="static masks"):
        make(data["static"], masking="dynamic")
    # Fixed masks over dynamic data: the same masks in every epoch.
    it = make(data["dyn"], masking="static", with_example_ids=True, batch_size=8)
    seen = {}
    for _ in range(3 * it.examples_in_epoch(0) // 8):
        b = next(it)
        for e, pos in zip(b["example_id"].tolist(), b["masked_lm_positions"]):
            if e in seen:
                np.testing.assert_array_equal(seen[e], pos)
            seen[e] = pos


def test_tokenizer_identity_and_broken_data_are_refused(data, tmp_path):
    meta = pipeline.read_metadata(data["static"])
    pipeline.check_tokenizer(meta, dict(meta["tokenizer"]))
    other = dict(meta["tokenizer"], lower_case=not meta["tokenizer"]["lower_case"])
    with pytest.raises(UserError, match="lower_case"):
        pipeline.check_tokenizer(meta, other)
    with pytest.raises(UserError, match="does not exist"):
        make(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no metadata.json"):
        make(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(data["static"], broken)
    with open(broken / meta["shards"][0]["file"], "r+b") as f:
        f.truncate(meta["record_bytes"] * 3 + 7)
    with pytest.raises(UserError, match="truncated"):
        make(str(broken))
