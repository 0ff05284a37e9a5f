"""Pretraining straight from text (data.source=text, bertjax/data/stream.py, issue 32): the same
instances as prepare, fresh pairs each epoch, exact resume on one and two hosts, prepare's
refusals, and a real pretraining run."""
import math
import os

import numpy as np
import pytest

import pretrain_support as ps
from bertjax.config import base_config
from bertjax.data import prepare, stream
from bertjax.data import prepare_units as units
from bertjax.data.pipeline import PretrainInput
from bertjax.errors import UserError

B = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("stream"))
    for i in range(3):
        ps.write_corpus(os.path.join(root, f"corpus-{i}.txt"), n_docs=40, seed=i)
    ps.write_vocab(os.path.join(root, "vocab.txt"))
    return root


def _options(root, **kw) -> units.Options:
    args = dict(input=os.path.join(root, "corpus-*.txt"), vocab=os.path.join(root, "vocab.txt"),
                output_dir="(stream)", max_seq_length=ps.SEQ, max_predictions_per_seq=ps.PREDS,
                seed=5)
    args.update(kw)
    return units.Options(**args)


def _source(root, keep=False, **kw):
    return stream.TextSource(_options(root, **kw), keep_epoch0_pairs=keep, workers=1)


def _elsewhere(corpus, root):
    """A source of the text under `root` with the corpus fixture's vocabulary."""
    return _source(root, vocab=os.path.join(corpus, "vocab.txt"))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _equal(a: list, b: list):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _by_epoch(batches) -> dict[int, dict[int, dict]]:
    """epoch -> example id -> that row."""
    out: dict = {}
    for b in batches:
        for r in range(len(b["epoch"])):
            row = {k: v[r] for k, v in b.items()}
            out.setdefault(int(row["epoch"]), {})[int(row["example_id"])] = row
    return out


def _epochs(it, upto: int) -> dict:
    """Batches until a row of epoch `upto` appears; epochs below it are then whole."""
    batches = []
    while not batches or batches[-1]["epoch"].max() < upto:
        batches.append(next(it))
    return _by_epoch(batches)


def test_epoch_e_is_prepares_pass_e_and_pairs_are_fresh_each_epoch(corpus, tmp_path):
    # prepare with static masks, two passes, the stream's seed: epoch e of the stream must hold
    # exactly pass e's records (the same pair code, draws and masks), and the passes differ.
    out = str(tmp_path / "prepared")
    prepare.prepare(prepare.Options(
        input=os.path.join(corpus, "corpus-*.txt"), vocab=os.path.join(corpus, "vocab.txt"),
        output_dir=out, max_seq_length=ps.SEQ, max_predictions_per_seq=ps.PREDS,
        masking="static", dupe_factor=2, num_workers=1, seed=5))
    prepared: dict = {}
    it = PretrainInput(out, batch_size=1, shuffle=False, repeat=False, with_example_ids=True)
    for b in it:
        row = {k: v[0] for k, v in b.items()}
        prepared[int(row["example_id"])] = row
    it.close()

    text = _source(corpus).input(batch_size=B, shuffle_buffer=64, with_example_ids=True)
    got = _epochs(text, 2)
    text.close()
    for epoch in (0, 1):
        want = {i: r for i, r in prepared.items() if (i >> 32) & 0xFF == epoch}
        assert sorted(got[epoch]) == sorted(want), f"epoch {epoch}: other example ids"
        for i, row in want.items():
            for k in ("input_ids", "segment_ids", "input_mask", "masked_lm_positions",
                      "masked_lm_ids", "masked_lm_weights", "next_sentence_labels"):
                np.testing.assert_array_equal(got[epoch][i][k], row[k], err_msg=f"{k} of {i}")
    # Fresh pairs: most of epoch 1's pairs (tokens and segments) are not epoch 0's.
    assert len(_pairs(got[0]) & _pairs(got[1])) < 0.5 * len(got[0])


def _unmasked(row) -> np.ndarray:
    ids = row["input_ids"].copy()
    w = row["masked_lm_weights"] > 0
    ids[row["masked_lm_positions"][w]] = row["masked_lm_ids"][w]
    return ids[row["input_mask"] > 0]


def _pairs(rows: dict) -> set:
    return {(tuple(_unmasked(r)), tuple(r["segment_ids"])) for r in rows.values()}


def test_keep_epoch0_pairs_repeats_epoch_zero(corpus):
    # Static masks: every epoch is epoch 0 again, masks included; dynamic masks: the same pairs
    # with new masks (RoBERTa's dynamic masking over a fixed set of pairs).
    for mode in ("static", "dynamic"):
        it = _source(corpus, keep=True, masking=mode).input(batch_size=B, shuffle_buffer=64,
                                                           with_example_ids=True)
        got = _epochs(it, 2)
        it.close()
        assert sorted(got[0]) == sorted(got[1])
        assert _pairs(got[0]) == _pairs(got[1])
        same = sum(np.array_equal(r["input_ids"], got[1][i]["input_ids"]) for i, r in got[0].items())
        assert same == len(got[0]) if mode == "static" else same < 0.5 * len(got[0])


@pytest.mark.parametrize("hosts", [1, 2])
def test_resume_anywhere_gives_the_unbroken_batches(corpus, hosts):
    # Each host of `hosts`: an unbroken stream of 30 batches (past two epoch ends), then restores
    # at batch 5 (epoch 0) and 27 (a later epoch) from the position saved there, and at 27
    # without its epoch sizes (located by rebuilding the epochs before it).
    src = _source(corpus)
    n, batch = 30, 32 // hosts  # about 9 batches an epoch per host
    runs = {}
    for h in range(hosts):
        it = src.input(batch_size=batch, process_index=h, process_count=hosts, shuffle_buffer=64)
        ref, states = [], {}
        for k in range(n):
            states[k] = it.state()
            ref.append(next(it))
        states[n] = it.state()
        it.close()
        runs[h] = (ref, states)
    for h, (_, st) in runs.items():
        assert len(st[n]["epoch_sizes"][str(h)]) >= 2, f"host {h} never crossed two epoch ends"
    for k in (5, 27):
        # What process 0's checkpoint holds: every host's sizes (gathered in a real run).
        saved = {"batches": k, "epoch_sizes": {}}
        for h in range(hosts):
            saved["epoch_sizes"].update(runs[h][1][k]["epoch_sizes"])
        for h in range(hosts):
            for state in (saved, {"batches": k}) if k == 27 else (saved,):
                it = src.input(batch_size=batch, process_index=h, process_count=hosts,
                               shuffle_buffer=64, state=state, validate=False)
                _equal(_take(it, n - k), runs[h][0][k:])
                assert it.state() == runs[h][1][n]
                it.close()


def test_worker_processes_give_the_in_process_batches(corpus):
    src = _source(corpus)
    one = src.input(batch_size=B, shuffle_buffer=64, workers=1)
    two = src.input(batch_size=B, shuffle_buffer=64, workers=2, validate=False)
    try:
        _equal(_take(two, 25), _take(one, 25))
    finally:
        one.close()
        two.close()


def test_epoch_statistics_match_prepares_within_sampling_noise(tmp_path):
    # An independent draw of the same process: stream epoch 1 (its own segment boundaries,
    # partners and masks) against prepare's pass 0, both with static masks. Instances are not
    # independent (a document's target length, drawn once, shapes all its instances), so the
    # tolerances treat documents as the independent units: 4 standard errors, bounded from each
    # document's sentence count and each statistic's range alone, never from the outputs.
    root = str(tmp_path)
    for i in range(4):
        ps.write_corpus(os.path.join(root, f"corpus-{i}.txt"), n_docs=150, seed=10 + i)
    ps.write_vocab(os.path.join(root, "vocab.txt"))
    out = str(tmp_path / "prepared")
    meta = prepare.prepare(prepare.Options(
        input=os.path.join(root, "corpus-*.txt"), vocab=os.path.join(root, "vocab.txt"),
        output_dir=out, max_seq_length=ps.SEQ, max_predictions_per_seq=ps.PREDS,
        masking="static", dupe_factor=1, num_workers=1, seed=5))
    p = meta["stats"]
    it = _source(root).input(batch_size=B, shuffle_buffer=64, with_example_ids=True)
    rows = list(_epochs(it, 2)[1].values())
    it.close()
    n_a, n_b = p["instances"], len(rows)
    sizes = [len(doc) for doc in _docs(root)]
    # A document's instances: 0 to its sentence count s, so their count varies by at most s / 2
    # (sd); a sum over its instances of y - mean, with y in a range r, by at most s * r.
    cluster = math.sqrt(sum(s * s for s in sizes))
    assert abs(n_a - n_b) <= 4 * math.sqrt(2) * cluster / 2, (n_a, n_b, cluster)
    se = math.sqrt(2) * cluster / min(n_a, n_b)  # times the statistic's range
    random_next = np.mean([r["next_sentence_labels"] for r in rows])
    tokens = np.mean([r["input_mask"].sum() for r in rows])
    masked = np.mean([r["masked_lm_weights"].sum() for r in rows])
    assert abs(random_next - p["random_next_share"]) <= 4 * 1 * se
    assert abs(tokens - p["mean_tokens_per_instance"]) <= 4 * (ps.SEQ - 5) * se
    assert abs(masked - p["mean_masked_per_instance"]) <= 4 * (ps.PREDS - 1) * se


def _docs(root):
    from bertjax.data import corpus

    return list(corpus.iter_documents(os.path.join(root, "corpus-*.txt")))


# ------------------------------------------------------------------------------- bad input


def test_refusals_before_training(corpus, tmp_path):
    with pytest.raises(UserError, match="no input files match"):
        _elsewhere(corpus, str(tmp_path / "nothing"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corpus-0.txt").write_bytes(b"A good line.\nAnother one.\n\nCaf\xe9 au lait.\n")
    with pytest.raises(UserError, match="not UTF-8: byte 0xe9"):
        _elsewhere(corpus, str(bad)).validate(0, 1)
    one = tmp_path / "one"
    one.mkdir()
    (one / "corpus-0.txt").write_text("One document.\nOf two sentences.\n")
    with pytest.raises(UserError, match="single document"):
        _elsewhere(corpus, str(one)).validate(0, 1)
    with pytest.raises(UserError, match="fewer than the 4 hosts"):
        _source(corpus).validate(0, 4)

    from bertjax import pretrain

    vocab = ps.write_vocab(os.path.join(corpus, "vocab.txt"))
    args = ps.overrides("", vocab + 1, **{"data.source": "text",
                                          "data.text_files": os.path.join(corpus, "corpus-*.txt"),
                                          "data.vocab": os.path.join(corpus, "vocab.txt")})
    with pytest.raises(UserError, match="model.vocab_size is"):
        pretrain.pretrain(ps.apply(base_config("tiny"), args), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")

    # Keys of the other source are refused, not silently ignored.
    with pytest.raises(UserError, match=r"data.pair_task applies to data.source=text only"):
        pretrain.pretrain(ps.apply(base_config("tiny"), ps.overrides(
            str(tmp_path / "prepared"), vocab, **{"data.pair_task": "sop"})), str(tmp_path / "p"))
    with pytest.raises(UserError, match=r"data.train_dir is read by data.source=prepared only"):
        pretrain.pretrain(ps.apply(base_config("tiny"), ps.overrides(
            str(tmp_path / "prepared"), vocab, **{"data.source": "text"})), str(tmp_path / "t"))
    assert not os.path.exists(tmp_path / "p") and not os.path.exists(tmp_path / "t")


def test_cli_refuses_non_utf8_text_in_one_line(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_bytes(b"One.\nTwo.\n\n\xff Three.\nFour.\n")
    ps.write_vocab(str(bad / "vocab.txt"))
    r = ps.run_pretrain(str(tmp_path / "run"), ps.overrides("", 60, **{
        "data.source": "text", "data.text_files": str(bad / "a.txt"),
        "data.vocab": str(bad / "vocab.txt")}), devices=1)
    lines = ps.error_lines(r.stderr)
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and "is not UTF-8: byte 0xff" in lines[0], lines

