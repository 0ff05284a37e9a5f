"""Entity-level precision / recall / F1 computed the way the CoNLL shared-task script conlleval
does, so numbers are comparable with published NER results.

conlleval reads chunks off the tag sequence with a small state machine that accepts IOB1, IOB2
(and IOE) alike: an I- tag after O or after another type opens a chunk, a B- tag always does.
A predicted chunk counts as correct only if it starts and ends where a gold chunk does and has
the same type. Sentence boundaries act as an "O" token that is not counted as a token.
Scores are percentages, as conlleval prints them.
"""
from __future__ import annotations

import collections
import dataclasses


def _split(tag: str) -> tuple[str, str]:
    # conlleval splits at the first "-": "B-PER" -> ("B", "PER"); "O" -> ("O", "").
    prefix, sep, kind = tag.partition("-")
    return (prefix, kind) if sep else (tag, "")


# conlleval's transition tables. Besides B/I/O they know E (IOE) tags; "[" and "]" mark
# one-token chunks and "." is an inside tag of the bracket representations.
_END_PAIRS = frozenset({("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"),
                        ("E", "E"), ("E", "I"), ("E", "O")})
_START_PAIRS = frozenset({("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"),
                          ("E", "E"), ("E", "I"), ("O", "E")})


def _ends(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    """Whether the chunk holding the previous token ends before this one."""
    return ((prev, tag) in _END_PAIRS or prev in ("[", "]")
            or (prev not in ("O", ".") and prev_type != kind))


def _starts(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    """Whether a new chunk starts at this token."""
    return ((prev, tag) in _START_PAIRS or tag in ("[", "]")
            or (tag not in ("O", ".") and prev_type != kind))


@dataclasses.dataclass
class Counts:
    correct: int = 0      # chunks found in both, same boundaries and type
    found_gold: int = 0
    found_pred: int = 0

    @property
    def precision(self) -> float:
        return 100.0 * self.correct / self.found_pred if self.found_pred else 0.0

    @property
    def recall(self) -> float:
        return 100.0 * self.correct / self.found_gold if self.found_gold else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1,
                "correct": self.correct, "found_gold": self.found_gold,
                "found_pred": self.found_pred}


@dataclasses.dataclass
class ConllResult:
    overall: Counts
    per_type: dict[str, Counts]
    tokens: int
    correct_tags: int

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct_tags / self.tokens if self.tokens else 0.0

    def as_dict(self) -> dict:
        return {**self.overall.as_dict(), "accuracy": self.accuracy, "tokens": self.tokens,
                "per_type": {k: v.as_dict() for k, v in sorted(self.per_type.items())}}


_BOUNDARY = None


def evaluate_pairs(pairs) -> ConllResult:
    """pairs: iterable of (gold_tag, predicted_tag), with None marking a sentence boundary."""
    overall = Counts()
    per_type: dict[str, Counts] = collections.defaultdict(Counts)
    tokens = correct_tags = 0
    last_g, last_gt, last_p, last_pt = "O", "", "O", ""
    in_correct = False
    for pair in pairs:
        boundary = pair is _BOUNDARY
        (g, gt), (p, pt) = ((("O", ""), ("O", "")) if boundary
                            else (_split(pair[0]), _split(pair[1])))
        g_end, p_end = _ends(last_g, g, last_gt, gt), _ends(last_p, p, last_pt, pt)
        g_start, p_start = _starts(last_g, g, last_gt, gt), _starts(last_p, p, last_pt, pt)
        if in_correct:
            if g_end and p_end and last_pt == last_gt:
                in_correct = False
                overall.correct += 1
                per_type[last_gt].correct += 1
            elif g_end != p_end or pt != gt:
                in_correct = False
        if g_start and p_start and pt == gt:
            in_correct = True
        if g_start:
            overall.found_gold += 1
            per_type[gt].found_gold += 1
        if p_start:
            overall.found_pred += 1
            per_type[pt].found_pred += 1
        if not boundary:
            if g == p and gt == pt:
                correct_tags += 1
            tokens += 1
        last_g, last_gt, last_p, last_pt = g, gt, p, pt
    if in_correct:
        overall.correct += 1
        per_type[last_gt].correct += 1
    return ConllResult(overall, dict(per_type), tokens, correct_tags)


def evaluate(gold: list[list[str]], pred: list[list[str]]) -> ConllResult:
    """Sentence-aligned gold and predicted tag sequences -> conlleval's scores."""
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")

    def pairs():
        for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
            if len(g) != len(p):
                raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
            yield from zip(g, p, strict=True)
            yield _BOUNDARY

    return evaluate_pairs(pairs())


def evaluate_lines(lines) -> ConllResult:
    """conlleval's input format: whitespace-separated columns ending in "gold predicted", a blank
    line (or a -DOCSTART- line) between sentences."""

    def pairs():
        for line in lines:
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                yield _BOUNDARY
            elif len(cols) < 2:
                raise ValueError(f"line {line!r} needs at least a gold and a predicted tag")
            else:
                yield cols[-2], cols[-1]

    return evaluate_pairs(pairs())


def report(result: ConllResult) -> str:
    """A text summary laid out like conlleval's."""
    o = result.overall
    lines = [
        f"processed {result.tokens} tokens with {o.found_gold} phrases; "
        f"found: {o.found_pred} phrases; correct: {o.correct}.",
        f"accuracy: {result.accuracy:6.2f}%; precision: {o.precision:6.2f}%; "
        f"recall: {o.recall:6.2f}%; FB1: {o.f1:6.2f}",
    ]
    for kind in sorted(result.per_type):
        c = result.per_type[kind]
        lines.append(f"{kind:>17}: precision: {c.precision:6.2f}%; recall: {c.recall:6.2f}%; "
                     f"FB1: {c.f1:6.2f}  {c.found_pred}")
    return "\n".join(lines) + "\n"
