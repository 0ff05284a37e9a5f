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
                null_threshold: float = 0.0) -> SquadPredictions:
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
    exact, f1 = {}, {}
    for qid, answers in golds.items():
        texts = [a for a in answers if normalize_answer(a)] or [""]
        pred = predictions.get(qid)
        if pred is None:
            # The official scripts score a missing prediction as wrong.
            exact[qid] = f1[qid] = 0.0
            continue
        exact[qid] = float(max(exact_match(pred, g) for g in texts))
        f1[qid] = max(f1_score(pred, g) for g in texts)
    return exact, f1


def best_threshold(scores: dict[str, float], null_odds: dict[str, float],
                   has_answer: dict[str, bool], best_non_null: dict[str, str]):
    """(best total score in %, threshold) over thresholds t with "answer iff null_odds <= t".

    scores are the per-question scores of best_non_null (the span that would be given); a
    no-answer question scores 1 when predicted null and 0 when given a non-empty span. Questions
    with equal null_odds switch together, so every reported threshold is reachable. Returns a
    threshold below the smallest odds when predicting no answer everywhere is best."""
    qids = list(scores)
    if not qids:
        return 0.0, 0.0
    # A question without odds is never switched to its span, as in the official script.
    odds = np.array([null_odds.get(q, np.inf) for q in qids], np.float64)
    gain = np.array([scores[q] if has_answer[q] else (-1.0 if best_non_null.get(q) else 0.0)
                     for q in qids])
    base = float(sum(not has_answer[q] for q in qids))
    order = np.argsort(odds, kind="stable")
    odds, gain = odds[order], gain[order]
    totals = base + np.cumsum(gain)
    last_of_group = np.append(odds[1:] != odds[:-1], True) & np.isfinite(odds)
    totals, thresholds = totals[last_of_group], odds[last_of_group]
    if len(totals) and totals.max() > base:
        i = int(np.argmax(totals))
        return 100.0 * float(totals[i]) / len(qids), float(thresholds[i])
    lowest = float(odds[0]) if np.isfinite(odds[0]) else 0.0
    return 100.0 * base / len(qids), lowest - 1.0


def evaluate(golds: dict[str, list[str]], predictions: dict[str, str],
             null_odds: dict[str, float] | None = None,
             best_non_null: dict[str, str] | None = None) -> dict[str, float]:
    """Official SQuAD EM/F1 in percent over every gold question (max over gold answers; a
    no-answer question is right only with ""), also split into HasAns_* / NoAns_* for the
    questions of each kind present, as the official v2.0 script reports them.
    With null_odds, also the best achievable EM/F1 over no-answer thresholds (best_exact,
    best_exact_thresh, best_f1, best_f1_thresh) computed from best_non_null (defaults to
    predictions)."""
    exact, f1 = _raw_scores(golds, predictions)
    n = len(golds)
    res = {"exact": 100.0 * sum(exact.values()) / n if n else 0.0,
           "f1": 100.0 * sum(f1.values()) / n if n else 0.0, "total": n}
    has = {q: bool(a) for q, a in golds.items()}
    for name, keep in (("HasAns", True), ("NoAns", False)):
        qs = [q for q in golds if has[q] == keep]
        if qs:
            res[f"{name}_exact"] = 100.0 * sum(exact[q] for q in qs) / len(qs)
            res[f"{name}_f1"] = 100.0 * sum(f1[q] for q in qs) / len(qs)
            res[f"{name}_total"] = len(qs)
    if null_odds is not None:
        spans = best_non_null if best_non_null is not None else predictions
        span_exact, span_f1 = _raw_scores(golds, spans)
        res["best_exact"], res["best_exact_thresh"] = best_threshold(span_exact, null_odds,
                                                                     has, spans)
        res["best_f1"], res["best_f1_thresh"] = best_threshold(span_f1, null_odds, has, spans)
    return res
