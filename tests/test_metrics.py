"""GLUE metrics against scikit-learn/scipy, official SQuAD and conlleval scoring on hand-computed
cases, and the prediction writers."""
import json
import os

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from bertjax.data.tasks import glue
from bertjax.errors import UserError
from bertjax.evaluate import conll_metrics as C
from bertjax.evaluate import glue_metrics as G
from bertjax.evaluate import squad_metrics as Q
from bertjax.evaluate import writers as W

# ---------------------------------------------------------------- GLUE metrics


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.7, y, 1 - y)
    assert G.accuracy(p, y) == pytest.approx(skm.accuracy_score(y, p))
    assert G.f1_binary(p, y) == pytest.approx(skm.f1_score(y, p))
    assert G.matthews_corrcoef(p, y) == pytest.approx(skm.matthews_corrcoef(y, p))
    y3, p3 = rng.integers(0, 3, 300), rng.integers(0, 3, 300)
    p3[:150] = y3[:150]
    assert G.matthews_corrcoef(p3, y3) == pytest.approx(skm.matthews_corrcoef(y3, p3))


def test_degenerate_classification_metrics_match_sklearn():
    y = np.array([0, 1, 1, 0, 1])
    const = np.zeros(5, int)
    assert G.matthews_corrcoef(const, y) == skm.matthews_corrcoef(y, const) == 0.0
    assert G.f1_binary(const, y) == skm.f1_score(y, const, zero_division=0) == 0.0
    assert G.f1_binary(const, const) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=100)
    y = x + rng.normal(size=100)
    assert G.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert G.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    # STS-B gold scores are full of ties; ranks must be averaged over them.
    xt, yt = np.round(x * 2) / 2, np.round(y)
    assert G.spearman(xt, yt) == pytest.approx(stats.spearmanr(xt, yt)[0])
    np.testing.assert_allclose(G.rankdata(xt), stats.rankdata(xt))


def test_constant_prediction_has_zero_correlation():
    assert G.pearson(np.ones(4), np.arange(4.0)) == 0.0
    assert G.spearman(np.ones(4), np.arange(4.0)) == 0.0


def test_per_task_metric_selection():
    y = np.array([0, 1, 1, 0])
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]])  # predicts 0,1,0,0
    cola = G.compute("cola", logits, y)
    assert set(cola) == {"mcc", "score"}
    assert cola["mcc"] == pytest.approx(skm.matthews_corrcoef(y, [0, 1, 0, 0]))
    mrpc = G.compute("MRPC", [0, 1, 0, 0], y)
    assert set(mrpc) == {"accuracy", "f1", "score"}
    assert mrpc["score"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert set(G.compute("qqp", [0, 1, 0, 0], y)) == {"accuracy", "f1", "score"}
    sts = G.compute("sts-b", np.array([[0.5], [2.0], [3.5], [1.0]]), [1.0, 2.0, 4.0, 1.5])
    assert set(sts) == {"pearson", "spearman", "score"}
    assert sts["spearman"] == pytest.approx(1.0)
    for task in ("sst2", "mnli", "qnli", "rte", "wnli"):
        assert set(G.compute(task, [0, 1], [0, 1])) == {"accuracy", "score"}


# ---------------------------------------------------------------- SQuAD scoring


def test_squad_normalisation_and_token_f1():
    assert Q.normalize_answer("The  Quick, Brown fox!") == "quick brown fox"
    assert Q.normalize_answer("An apple a day") == "apple day"
    assert Q.normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert Q.exact_match("the Eiffel tower.", "Eiffel Tower") == 1
    assert Q.f1_score("the cat sat", "cat sat on the mat") == pytest.approx(2 / 3)
    assert Q.f1_score("cat cat", "cat") == pytest.approx(2 / 3)  # counts clip at the gold count
    assert Q.f1_score("dog", "cat") == 0.0
    assert Q.f1_score("", "") == 1.0
    assert Q.f1_score("", "cat") == 0.0


def test_squad_evaluate_hand_computed_v2():
    golds = {"q1": ["Paris", "the city of Paris"], "q2": [], "q3": ["1895"], "q4": [],
             "q5": ["Rome"]}
    preds = {"q1": "city of Paris", "q2": "", "q3": "in 1895 or so", "q4": "London"}
    res = Q.evaluate(golds, preds)
    # q1 exact against its second answer; q2 right "no answer"; q3 F1 = 2*(1/4*1)/(1/4+1) = 0.4;
    # q4 answers a no-answer question; q5 has no prediction and is skipped, as officially.
    assert res["total"] == 4
    assert res["exact"] == pytest.approx(100 * 2 / 4)
    assert res["f1"] == pytest.approx(100 * (1 + 1 + 0.4) / 4)
    assert res["HasAns_total"] == 2 and res["NoAns_total"] == 2
    assert res["HasAns_f1"] == pytest.approx(100 * 1.4 / 2)
    assert res["NoAns_exact"] == pytest.approx(50.0)
    # With odds: q4 (odds 2 > 1.0, the default threshold) is scored as "no answer", so right.
    odds = {"q1": -1.0, "q2": 3.0, "q3": 0.0, "q4": 2.0}
    res = Q.evaluate(golds, preds, odds)
    assert res["exact"] == pytest.approx(100 * 3 / 4) and res["NoAns_exact"] == 100.0


def test_best_threshold_walks_ties_one_at_a_time_from_zero():
    # Two questions share odds 0.5. The official walk takes them one by one: answering "a" alone
    # (a right span) reaches 2 of 2 at threshold 0.5, though no threshold answers a but not b.
    golds = {"a": ["x"], "b": []}
    preds = {"a": "x", "b": "y"}
    odds = {"a": 0.5, "b": 0.5}
    res = Q.evaluate(golds, preds, odds)
    assert res["best_exact"] == pytest.approx(100.0) and res["best_exact_thresh"] == 0.5
    # The other order of the same tie never beats the start (1 of 2), so the threshold stays 0.0.
    res = Q.evaluate(golds, preds, {"b": 0.5, "a": 0.5})
    assert res["best_exact"] == pytest.approx(50.0) and res["best_exact_thresh"] == 0.0


def test_best_threshold_hand_computed():
    golds = {"a": ["x"], "b": [], "c": ["z"], "d": [], "e": []}
    preds = {"a": "x", "b": "y", "c": "z", "d": "w", "e": ""}
    odds = {"a": -2.0, "b": -1.0, "c": 0.5, "d": 0.5, "e": 3.0}
    # Start: the 3 no-answer questions, 3/5. a adds 1 -> 4 (best, threshold -2); b costs 1 -> 3;
    # c adds 1 -> 4 (not above 4); d costs 1 -> 3; e's empty prediction costs nothing.
    res = Q.evaluate(golds, preds, odds)
    assert res["best_exact"] == pytest.approx(80.0) and res["best_exact_thresh"] == -2.0
    # best_* use the submitted predictions: with "" submitted for a, a adds 0, b costs 1, c gets
    # back to 3 but not above it: the start (3/5 at threshold 0.0) stays best.
    res = Q.evaluate(golds, dict(preds, a=""), odds)
    assert res["best_exact"] == pytest.approx(60.0) and res["best_exact_thresh"] == 0.0
    # Nothing beats "all no answer": the threshold is the walk's start, 0.0.
    res = Q.evaluate({"a": []}, {"a": "x"}, {"a": -3.0})
    assert res["best_exact"] == 100.0 and res["best_exact_thresh"] == 0.0


def _official_v2(golds, preds, na_probs=None, thresh=1.0):
    """The official SQuAD v2.0 evaluation's arithmetic, restated from its documented behaviour
    for this test: skip unpredicted questions; score a question as "no answer" when its na_prob
    exceeds the threshold; averages over the scored questions; best_* walk na_probs in ascending
    order (stable) from threshold 0.0 and a start of every gold no-answer question counted right."""
    def norm(t):
        t = "".join(c for c in t.lower() if c not in set(__import__("string").punctuation))
        t = __import__("re").sub(r"\b(a|an|the)\b", " ", t)
        return " ".join(t.split())

    def f1(g, p):
        g, p = norm(g).split(), norm(p).split()
        if not g or not p:
            return float(g == p)
        same = sum(min(g.count(w), p.count(w)) for w in set(g))
        if not same:
            return 0.0
        pr, rc = same / len(p), same / len(g)
        return 2 * pr * rc / (pr + rc)

    raw = {}
    for q, answers in golds.items():
        if q not in preds:
            continue
        gs = [x for x in answers if norm(x)] or [""]
        raw[q] = (max(float(norm(x) == norm(preds[q])) for x in gs), max(f1(x, preds[q]) for x in gs))
    probs = na_probs if na_probs is not None else {q: 0.0 for q in preds}
    out = {}
    for k, name in ((0, "exact"), (1, "f1")):
        scored = {q: (float(not golds[q]) if probs[q] > thresh else v[k]) for q, v in raw.items()}
        out[name] = 100.0 * sum(scored.values()) / len(scored)
        if na_probs is None:
            continue
        cur = best = sum(1 for q in golds if not golds[q])
        best_t = 0.0
        for q in sorted(na_probs, key=lambda x: na_probs[x]):
            if q not in raw:
                continue
            cur += raw[q][k] if golds[q] else (-1 if preds[q] else 0)
            if cur > best:
                best, best_t = cur, na_probs[q]
        out[f"best_{name}"], out[f"best_{name}_thresh"] = 100.0 * best / len(raw), best_t
    return out


@pytest.mark.parametrize("seed", range(6))
def test_squad_v2_matches_the_official_arithmetic_on_random_submissions(seed):
    rng = np.random.default_rng(seed)
    texts = ["red apple", "the red apple", "apple", "blue pear", "a pear", ""]
    golds, preds, odds = {}, {}, {}
    for i in range(80):
        q = f"q{i}"
        golds[q] = [] if rng.random() < 0.4 else list(rng.choice(texts[:5], rng.integers(1, 3)))
        if rng.random() < 0.9:  # some questions go unpredicted
            preds[q] = str(rng.choice(texts))
            odds[q] = float(rng.integers(-3, 4)) / 2  # many ties, some exactly 1.0
    # Odds in a shuffled order, so the tie order is not the gold order.
    odds = {q: odds[q] for q in rng.permutation(list(odds))}
    for thresh in (1.0, 0.0, -0.5):
        want = _official_v2(golds, preds, odds, thresh)
        got = Q.evaluate(golds, preds, odds, na_prob_thresh=thresh)
        for key, value in want.items():
            assert got[key] == pytest.approx(value), (key, thresh)
    assert Q.evaluate(golds, preds)["f1"] == pytest.approx(_official_v2(golds, preds)["f1"])
    assert Q.evaluate(golds, preds)["total"] == len(preds) < len(golds)


# ---------------------------------------------------------------- conlleval


def test_conll_iob2_hand_computed():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
    r = C.evaluate(gold, pred)
    # gold chunks: PER, LOC, ORG; predicted: PER, ORG(wrong place), ORG -> 2 correct of 3 and 3.
    assert (r.overall.correct, r.overall.found_gold, r.overall.found_pred) == (2, 3, 3)
    assert r.overall.f1 == pytest.approx(200 / 3)
    assert r.per_type["LOC"].recall == 0.0 and r.per_type["LOC"].found_pred == 0
    assert r.per_type["ORG"].precision == pytest.approx(50.0)
    assert r.per_type["ORG"].recall == pytest.approx(100.0)
    assert r.tokens == 6 and r.accuracy == pytest.approx(500 / 6)


def test_conll_iob1_hand_computed():
    # IOB1: B- only separates adjacent chunks of one type. Gold: PER(0-1) PER(2) LOC(4).
    gold = [["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]
    pred = [["I-PER", "I-PER", "I-PER", "O", "I-LOC"]]
    r = C.evaluate(gold, pred)
    assert (r.overall.correct, r.overall.found_gold, r.overall.found_pred) == (1, 3, 2)
    assert r.overall.precision == pytest.approx(50.0)
    assert r.overall.recall == pytest.approx(100 / 3)
    assert r.overall.f1 == pytest.approx(40.0)


def test_conll_leniency_and_boundaries():
    # conlleval opens a chunk at an I- tag after O and at a type change.
    r = C.evaluate([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]])
    assert r.overall.correct == 1 and r.overall.f1 == 100.0
    r = C.evaluate([["B-PER", "I-PER"]], [["B-PER", "I-LOC"]])
    assert (r.overall.correct, r.overall.found_pred) == (0, 2)
    # A sentence boundary ends a chunk even if the next sentence starts with I- of that type.
    r = C.evaluate([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])
    assert (r.overall.correct, r.overall.found_gold) == (2, 2)
    r = C.evaluate([], [])
    assert r.overall.f1 == 0.0 and r.tokens == 0


def _random_tags(rng, n_sentences, scheme):
    """Random tag sequences. IOB2: every chunk opens with B-. IOB1: chunks are runs of I-, with
    B- only where a chunk follows one of the same type. Both also get some ill-formed tags (an
    I- of another type inside a chunk, a stray B-), which conlleval reads leniently."""
    types = ["PER", "LOC", "ORG"]
    out = []
    for _ in range(n_sentences):
        tags, prev_type = [], None
        for _ in range(int(rng.integers(1, 12))):
            r = rng.random()
            if r < 0.4:
                tags.append("O")
                prev_type = None
                continue
            kind = str(rng.choice(types))
            if scheme == "IOB2":
                inside = prev_type == kind and rng.random() < 0.6
                tags.append(("I-" if inside else "B-") + kind)
            else:
                new_chunk = prev_type == kind and rng.random() < 0.3
                tags.append(("B-" if new_chunk else "I-") + kind)
            prev_type = kind
        out.append(tags)
    return out


@pytest.mark.parametrize("scheme", ["IOB1", "IOB2"])
@pytest.mark.parametrize("seed", range(4))
def test_conll_matches_seqeval_on_random_sequences(scheme, seed):
    """seqeval's default mode (no `scheme`) is its conlleval-compatible reading; the strict
    mode with a scheme is not what conlleval does, so it is not the reference here."""
    from seqeval import metrics as sm

    rng = np.random.default_rng(seed)
    gold = _random_tags(rng, 40, scheme)
    pred = [[t if rng.random() < 0.7 else str(rng.choice(["O", "B-PER", "I-PER", "I-LOC",
                                                          "B-ORG", "I-ORG"]))
             for t in sent] for sent in gold]
    r = C.evaluate(gold, pred)
    assert r.overall.precision == pytest.approx(100 * sm.precision_score(gold, pred))
    assert r.overall.recall == pytest.approx(100 * sm.recall_score(gold, pred))
    assert r.overall.f1 == pytest.approx(100 * sm.f1_score(gold, pred))
    assert r.accuracy == pytest.approx(100 * sm.accuracy_score(gold, pred))
    report = sm.classification_report(gold, pred, output_dict=True, zero_division=0)
    for kind in ("PER", "LOC", "ORG"):
        ours = r.per_type.get(kind)
        if kind not in report:
            assert ours is None or ours.found_gold == 0
            continue
        assert ours.found_gold == report[kind]["support"]
        assert ours.precision == pytest.approx(100 * report[kind]["precision"])
        assert ours.recall == pytest.approx(100 * report[kind]["recall"])
        assert ours.f1 == pytest.approx(100 * report[kind]["f1-score"])


def test_conll_file_format_matches_sequence_api(tmp_path):
    tokens = [["Anna", "lives", "in", "Paris"], ["Acme", "Corp", "."]]
    gold = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "O", "O", "B-ORG"], ["B-ORG", "I-ORG", "O"]]
    path = W.write_conll(str(tmp_path / "out" / "dev.conll"), tokens, gold, pred)
    lines = open(path, encoding="utf-8").read().splitlines()
    assert lines[:2] == ["Anna B-PER B-PER", "lives O O"] and lines[4] == ""
    from_file = C.evaluate_lines(["-DOCSTART- -X- O O", ""] + lines)
    assert from_file.as_dict() == C.evaluate(gold, pred).as_dict()
    text = C.report(from_file)
    assert text.startswith("processed 7 tokens with 3 phrases; found: 3 phrases; correct: 2.")
    assert "FB1:  66.67" in text
    with pytest.raises(ValueError):
        W.write_conll(str(tmp_path / "bad.conll"), [["two words"]], [["O"]], [["O"]])


# ---------------------------------------------------------------- writers


def test_glue_submission_files(tmp_path):
    expected = {"cola": ["CoLA.tsv"], "sst2": ["SST-2.tsv"], "mrpc": ["MRPC.tsv"],
                "stsb": ["STS-B.tsv"], "qqp": ["QQP.tsv"], "mnli": ["MNLI-m.tsv", "MNLI-mm.tsv"],
                "qnli": ["QNLI.tsv"], "rte": ["RTE.tsv"], "wnli": ["WNLI.tsv"], "ax": ["AX.tsv"]}
    for name, files in expected.items():
        task = glue.get_task(name)
        assert [W.glue_submission_name(task, s) for s in task.test_splits] == files
    path = W.write_glue_submission(str(tmp_path), "mnli", "test_mismatched", [0, 1, 2],
                                   [0, "contradiction", 1])
    assert os.path.basename(path) == "MNLI-mm.tsv"
    assert open(path).read() == "index\tprediction\n0\tentailment\n1\tcontradiction\n2\tneutral\n"
    path = W.write_glue_submission(str(tmp_path), "STS-B", "test", [7, 8], [5.4, 2.25])
    assert open(path).read().splitlines()[1:] == ["7\t5.000", "8\t2.250"]
    path = W.write_glue_submission(str(tmp_path), "cola", "test", [0], [1])
    assert open(path).read().splitlines()[1] == "0\t1"
    with pytest.raises(UserError, match="not a test split"):
        W.glue_submission_name("rte", "dev")
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_writers_leave_nothing_behind_on_failure(tmp_path, monkeypatch):
    with pytest.raises(ValueError):
        W.write_glue_submission(str(tmp_path), "stsb", "test", [0], [float("nan")])
    with pytest.raises(ValueError):
        W.write_glue_submission(str(tmp_path), "rte", "test", [0], ["maybe"])
    assert os.listdir(tmp_path) == []

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        W.atomic_write_text(str(tmp_path / "x.json"), "{}")
    assert os.listdir(tmp_path) == []


def test_squad_prediction_files(tmp_path):
    paths = W.write_squad_predictions(str(tmp_path), {"q1": "Paris", "q2": ""},
                                      null_odds={"q1": -3.5, "q2": 1.25},
                                      nbest={"q1": [{"text": "Paris", "probability": 1.0}]})
    assert json.load(open(paths["predictions"])) == {"q1": "Paris", "q2": ""}
    assert json.load(open(paths["null_odds"])) == {"q1": -3.5, "q2": 1.25}
    assert json.load(open(paths["nbest"]))["q1"][0]["text"] == "Paris"
    assert sorted(os.listdir(tmp_path)) == ["nbest_predictions.json", "null_odds.json",
                                            "predictions.json"]
