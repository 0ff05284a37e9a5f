"""SQuAD span decoding (n-best over every window of a question), the v2.0 no-answer decision and
its threshold search, and the official exact-match / F1 scoring."""
from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import re
import string
import unicodedata

import numpy as np

from bertjax.data.tasks.squad import SquadExample, SquadFeatures

# ---------------------------------------------------------------- decoding


@functools.lru_cache(maxsize=65536)
def _norm_char(ch: str) -> str:
    if ch.isspace() or ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Cf"):
        return ""
    return "".join(c.casefold() for c in unicodedata.normalize("NFD", ch)
                   if unicodedata.category(c) != "Mn")


def _norm(text: str) -> list[tuple[str, int]]:
    """(character, index in text) after the normalisation a BERT tokenizer may apply (control
    and format characters dropped, accents stripped, case folded) with whitespace dropped, so
    piece text can be matched to the original characters it came from."""
    return [(f, i) for i, ch in enumerate(text) for f in _norm_char(ch)]


def _surface(piece: str) -> str:
    # WordPiece marks continuations with "##", SentencePiece marks word starts with "▁";
    # whitespace is ignored in matching, so both markers just go.
    if piece.startswith("##") and len(piece) > 2:
        piece = piece[2:]
    return piece.replace("▁", "")


def _norm_len(piece: str) -> int:
    return len(_norm(_surface(piece)))


def span_text(ex: SquadExample, pieces: list[str], piece_to_word: list[int], a: int,
              b: int) -> str:
    """Original passage text for passage pieces a..b (inclusive).

    The answer must come back as written in the passage, not as the tokenizer's lower-cased
    pieces. When the pieces of the first and last word spell their words exactly, the cut inside
    those words is known from the piece lengths; otherwise (an [UNK], an odd normalisation) the
    piece text is searched for inside the words; failing that the whole words are returned."""
    wa, wb = piece_to_word[a], piece_to_word[b]
    start, end = ex.word_spans[wa][0], ex.word_spans[wb][1]
    orig = ex.context[start:end]
    chars = _norm(orig)

    def flat(text: str) -> str:
        return "".join(c for c, _ in _norm(text))

    def pieces_of(w: int) -> range:
        # piece_to_word is non-decreasing, so a word's pieces are one contiguous run.
        return range(bisect.bisect_left(piece_to_word, w), bisect.bisect_right(piece_to_word, w))

    first, last = pieces_of(wa), pieces_of(wb)
    if all(flat("".join(_surface(pieces[i]) for i in ws)) == flat(ex.words[w])
           for w, ws in ((wa, first), (wb, last))):
        cut_left = sum(_norm_len(pieces[i]) for i in first if i < a)
        cut_right = sum(_norm_len(pieces[i]) for i in last if i > b)
        kept = chars[cut_left:len(chars) - cut_right]
        if kept:
            return orig[kept[0][1]:kept[-1][1] + 1]
    wanted = flat("".join(_surface(p) for p in pieces[a:b + 1]))
    at = flat(orig).find(wanted) if wanted else -1
    if at >= 0:
        return orig[chars[at][1]:chars[at + len(wanted) - 1][1] + 1]
    return orig


@dataclasses.dataclass
class SquadPredictions:
    predictions: dict[str, str]       # the answer to submit ("" = no answer on v2)
    best_non_null: dict[str, str]     # best span text ignoring the no-answer option
    null_odds: dict[str, float]       # null score minus best span score (v2; higher = no answer)
    # up to n_best spans (and the "" entry on v2): {text, score, probability, start/end_logit}
    nbest: dict[str, list[dict]]


def postprocess(examples: list[SquadExample], feats: SquadFeatures, start_logits, end_logits, *,
                n_best: int = 20, max_answer_length: int = 30, version_2: bool = False,
                null_threshold: float = 1.0) -> SquadPredictions:
    """Decodes [N,S] start/end logits (one row per window, in feature order) into answers.

    Per window the n_best highest start and end positions are paired; a pair counts when both lie
    in the passage, the start is in its max-context window, end >= start and the span has at
    most max_answer_length pieces. Spans from all windows of a question compete on
    start+end logit. On v2 the no-answer score is the smallest [CLS] start+end over the windows;
    "" is predicted when it beats the best span by more than null_threshold."""
    start_logits = np.asarray(start_logits, np.float32)
    end_logits = np.asarray(end_logits, np.float32)
    if start_logits.shape != feats.token_to_piece.shape or end_logits.shape != start_logits.shape:
        raise ValueError(f"logits {start_logits.shape}/{end_logits.shape} do not match features "
                         f"{feats.token_to_piece.shape}")
    by_example = collections.defaultdict(list)
    for f, ei in enumerate(feats.example_index):
        by_example[int(ei)].append(f)
    out = SquadPredictions({}, {}, {}, {})
    k = min(n_best, start_logits.shape[1])
    for ei, ex in enumerate(examples):
        cands = []  # (score, start_logit, end_logit, feature, start, end)
        null = None
        for f in by_example.get(ei, []):
            sl, el = start_logits[f], end_logits[f]
            if version_2:
                score = float(sl[0] + el[0])
                if null is None or score < null[0]:
                    null = (score, float(sl[0]), float(el[0]))
            s_idx = np.argsort(-sl, kind="stable")[:k]
            e_idx = np.argsort(-el, kind="stable")[:k]
            in_doc = feats.token_to_piece[f] >= 0
            ok = (in_doc[s_idx] & feats.max_context[f][s_idx])[:, None] & in_doc[e_idx][None, :]
            length = e_idx[None, :] - s_idx[:, None]
            ok &= (length >= 0) & (length < max_answer_length)
            for i, j in zip(*np.nonzero(ok), strict=True):
                s, e = int(s_idx[i]), int(e_idx[j])
                cands.append((float(sl[s] + el[e]), float(sl[s]), float(el[e]), f, s, e))
        cands.sort(key=lambda c: -c[0])
        entries, seen = [], set()
        for score, s_logit, e_logit, f, s, e in cands:
            if len(entries) >= n_best:
                break
            a, b = int(feats.token_to_piece[f, s]), int(feats.token_to_piece[f, e])
            text = span_text(ex, feats.pieces[ei], feats.piece_to_word[ei], a, b)
            if text in seen:
                continue
            seen.add(text)
            entries.append({"text": text, "score": score, "start_logit": s_logit,
                            "end_logit": e_logit})
        best = next((x for x in entries if x["text"]), None)
        if version_2:
            # Every example has at least one window, so null is set here.
            entries.append({"text": "", "score": null[0], "start_logit": null[1],
                            "end_logit": null[2]})
            entries.sort(key=lambda x: -x["score"])
        if entries:
            scores = np.array([x["score"] for x in entries])
            probs = np.exp(scores - scores.max())
            probs /= probs.sum()
            for x, p in zip(entries, probs, strict=True):
                x["probability"] = float(p)
        out.nbest[ex.qid] = entries
        out.best_non_null[ex.qid] = best["text"] if best else ""
        if version_2:
            # No valid span at all: the answer can only be "no answer".
            diff = null[0] - best["score"] if best else float(np.finfo(np.float32).max)
            out.null_odds[ex.qid] = float(diff)
            out.predictions[ex.qid] = "" if diff > null_threshold else out.best_non_null[ex.qid]
        else:
            out.predictions[ex.qid] = out.best_non_null[ex.qid]
    return out


def apply_null_threshold(best_non_null: dict[str, str], null_odds: dict[str, float],
                         threshold: float) -> dict[str, str]:
    """v2 predictions for a chosen threshold: no answer where null_odds > threshold."""
    return {q: ("" if null_odds.get(q, -np.inf) > threshold else t)
            for q, t in best_non_null.items()}


# ---------------------------------------------------------------- official scoring

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace - the
    normalisation of the official SQuAD evaluation scripts, in that order."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        # Both empty is a correct "no answer"; one empty scores nothing.
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_answers(examples: list[SquadExample]) -> dict[str, list[str]]:
    """{qid: gold texts}; [] marks a no-answer question."""
    return {ex.qid: list(ex.answers) for ex in examples}


def _raw_scores(golds, predictions):
    """Per-question EM and F1 of the submitted predictions; a question without a prediction is
    left out (the official v2.0 script prints "Missing prediction" and skips it)."""
    exact, f1 = {}, {}
    for qid, answers in golds.items():
        texts = [a for a in answers if normalize_answer(a)] or [""]
        pred = predictions.get(qid)
        if pred is None:
            continue
        exact[qid] = float(max(exact_match(pred, g) for g in texts))
        f1[qid] = max(f1_score(pred, g) for g in texts)
    return exact, f1


def _odds_of(qids, null_odds):
    missing = [q for q in qids if q not in null_odds]
    if missing:
        raise ValueError(f"no null odds for {len(missing)} predicted question(s), e.g. "
                         f"{missing[0]}; give null_odds for every prediction")
    return null_odds


def best_threshold(predictions: dict[str, str], scores: dict[str, float],
                   null_odds: dict[str, float], has_answer: dict[str, bool]):
    """(best total score in %, threshold), the official v2.0 search: start with every question
    counted as "no answer" (the no-answer questions of the whole gold set score 1) at threshold
    0.0, then walk the questions one at a time in ascending null odds (ties in null_odds' order),
    switching each to its submitted prediction: an answerable one adds its score, an unanswerable
    one with a non-empty prediction costs 1. The threshold moves to a question's odds each time
    the running total beats the best so far. Divides by the number of scored (predicted)
    questions, as the official script does."""
    if not scores:
        return 0.0, 0.0
    current = best = float(sum(not h for h in has_answer.values()))
    threshold = 0.0
    for qid in sorted(null_odds, key=lambda q: null_odds[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1.0
        if current > best:
            best, threshold = current, float(null_odds[qid])
    return 100.0 * best / len(scores), threshold


def _thresholded(scores, null_odds, has_answer, threshold):
    # Above the threshold a question is scored as a "no answer" prediction, whatever was submitted.
    return {q: (float(not has_answer[q]) if null_odds[q] > threshold else s)
            for q, s in scores.items()}


def evaluate(golds: dict[str, list[str]], predictions: dict[str, str],
             null_odds: dict[str, float] | None = None,
             na_prob_thresh: float = 1.0) -> dict[str, float]:
    """The official SQuAD v2.0 evaluation (evaluate-v2.0.py) of `predictions`, in percent.

    - Questions without a prediction are skipped: `total` counts the predicted ones.
    - `null_odds` plays the official na_prob (google-research/bert's README feeds its
      null_odds.json as --na-prob-file): a question whose odds exceed `na_prob_thresh` (the
      official default 1.0) is scored as "no answer" whatever its prediction. Without null_odds
      every odds is 0, as the official script assumes without a na-prob file.
    - HasAns_* / NoAns_* split the scored questions by kind. (The official script indexes every
      gold question of a kind there and so fails outright on a missing prediction; here the
      missing ones are left out, as in the overall totals.)
    - With null_odds, best_exact / best_f1 and their *_thresh come from best_threshold on the
      submitted predictions.
    v1.1 predictions score the same as under evaluate-v1.1.py when every question is predicted."""
    exact_raw, f1_raw = _raw_scores(golds, predictions)
    has = {q: bool(a) for q, a in golds.items()}
    odds = _odds_of(exact_raw, null_odds) if null_odds is not None else {q: 0.0 for q in exact_raw}
    exact = _thresholded(exact_raw, odds, has, na_prob_thresh)
    f1 = _thresholded(f1_raw, odds, has, na_prob_thresh)
    n = len(exact)
    res = {"exact": 100.0 * sum(exact.values()) / n if n else 0.0,
           "f1": 100.0 * sum(f1.values()) / n if n else 0.0, "total": n}
    for name, keep in (("HasAns", True), ("NoAns", False)):
        qs = [q for q in exact if has[q] == keep]
        if qs:
            res[f"{name}_exact"] = 100.0 * sum(exact[q] for q in qs) / len(qs)
            res[f"{name}_f1"] = 100.0 * sum(f1[q] for q in qs) / len(qs)
            res[f"{name}_total"] = len(qs)
    if null_odds is not None:
        res["best_exact"], res["best_exact_thresh"] = best_threshold(predictions, exact_raw,
                                                                     null_odds, has)
        res["best_f1"], res["best_f1_thresh"] = best_threshold(predictions, f1_raw, null_odds, has)
    return res
