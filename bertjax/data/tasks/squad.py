"""SQuAD v1.1 / v2.0: JSON reading, answer alignment and sliding-window featurisation.

Alignment works the way the original BERT code does it, so it needs nothing from the tokenizer
but `tokenize`: the passage is split on whitespace into words, each word is tokenized on its
own, and every piece remembers its word. A character-level answer span becomes a word span,
then a piece span, then is tightened to the pieces that spell the answer.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from bertjax.data import corpus
from bertjax.data.tasks import features as F
from bertjax.errors import UserError
from bertjax.text.base import Tokenizer


@dataclasses.dataclass
class SquadExample:
    qid: str
    question: str
    context: str
    words: list[str]                      # the passage split on whitespace
    word_spans: list[tuple[int, int]]     # [start, end) character span of each word
    answers: list[str]                    # every gold text; [] for a v2 no-answer question
    is_impossible: bool = False
    # Training target (first answer) as a word span; -1 when there is none.
    start_word: int = -1
    end_word: int = -1
    answer_text: str = ""


def split_words(context: str) -> tuple[list[str], list[tuple[int, int]]]:
    words, spans = [], []
    start = None
    for i, ch in enumerate(context):
        if ch.isspace():
            if start is not None:
                words.append(context[start:i])
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        words.append(context[start:])
        spans.append((start, len(context)))
    return words, spans


def _word_at(spans: list[tuple[int, int]], char: int) -> int:
    """Index of the word containing char, or of the next word when char is whitespace."""
    lo, hi = 0, len(spans)
    while lo < hi:
        mid = (lo + hi) // 2
        if spans[mid][1] <= char:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"SQuAD file not found: {path}; pass the path of a SQuAD v1.1/v2.0 "
                        f"JSON file (e.g. train-v1.1.json)")
    text = corpus.read_text(path)  # bad bytes: one line naming the line and byte
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); expected a SQuAD file") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
        raise UserError(f"{path} has no top-level 'data' list; expected a SQuAD v1.1/v2.0 file")
    return payload


def read_squad(path: str, is_training: bool) -> list[SquadExample]:
    """Reads every question. In training mode each answerable question must have an answer whose
    text sits at its answer_start; evaluation mode keeps all gold texts and needs no offsets
    (the official scorer compares texts only)."""
    payload = _load_json(path)
    examples = []
    for article in payload["data"]:
        for para in article.get("paragraphs", []):
            context = para.get("context")
            if not isinstance(context, str):
                raise UserError(f"{path}: a paragraph has no 'context' string; expected SQuAD")
            words, spans = split_words(context)
            for qa in para.get("qas", []):
                examples.append(_example(path, qa, context, words, spans, is_training))
    return examples


def _example(path, qa, context, words, spans, is_training) -> SquadExample:
    qid = str(qa.get("id", ""))
    if not qid or "question" not in qa:
        raise UserError(f"{path}: a question lacks 'id' or 'question'; expected SQuAD records")
    answers = qa.get("answers") or []
    impossible = bool(qa.get("is_impossible", False))
    ex = SquadExample(qid, qa["question"], context, words, spans,
                      [] if impossible else [a["text"] for a in answers], impossible)
    if not is_training or impossible:
        return ex
    if not answers:
        raise UserError(f"{path}: question {qid} has no answer and is not marked is_impossible; "
                        f"add an answer or set is_impossible (SQuAD 2.0)")
    for a in answers:
        text, start = a.get("text", ""), a.get("answer_start", -1)
        if not isinstance(start, int) or context[start:start + len(text)] != text or not text:
            raise UserError(f"{path}: question {qid}: answer {text!r} is not at answer_start "
                            f"{start} of its context; fix answer_start or the answer text")
    text, start = answers[0]["text"], answers[0]["answer_start"]
    # Leading/trailing spaces in an answer would otherwise land on a neighbouring word.
    lead = len(text) - len(text.lstrip())
    core = text.strip()
    ex.start_word = _word_at(spans, start + lead)
    ex.end_word = _word_at(spans, start + lead + len(core) - 1)
    ex.answer_text = core
    return ex


@dataclasses.dataclass
class SquadFeatures:
    """Device arrays plus the host-side bookkeeping needed to decode spans back to text.

    arrays: input_ids, segment_ids, input_mask [N,S]; start_positions/end_positions [N] in
      training mode (0 = [CLS]: answer outside this window, or no answer).
    example_index [N]: which example each window came from.
    token_to_piece [N,S]: index into that example's passage pieces, -1 outside the passage.
    token_to_word [N,S]: the passage word of each position, -1 outside the passage.
    max_context [N,S]: True where this window gives the piece its most surrounding context
      (a piece seen by several windows is decoded only from the one where it is most central).
    pieces, piece_to_word: per example, the passage pieces and the word each belongs to.
    """
    arrays: dict[str, np.ndarray]
    example_index: np.ndarray
    token_to_piece: np.ndarray
    token_to_word: np.ndarray
    max_context: np.ndarray
    pieces: list[list[str]]
    piece_to_word: list[list[int]]

    def __len__(self) -> int:
        return len(self.example_index)


def _windows(n: int, max_len: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) windows over n passage pieces; consecutive starts advance by stride."""
    spans, start = [], 0
    while True:
        length = min(n - start, max_len)
        spans.append((start, length))
        if start + length >= n:
            return spans
        start += min(length, stride)


def _best_window(spans: list[tuple[int, int]], n: int) -> np.ndarray:
    """For every piece, the window where it has the most context on its shorter side (ties go
    to the longer window, then the earlier one)."""
    best = np.full(n, -1, np.int64)
    best_score = np.full(n, -np.inf)
    for w, (start, length) in enumerate(spans):
        pos = np.arange(start, start + length)
        score = np.minimum(pos - start, start + length - 1 - pos) + 0.01 * length
        better = score > best_score[pos]
        best[pos[better]] = w
        best_score[pos[better]] = score[better]
    return best


def _tighten(pieces: list[str], start: int, end: int, answer: list[str]) -> tuple[int, int]:
    """The word span may hold more than the answer ("1895" of "(1895-1943)"): take the first
    piece sub-span of it that spells exactly the tokenized answer, else keep the word span."""
    for s in range(start, end + 1):
        for e in range(end, s - 1, -1):
            if pieces[s:e + 1] == answer:
                return s, e
    return start, end


def _passage_pieces(tokenizer: Tokenizer, examples: list[SquadExample]) -> dict:
    """{context: (piece ids, pieces, word of each piece, first piece of each word + end)}. A
    paragraph has
    several questions, so each context is tokenized once. Words go one by one: for one-word
    inputs a batched call measured slower than a loop on a 2-core box."""
    contexts = {ex.context: ex.words for ex in examples}
    out = {}
    for context, words in contexts.items():
        piece_ids, p2w, first_piece = [], [], []
        for wi, word in enumerate(words):
            ids = tokenizer.encode(word)
            first_piece.append(len(piece_ids))
            piece_ids.extend(ids)
            p2w.extend([wi] * len(ids))
        first_piece.append(len(piece_ids))
        pieces = tokenizer.convert_ids_to_tokens(piece_ids)
        out[context] = (piece_ids, pieces, p2w, first_piece)
    return out


def featurize(examples: list[SquadExample], tokenizer: Tokenizer, max_seq_length: int = 384,
              doc_stride: int = 128, max_query_length: int = 64,
              is_training: bool = False) -> SquadFeatures:
    """tokenizer.build_inputs(question, passage window), one row per window: [CLS] question [SEP]
    window [SEP] for BERT, <s> question </s></s> window </s> for RoBERTa."""
    if doc_stride < 1:
        raise UserError(f"doc_stride must be at least 1, got {doc_stride}")
    rows = {"input_ids": [], "segment_ids": [], "input_mask": []}
    if is_training:
        rows["start_positions"], rows["end_positions"] = [], []
    example_index, t2p, t2w, maxctx = [], [], [], []
    all_pieces, all_p2w = [], []
    passages = _passage_pieces(tokenizer, examples)
    queries = F.encode_many(tokenizer, [ex.question for ex in examples])
    for ei, ex in enumerate(examples):
        query_ids = queries[ei][:max_query_length]
        piece_ids, pieces, p2w, first_piece = passages[ex.context]
        all_pieces.append(pieces)
        all_p2w.append(p2w)
        max_doc = max_seq_length - len(query_ids) - tokenizer.num_special(True)
        if max_doc < 1:
            raise UserError(f"max_seq_length {max_seq_length} leaves no room for the passage after "
                            f"a {len(query_ids)}-piece question; raise it or lower "
                            f"max_query_length")
        target = None
        if is_training and not ex.is_impossible and ex.start_word >= 0:
            s = first_piece[ex.start_word]
            e = first_piece[ex.end_word + 1] - 1
            target = _tighten(pieces, s, e, tokenizer.tokenize(ex.answer_text))
        spans = _windows(len(pieces), max_doc, doc_stride)
        best = _best_window(spans, len(pieces))
        offset = F.second_offset(tokenizer, len(query_ids))
        for w, (start, length) in enumerate(spans):
            ids, seg, mask = F.pack(tokenizer, query_ids, piece_ids[start:start + length],
                                    max_seq_length)
            rows["input_ids"].append(ids)
            rows["segment_ids"].append(seg)
            rows["input_mask"].append(mask)
            tp = np.full(max_seq_length, -1, np.int32)
            tp[offset:offset + length] = np.arange(start, start + length)
            tw = np.full(max_seq_length, -1, np.int32)
            tw[offset:offset + length] = p2w[start:start + length]
            mc = np.zeros(max_seq_length, bool)
            mc[offset:offset + length] = best[start:start + length] == w
            t2p.append(tp)
            t2w.append(tw)
            maxctx.append(mc)
            example_index.append(ei)
            if is_training:
                sp = ep = 0
                if target is not None and start <= target[0] and target[1] < start + length:
                    sp, ep = target[0] - start + offset, target[1] - start + offset
                rows["start_positions"].append(sp)
                rows["end_positions"].append(ep)
    S = max_seq_length
    return SquadFeatures(
        arrays=F.stack(rows, {}, S),
        example_index=np.asarray(example_index, np.int32),
        token_to_piece=np.asarray(t2p, np.int32).reshape(-1, S),
        token_to_word=np.asarray(t2w, np.int32).reshape(-1, S),
        max_context=np.asarray(maxctx, bool).reshape(-1, S),
        pieces=all_pieces,
        piece_to_word=all_p2w,
    )
