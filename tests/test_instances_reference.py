"""The pair algorithm against the original's, independently: every sentence is used exactly once
(the sentences a random B leaves unused go back into the next chunk), and the distributions of
what instances.pair_instances builds (lengths of A, B and the pair, the share of random B, short
targets, instances per document) match those of `_original_pairs` below, written from the
published description of google-research/bert's create_pretraining_data.py (the shared reference
notes, "Building pretraining instances", steps 3 to 6), not from bertjax's code.

bertjax draws random B from a bounded pool (a reservoir of past documents and a look-ahead)
instead of the whole corpus; on a corpus of like documents that changes which document B comes
from, not these distributions."""
import random

import numpy as np

from bertjax.data import instances

CLS, SEP = 2, 3


def _original_pairs(docs, max_seq_length, short_seq_prob, rng: random.Random):
    """Steps 3-6: per document a target length (short with probability short_seq_prob, uniform
    in [2, max_num_tokens]); sentences gather into a chunk until it reaches the target or the
    document ends; A is its first a_end sentences (a_end uniform in [1, len-1], 1 for one
    sentence); B is random (probability 0.5, always for one sentence: sentences of another
    document, up to 10 tries, from a random sentence until B reaches target - len(A), and the
    chunk's unused sentences are put back) or the rest of the chunk; the pair is truncated one
    token at a time from the longer side, front or back at even odds. Returns
    (len A, len B, is_random, short) per instance and instances per document."""
    max_num_tokens = max_seq_length - 3
    rows, per_doc = [], []
    for d, doc in enumerate(docs):
        made = 0
        target, short = max_num_tokens, False
        if rng.random() < short_seq_prob:
            target, short = rng.randint(2, max_num_tokens), True
        chunk, length, i = [], 0, 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i])
            if i == len(doc) - 1 or length >= target:
                a_end = 1 if len(chunk) == 1 else rng.randint(1, len(chunk) - 1)
                a = [t for s in chunk[:a_end] for t in s]
                if len(chunk) == 1 or rng.random() < 0.5:
                    is_random = True
                    for _ in range(10):
                        other = rng.randint(0, len(docs) - 1)
                        if other != d:
                            break
                    b = []
                    for s in docs[other][rng.randint(0, len(docs[other]) - 1):]:
                        b.extend(s)
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - a_end  # put the unused sentences back
                else:
                    is_random = False
                    b = [t for s in chunk[a_end:] for t in s]
                while len(a) + len(b) > max_num_tokens:
                    longer = a if len(a) > len(b) else b
                    del longer[0 if rng.random() < 0.5 else -1]
                rows.append((len(a), len(b), is_random, short))
                made += 1
                chunk, length = [], 0
            i += 1
        per_doc.append(made)
    return rows, per_doc


def _corpus(n_docs, seed, sentences=(1, 30), words=(2, 25)):
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        base, doc = 100000 * (d + 1), []
        for _ in range(int(rng.integers(*sentences))):
            n = int(rng.integers(*words))
            doc.append(list(range(base + len(doc) * 1000, base + len(doc) * 1000 + n)))
        docs.append(doc)
    return docs


def test_every_sentence_is_used_exactly_once():
    """One-token sentences make every chunk end exactly at its target, so nothing is truncated:
    then each sentence appears exactly once in its own document's instances, in A or in a B
    that is the rest of the chunk, and never in a random B of its own document."""
    rng = np.random.default_rng(7)
    docs = []
    for d in range(60):
        n = int(rng.integers(1, 40))
        docs.append((d, [[100000 * (d + 1) + k] for k in range(n)]))
    counts = instances.BuildCounts()
    built = list(instances.pair_instances(iter(docs), max_seq_length=24, short_seq_prob=0.3,
                                          cls_id=CLS, sep_id=SEP, rng=np.random.default_rng(0),
                                          counts=counts))
    used = {}
    for inst in built:
        a = inst.tokens[1:inst.segment_start - 1]
        b = inst.tokens[inst.segment_start:-1]
        assert len(a) + len(b) <= 21  # nothing was cut: coverage is exact
        assert all(t // 100000 - 1 == inst.a_doc for t in a)
        own = a + ([] if inst.is_random_next else b)
        if inst.is_random_next:
            assert all(t // 100000 - 1 != inst.a_doc for t in b)
        for t in own:
            used[t] = used.get(t, 0) + 1
    everything = [s[0] for _, doc in docs for s in doc]
    assert counts.dropped_chunks == 0
    assert sorted(used) == sorted(everything), set(everything) - set(used)
    assert set(used.values()) == {1}
    assert sum(inst.is_random_next for inst in built) > len(built) // 4  # put-backs happened


def _describe(rows, per_doc):
    a = np.array([r[0] for r in rows], float)
    b = np.array([r[1] for r in rows], float)
    return {"n": len(rows), "a": a, "b": b, "total": a + b,
            "random": np.array([r[2] for r in rows], float),
            "short": np.array([r[3] for r in rows], float),
            "per_doc": np.array(per_doc, float)}


def test_distributions_match_the_original_algorithm():
    S, short_prob = 64, 0.1
    ours_rows, ours_docs, orig_rows, orig_docs = [], [], [], []
    for seed in range(4):
        docs = _corpus(150, seed)
        rows, per_doc = _original_pairs(docs, S, short_prob, random.Random(seed))
        orig_rows += rows
        orig_docs += per_doc
        made = {}
        for inst in instances.pair_instances(
                iter(enumerate(docs)), max_seq_length=S, short_seq_prob=short_prob, cls_id=CLS,
                sep_id=SEP, rng=np.random.default_rng(1000 + seed)):
            a = inst.segment_start - 2
            ours_rows.append((a, len(inst.tokens) - 3 - a, inst.is_random_next,
                              inst.short_target))
            made[inst.a_doc] = made.get(inst.a_doc, 0) + 1
        ours_docs += [made.get(d, 0) for d in range(len(docs))]
    ours, orig = _describe(ours_rows, ours_docs), _describe(orig_rows, orig_docs)
    assert ours["n"] > 2000 and orig["n"] > 2000
    for key in ("a", "b", "total", "random", "short", "per_doc"):
        x, y = ours[key], orig[key]
        se = np.sqrt(x.var() / len(x) + y.var() / len(y))
        assert abs(x.mean() - y.mean()) < 4 * se + 1e-9, (key, x.mean(), y.mean(), se)
    # The whole length distribution of the pair, not only its mean (total variation distance).
    bins = np.arange(0, S - 1, 4)
    hx = np.histogram(ours["total"], bins)[0] / ours["n"]
    hy = np.histogram(orig["total"], bins)[0] / orig["n"]
    assert 0.5 * np.abs(hx - hy).sum() < 0.05, (hx, hy)
