"""Pretraining instances from streams of tokenized documents.

Two builders, both seeded by a numpy Generator and working on token-id lists:

- `pair_instances`: the document-level pair algorithm of google-research/bert's
  create_pretraining_data.py ([CLS] A [SEP] B [SEP] with next-sentence labels). Per document a
  target length is drawn (max_num_tokens, or with probability short_seq_prob a random length in
  [2, max_num_tokens]); sentences accumulate into a chunk until it reaches the target; A is the
  first a_end sentences of the chunk; with probability 0.5 (always for a one-sentence chunk) B is
  "random next", drawn from another document, and the chunk's unused sentences go back for the
  next instance; the pair is truncated from the longer side, front or back at random.
- The same builder makes ALBERT's sentence-order pairs (`pair_task="sop"`): the chunk and its
  split into A and B are drawn as above, B is always the chunk's real continuation, and with
  probability 0.5 the two segments are swapped ([CLS] B [SEP] A [SEP], label 1 = swapped, Hugging
  Face's `sentence_order_label`). A chunk stays open until it holds two sentences, so only a
  document's one-sentence remainder (or a one-sentence document) has nothing to order: it is
  dropped and counted; unlike google-research/albert, it never gets a random partner (which
  would turn a sentence-order label into a next-sentence one).
- `packed_instances`: RoBERTa-style full-sentence packing for --no_nsp: [CLS] sentences [SEP]
  filled to the target length, running on across document boundaries with a [SEP] between
  documents. One segment (segment ids all 0) and next_sentence_label 0, so the batch contract is
  the same in both modes.

Where this differs from the original, on purpose:
- The original draws random B from all documents held in memory, which is what makes it run out of
  memory. Here B comes from a bounded `PartnerPool`: a reservoir sample of the documents already
  seen in this stream, the next `lookahead` documents, and optional seed documents from another
  input shard (so a shard holding one long document, a book per file, still has partners).
  Memory is bounded by the pool and look-ahead sizes (see pair_instances), whatever the corpus size.
- The original tries 10 times to avoid drawing the current document and then gives up; here the
  pool never holds the current document, so B is always from a different one. With no other
  document at all (a one-document stream and no seeds) a one-sentence chunk is dropped and counted,
  and a longer chunk keeps its real continuation.
- Documents are taken in stream order; the original shuffled all documents in memory first and all
  instances at the end. Here mixing comes later, from the pipeline (per-epoch shard order,
  interleaved shards, a shuffle buffer), which is what keeps memory bounded.
- Empty sentences are dropped before anything else (the original skipped empty lines too).
"""
from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

Document = Sequence[Sequence[int]]  # sentences of token ids


@dataclasses.dataclass
class Instance:
    tokens: list[int]  # [CLS] A [SEP] B [SEP] (pairs) or [CLS] x [SEP] y ... [SEP] (packed)
    segment_start: int  # first index of segment 1; len(tokens) when there is one segment
    is_random_next: bool
    a_doc: int  # document id of segment A (packed: of the first token)
    b_doc: int  # document id of segment B; -1 when there is no B
    short_target: bool  # built under a target length drawn with short_seq_prob


@dataclasses.dataclass
class BuildCounts:
    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    dropped_chunks: int = 0  # one-sentence chunks that had no other document to pair with
    forced_random: int = 0  # one-sentence chunks: their B is random whatever the coin says


class PartnerPool:
    """Documents that random B may be drawn from, bounded in number.

    `reservoir` keeps a uniform sample of up to `capacity` past documents (Algorithm R), so partners
    come from the whole stream seen so far, not only its neighbourhood; `extra` are documents ahead
    of the current one or seeded from another shard."""

    def __init__(self, capacity: int, rng: np.random.Generator, max_tokens: int):
        self.capacity = capacity
        self.rng = rng
        self.max_tokens = max_tokens
        self.reservoir: list[tuple[int, Document]] = []
        self.seen = 0

    def trim(self, doc: Document) -> Document:
        """A run of consecutive sentences of about max_tokens from a random start: all that a random
        B can use (it reads forward from a random sentence until it has the tokens it needs), so a
        book-sized document does not sit whole in the pool."""
        if sum(len(s) for s in doc) <= self.max_tokens:
            return doc
        start = int(self.rng.integers(0, len(doc)))
        out, total = [], 0
        for s in doc[start:]:
            out.append(s)
            total += len(s)
            if total >= self.max_tokens:
                break
        return out

    def add(self, doc_id: int, doc: Document) -> None:
        doc = self.trim(doc)
        self.seen += 1
        if len(self.reservoir) < self.capacity:
            self.reservoir.append((doc_id, doc))
            return
        j = int(self.rng.integers(0, self.seen))
        if j < self.capacity:
            self.reservoir[j] = (doc_id, doc)

    def draw(self, exclude: int, extra: Sequence[tuple[int, Document]]) -> tuple[int, Document] | None:
        """A uniformly drawn document of reservoir + extra whose id is not `exclude`."""
        total = len(self.reservoir) + len(extra)
        if total == 0:
            return None
        k = int(self.rng.integers(0, total))
        item = self.reservoir[k] if k < len(self.reservoir) else extra[k - len(self.reservoir)]
        if item[0] != exclude:
            return item
        # Only reached if a caller puts the current document in the pool: draw among the others.
        items = [x for x in [*self.reservoir, *extra] if x[0] != exclude]
        return items[int(self.rng.integers(0, len(items)))] if items else None


def _truncate_pair(a: list[int], b: list[int], max_num_tokens: int, rng) -> tuple[list, list]:
    """Removes one token at a time from the longer side (B on ties), front or back at random."""
    a_lo, a_hi, b_lo, b_hi = 0, len(a), 0, len(b)
    while (a_hi - a_lo) + (b_hi - b_lo) > max_num_tokens:
        if a_hi - a_lo > b_hi - b_lo:
            if rng.random() < 0.5:
                a_lo += 1
            else:
                a_hi -= 1
        elif rng.random() < 0.5:
            b_lo += 1
        else:
            b_hi -= 1
    return a[a_lo:a_hi], b[b_lo:b_hi]


def _clean(doc: Iterable[Sequence[int]]) -> list[Sequence[int]]:
    # Sentences keep their type: prepare hands in compact array('i') rows (4 bytes per token
    # instead of ~36 for a list of Python ints), which is what bounds a worker's memory.
    return [s for s in doc if len(s)]


def _document_instances(doc_id: int, doc: list[list[int]], pool: PartnerPool,
                        extra: Sequence[tuple[int, Document]], max_seq_length: int,
                        short_seq_prob: float, cls_id: int, sep_id: int, rng,
                        counts: BuildCounts, pair_task: str = "nsp") -> Iterator[Instance]:
    max_num_tokens = max_seq_length - 3
    target = max_num_tokens
    short = False
    if rng.random() < short_seq_prob:
        target = int(rng.integers(2, max_num_tokens + 1))
        short = True
    chunk: list[list[int]] = []
    length = 0
    i = 0
    while i < len(doc):
        chunk.append(doc[i])
        length += len(doc[i])
        # A sentence-order chunk stays open until it holds two sentences to order (truncation
        # trims the excess), so a sentence longer than the target is not wasted.
        full = length >= target and (pair_task != "sop" or len(chunk) >= 2)
        if i == len(doc) - 1 or full:
            a_end = 1 if len(chunk) < 2 else int(rng.integers(1, len(chunk)))
            tokens_a = [t for s in chunk[:a_end] for t in s]
            if pair_task == "sop":
                yield from _sentence_order(chunk, a_end, tokens_a, doc_id, max_num_tokens, short,
                                           cls_id, sep_id, rng, counts)
                chunk = []
                length = 0
                i += 1
                continue
            tokens_b: list[int] = []
            b_doc = doc_id
            random_next = len(chunk) == 1 or rng.random() < 0.5
            partner = pool.draw(doc_id, extra) if random_next else None
            if random_next and partner is None and len(chunk) == 1:
                counts.dropped_chunks += 1
            elif partner is not None:
                counts.forced_random += len(chunk) == 1
                b_doc, other = partner
                target_b = target - len(tokens_a)
                start = int(rng.integers(0, len(other)))
                for j in range(start, len(other)):
                    tokens_b.extend(other[j])
                    if len(tokens_b) >= target_b:
                        break
                # The sentences of the chunk not used for A are read again for the next instance.
                i -= len(chunk) - a_end
            else:
                random_next = False
                tokens_b = [t for s in chunk[a_end:] for t in s]
            if tokens_b:
                tokens_a, tokens_b = _truncate_pair(tokens_a, tokens_b, max_num_tokens, rng)
                tokens = [cls_id, *tokens_a, sep_id, *tokens_b, sep_id]
                yield Instance(tokens, len(tokens_a) + 2, bool(random_next), doc_id, b_doc, short)
            chunk = []
            length = 0
        i += 1


def _sentence_order(chunk, a_end, tokens_a, doc_id, max_num_tokens, short, cls_id, sep_id, rng,
                    counts: BuildCounts) -> Iterator[Instance]:
    """One SOP instance from a chunk split at a_end, or none for a one-sentence chunk."""
    if len(chunk) < 2:
        counts.dropped_chunks += 1
        return
    tokens_b = [t for s in chunk[a_end:] for t in s]
    swapped = bool(rng.random() < 0.5)
    first, second = (tokens_b, tokens_a) if swapped else (tokens_a, tokens_b)
    first, second = _truncate_pair(first, second, max_num_tokens, rng)
    tokens = [cls_id, *first, sep_id, *second, sep_id]
    yield Instance(tokens, len(first) + 2, swapped, doc_id, doc_id, short)


PAIR_TASKS = ("nsp", "sop")


def pair_instances(documents: Iterable[tuple[int, Iterable[Sequence[int]]]], *,
                   max_seq_length: int, short_seq_prob: float, cls_id: int, sep_id: int,
                   rng: np.random.Generator, pool_size: int = 100, lookahead: int = 10,
                   seed_documents: Iterable[tuple[int, Iterable[Sequence[int]]]] = (),
                   counts: BuildCounts | None = None,
                   pair_task: str = "nsp") -> Iterator[Instance]:
    """NSP pairs (or with pair_task="sop", sentence-order pairs) from (doc_id, sentences) in
    stream order. doc ids must be unique (they decide "a different document"); seed_documents
    are partners only and make no instances (SOP draws no partners).

    Memory: the pool keeps at most pool_size (+ seeds) documents trimmed to 8 * max_seq_length
    tokens, and the look-ahead at most `lookahead` documents and, past 64 * max_seq_length tokens,
    only the current one and the next."""
    if max_seq_length < 5:
        raise ValueError("max_seq_length must be at least 5 to hold [CLS] A [SEP] B [SEP]")
    if pair_task not in PAIR_TASKS:
        raise ValueError(f"pair_task must be one of {PAIR_TASKS}, got {pair_task!r}")
    counts = counts if counts is not None else BuildCounts()
    pool = PartnerPool(pool_size, rng, max_tokens=8 * max_seq_length)
    seeds = [(i, pool.trim(d)) for i, d in ((i, _clean(d)) for i, d in seed_documents) if d]
    ahead: deque[tuple[int, list]] = deque()
    ahead_tokens = 0
    ahead_cap = 64 * max_seq_length

    def process(doc_id, doc):
        # Partners: the reservoir, the documents read ahead and the seeds; never doc itself.
        partners = [(i, d) for i, d, _ in ahead] + seeds
        yield from _document_instances(doc_id, doc, pool, partners, max_seq_length,
                                       short_seq_prob, cls_id, sep_id, rng, counts, pair_task)
        if pair_task == "nsp":  # sentence order never reads another document
            pool.add(doc_id, doc)

    for doc_id, raw in documents:
        doc = _clean(raw)
        if not doc:
            continue
        counts.documents += 1
        counts.sentences += len(doc)
        size = sum(len(s) for s in doc)
        counts.tokens += size
        ahead.append((doc_id, doc, size))
        ahead_tokens += size
        while len(ahead) > lookahead or (ahead_tokens > ahead_cap and len(ahead) > 1):
            doc_id, doc, size = ahead.popleft()
            ahead_tokens -= size
            yield from process(doc_id, doc)
    while ahead:
        doc_id, doc, _ = ahead.popleft()
        yield from process(doc_id, doc)


def packed_instances(documents: Iterable[tuple[int, Iterable[Sequence[int]]]], *,
                     max_seq_length: int, short_seq_prob: float, cls_id: int, sep_id: int,
                     rng: np.random.Generator,
                     counts: BuildCounts | None = None) -> Iterator[Instance]:
    """Full-sentence packing without NSP: sentences in stream order fill [CLS] ... [SEP] up to a
    target of max_seq_length - 2 tokens (a random shorter one with probability short_seq_prob, drawn
    per instance); a document boundary inside an instance is a [SEP]. A sentence longer than the
    target is cut into target-sized pieces rather than dropped."""
    if max_seq_length < 3:
        raise ValueError("max_seq_length must be at least 3 to hold [CLS] x [SEP]")
    counts = counts if counts is not None else BuildCounts()
    max_tokens = max_seq_length - 2

    def new_target():
        if rng.random() < short_seq_prob and max_tokens > 2:
            return int(rng.integers(2, max_tokens + 1)), True
        return max_tokens, False

    buf: list[int] = []
    first_doc = -1
    target, short = new_target()

    boundary_pending = False  # buf ends with a document-boundary [SEP]

    def emit():
        nonlocal buf, target, short, boundary_pending
        body = buf[:-1] if boundary_pending else buf
        tokens = [cls_id, *body, sep_id]
        out = Instance(tokens, len(tokens), False, first_doc, -1, short)
        buf = []
        boundary_pending = False
        target, short = new_target()
        return out

    for doc_id, raw in documents:
        doc = _clean(raw)
        if not doc:
            continue
        counts.documents += 1
        counts.sentences += len(doc)
        counts.tokens += sum(len(s) for s in doc)
        if buf:
            if len(buf) + 1 < target:
                buf.append(sep_id)
                boundary_pending = True
            else:
                yield emit()
        for sentence in doc:
            rest = sentence
            while rest:
                room = target - len(buf)
                if len(rest) <= room:
                    if not buf:
                        first_doc = doc_id
                    buf.extend(rest)
                    boundary_pending = False
                    rest = []
                elif buf:
                    yield emit()
                else:
                    first_doc = doc_id
                    buf.extend(rest[:room])
                    rest = rest[room:]
                    boundary_pending = False
                    yield emit()
            if len(buf) >= target:
                yield emit()
    if buf:
        yield emit()
