"""prepare end to end on generated corpora: statistics of the written data (NSP balance, masking
rates, whole words, layout), resumability, determinism across worker counts, and bad inputs
(a subprocess each: exit code 2, one line on stderr, nothing marked complete)."""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bertjax.bench.data import synthetic_corpus
from bertjax.data import prepare, records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLS, SEP, MASK = 2, 3, 4


def run(corpus_glob, vocab, out, **kw):
    opts = dict(input=corpus_glob, vocab=vocab, output_dir=str(out), max_seq_length=64,
                max_predictions_per_seq=10, dupe_factor=1, num_workers=1, seed=3)
    opts.update(kw)
    return prepare.prepare(prepare.Options(**opts))


def load(out):
    with open(os.path.join(out, "metadata.json")) as f:
        meta = json.load(f)
    dtype = records.dtype_from_metadata(meta)
    recs = np.concatenate([records.read_shard(os.path.join(out, s["file"]), dtype)
                           for s in meta["shards"]])
    return meta, recs


def shard_dones(out):
    return {os.path.basename(p): json.load(open(p)) for p in glob.glob(os.path.join(out, "*.done"))}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    return synthetic_corpus(str(d), files=4, docs_per_file=220, sentences=(20, 50), words=(2, 10))


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    return synthetic_corpus(str(d), files=4, docs_per_file=40, seed=1)


@pytest.fixture(scope="module")
def static_data(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("static")
    run(*corpus, out)
    return str(out)


def test_layout_nsp_and_masking_statistics(static_data):
    meta, r = load(static_data)
    n = len(r)
    assert n > 5000 and meta["stats"]["instances"] == n
    assert meta["max_seq_length"] == 64 and meta["max_predictions_per_seq"] == 10
    assert meta["masking"] == "static" and meta["nsp"] and meta["tokenizer"]["kind"] == "wordpiece"
    assert len(np.unique(r["example_id"])) == n
    length, seg, tok = r["length"], r["segment_start"], r["tokens"].astype(np.int64)
    rows = np.arange(n)
    assert (length <= 64).all() and (seg >= 3).all() and (seg <= length - 2).all()
    assert (tok[:, 0] == CLS).all() and (tok[rows, seg - 1] == SEP).all()
    assert (tok[rows, length - 1] == SEP).all()
    pos = np.arange(64)[None, :]
    assert ((tok == SEP) & (pos < length[:, None])).sum(1).tolist() == [2] * n
    assert (tok[pos >= length[:, None]] == 0).all()

    # Next sentence: random B always from another document; the coin is fair where it decides.
    label = r["next_sentence_label"].astype(bool)
    assert (r["a_doc"][label] != r["b_doc"][label]).all()
    assert (r["a_doc"][~label] == r["b_doc"][~label]).all()
    forced = sum(d["stats"]["forced_random"] for d in shard_dones(static_data).values())
    coin = (label.sum() - forced) / (n - forced)
    assert abs(coin - 0.5) < 0.02
    assert meta["stats"]["random_next_share"] == pytest.approx(label.mean())

    # Masking: the original's min(P, max(1, round(0.15 * len(tokens)))) per row, with Python 3's
    # round and [CLS]/[SEP] counted, never a special token chosen.
    cand = length - 2 - 1  # [CLS] and two [SEP]
    k = r["num_masked"]
    np.testing.assert_array_equal(k, [min(10, max(1, int(round(int(t) * 0.15)))) for t in length])
    assert meta["mask_budget"] == "sequence"
    assert meta["stats"]["masked_share_of_candidates"] == pytest.approx(k.sum() / cand.sum())
    mpos = r["masked_positions"].astype(np.int64)
    mids = r["masked_ids"].astype(np.int64)
    real = np.arange(10)[None, :] < k[:, None]
    assert (mpos[real] < np.repeat(length, k)).all() and (mpos[real] > 0).all()
    assert not np.isin(mids[real], [0, 1, CLS, SEP, MASK]).any()
    assert (mpos[~real] == 0).all() and (mids[~real] == 0).all()
    assert all(np.all(np.diff(p[:c]) > 0) for p, c in zip(mpos, k))
    now = np.take_along_axis(tok, mpos, 1)[real]
    as_mask, kept = (now == MASK).mean(), (now == mids[real]).mean()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(1 - as_mask - kept - 0.1) < 0.02
    assert meta["stats"]["mask_token_share"] == pytest.approx(as_mask)
    # Unmasked positions hold no [MASK].
    unmasked = np.ones_like(tok, bool)
    np.put_along_axis(unmasked, mpos, ~real, axis=1)
    unmasked[:, 0] = True
    assert not ((tok == MASK) & unmasked).any()


def test_rerun_skips_complete_shards_and_rebuilds_an_interrupted_one(small_corpus, tmp_path,
                                                                     capsys):
    corpus = small_corpus
    out = tmp_path / "out"
    run(*corpus, out, dupe_factor=2)
    shards = sorted(glob.glob(str(out / "*.rec")))
    assert len(shards) == 8
    before = {p: (os.stat(p).st_mtime_ns, open(p, "rb").read()) for p in shards}
    capsys.readouterr()

    run(*corpus, out, dupe_factor=2)
    assert "8 already complete, 0 to build" in capsys.readouterr().out
    assert all(os.stat(p).st_mtime_ns == before[p][0] for p in shards)

    # Interrupted: a shard without its .done, another cut short, and a temporary file left behind.
    victim, cut = shards[3], shards[5]
    os.unlink(victim + ".done")
    with open(cut, "r+b") as f:
        f.truncate(100)
    stale = out / f".{os.path.basename(victim)}.999.tmp"
    stale.write_bytes(b"half a record")
    os.unlink(out / "metadata.json")
    meta = run(*corpus, out, dupe_factor=2)
    log = capsys.readouterr().out
    assert "6 already complete, 2 to build" in log and "removed 1 temporary" in log
    assert not stale.exists() and not glob.glob(str(out / ".*"))
    for p in shards:
        assert open(p, "rb").read() == before[p][1]  # rebuilt byte for byte
        if p not in (victim, cut):
            assert os.stat(p).st_mtime_ns == before[p][0]
    assert len(meta["shards"]) == 8

    # Changed parameters make every shard stale.
    run(*corpus, out, dupe_factor=2, masked_lm_prob=0.2)
    assert "0 already complete, 8 to build" in capsys.readouterr().out


def test_workers_give_the_same_bytes_as_one_process(small_corpus, tmp_path):
    corpus = small_corpus
    files = sorted(glob.glob(corpus[0]))[:2]
    one = run(",".join(files), corpus[1], tmp_path / "one", masking="dynamic", dupe_factor=2,
              whole_word_masking=True)
    two = run(",".join(files), corpus[1], tmp_path / "two", masking="dynamic", dupe_factor=2,
              whole_word_masking=True, num_workers=2)
    assert one["stats"] == two["stats"]
    for s in one["shards"]:
        a = (tmp_path / "one" / s["file"]).read_bytes()
        assert a == (tmp_path / "two" / s["file"]).read_bytes()
    _, r = load(str(tmp_path / "one"))
    assert not (r["tokens"] == MASK).any() and (r["num_masked"] == 0).all()
    assert "masked_positions" not in r.dtype.names
    # The two passes pair sentences differently.
    by_pass = [r[(r["example_id"] >> 32) & 0xFF == p] for p in (0, 1)]
    assert len(by_pass[0]) and len(by_pass[1])
    assert not np.array_equal(by_pass[0]["tokens"][:50], by_pass[1]["tokens"][:50])
    assert not glob.glob(str(tmp_path / "one" / ".cache*"))


def test_whole_word_static_masks_decide_per_word(corpus, tmp_path):
    files = sorted(glob.glob(corpus[0]))[0]
    meta = run(files, corpus[1], tmp_path, whole_word_masking=True, max_predictions_per_seq=12)
    _, r = load(str(tmp_path))
    cont = np.load(tmp_path / "continuation.npy")
    words_seen = masked_words = 0
    for rec in r:
        k = rec["num_masked"]
        original = rec["tokens"].astype(np.int64).copy()
        original[rec["masked_positions"][:k]] = rec["masked_ids"][:k]
        chosen = set(rec["masked_positions"][:k].tolist())
        j = 1
        while j < rec["length"] - 1:
            if original[j] == SEP:
                j += 1
                continue
            word = [j]
            while j + len(word) < rec["length"] and cont[original[j + len(word)]]:
                word.append(j + len(word))
            hit = [p in chosen for p in word]
            assert all(hit) or not any(hit)
            if all(hit):
                masked_words += 1
                is_mask = [rec["tokens"][p] == MASK for p in word]
                assert all(is_mask) or not any(is_mask)
            words_seen += 1
            j += len(word)
    assert masked_words > 100 and words_seen > masked_words
    # Whole words may leave the budget a little short, never over it; the budget counts the
    # specials, so the share of candidates sits above 15%.
    budget = np.array([min(12, max(1, int(round(int(t) * 0.15)))) for t in r["length"]])
    assert (r["num_masked"] <= budget).all() and r["num_masked"].sum() > 0.97 * budget.sum()
    assert 0.15 < meta["stats"]["masked_share_of_candidates"] < 0.17


def test_no_nsp_packs_one_document(tmp_path):
    corpus_glob, vocab = synthetic_corpus(str(tmp_path / "c"), files=1, docs_per_file=1,
                                          sentences=(300, 301))
    meta = run(corpus_glob, vocab, tmp_path / "out", nsp=False, masking="dynamic")
    _, r = load(str(tmp_path / "out"))
    assert not meta["nsp"] and len(r) > 20
    assert (r["segment_start"] == r["length"]).all() and (r["next_sentence_label"] == 0).all()
    assert (r["b_doc"] == -1).all()
    rows = np.arange(len(r))
    assert (r["tokens"][:, 0] == CLS).all() and (r["tokens"][rows, r["length"] - 1] == SEP).all()


def _bad_inputs(root):
    corpus_glob, vocab = synthetic_corpus(str(root / "good"), files=1, docs_per_file=5)
    cases = {}
    cases["missing input"] = (str(root / "nowhere" / "*.txt"), vocab)
    (root / "empty.txt").write_bytes(b"")
    cases["empty file"] = (str(root / "empty.txt"), vocab)
    (root / "latin1.txt").write_bytes("w1 w2 .\nw3 caf\xe9 w4\n\nw5 w6\nw7\n".encode("latin-1"))
    cases["not utf-8"] = (str(root / "latin1.txt"), vocab)
    (root / "notvocab.txt").write_text("hello\nworld\n")
    cases["not a vocab"] = (corpus_glob, str(root / "notvocab.txt"))
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    cases["binary vocab"] = (corpus_glob, str(root / "binary.txt"))
    one_doc, _ = synthetic_corpus(str(root / "one"), files=1, docs_per_file=1, sentences=(9, 10))
    cases["one document"] = (one_doc, vocab)
    cases["missing vocab"] = (corpus_glob, str(root / "no-vocab.txt"))
    return cases


def test_bad_inputs_exit_2_with_one_line_and_nothing_complete(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    procs = {}
    for name, (inp, vocab) in _bad_inputs(tmp_path).items():
        out = tmp_path / ("out-" + name.replace(" ", "-"))
        cmd = [sys.executable, "-m", "bertjax.data.prepare", f"--input={inp}", f"--vocab={vocab}",
               f"--output_dir={out}", "--num_workers=1", "--dupe_factor=1"]
        procs[name] = (subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True), out)
    good_glob, good_vocab = synthetic_corpus(str(tmp_path / "fine"), files=2, docs_per_file=5)
    good_out = tmp_path / "out-fine"
    good = subprocess.Popen(
        [sys.executable, "-m", "bertjax.data.prepare", f"--input={good_glob}",
         f"--vocab={good_vocab}", f"--output_dir={good_out}", "--num_workers=2",
         "--dupe_factor=2", "--masking=dynamic", "--no_nsp"],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    said = {}
    for name, (proc, out) in procs.items():
        _, stderr = proc.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (name, stderr)
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, stderr)
        assert not glob.glob(str(out / "*.done")) and not (out / "metadata.json").exists(), name
        said[name] = lines[0]
    assert "not UTF-8" in said["not utf-8"] and "single document" in said["one document"]
    assert "empty" in said["empty file"] and "nowhere" in said["missing input"]
    assert "notvocab.txt" in said["not a vocab"] and "binary" in said["binary vocab"]
    stdout, stderr = good.communicate(timeout=120)
    assert good.returncode == 0, stderr
    meta = json.loads((good_out / "metadata.json").read_text())
    assert not meta["nsp"] and meta["masking"] == "dynamic" and len(meta["shards"]) == 4
    assert "with 2 worker(s)" in stdout and "wrote" in stdout
