"""Pretraining instances: layout, provenance of A and B, NSP balance, truncation, packing, bounded
streaming. Token ids encode where they came from: document d's tokens are 100000 * (d + 1) + k
for its k-th token, so every instance can be traced back to its documents and order."""
import numpy as np
import pytest

from bertjax.data import instances

CLS, SEP = 2, 3


def make_docs(n_docs, rng, sentences=(2, 30), words=(2, 12), single=False):
    docs = []
    for d in range(n_docs):
        base = 100000 * (d + 1)
        k = 0
        doc = []
        n_sent = 1 if single else int(rng.integers(*sentences))
        for _ in range(n_sent):
            n = int(rng.integers(*words))
            doc.append(list(range(base + k, base + k + n)))
            k += n
        docs.append((d, doc))
    return docs


def doc_of(token):
    return token // 100000 - 1


def build(docs, seed=0, S=64, short=0.1, **kw):
    counts = instances.BuildCounts()
    out = list(instances.pair_instances(
        iter(docs), max_seq_length=S, short_seq_prob=short, cls_id=CLS, sep_id=SEP,
        rng=np.random.default_rng(seed), counts=counts, **kw))
    return out, counts


def split(inst):
    t = inst.tokens
    return t[1:inst.segment_start - 1], t[inst.segment_start:-1]


def test_layout_lengths_and_provenance():
    docs = make_docs(300, np.random.default_rng(1))
    out, counts = build(docs, S=64)
    assert len(out) > 1000
    for inst in out:
        t = inst.tokens
        assert len(t) <= 64
        assert t[0] == CLS and t[inst.segment_start - 1] == SEP and t[-1] == SEP
        assert t.count(SEP) == 2 and t.count(CLS) == 1
        a, b = split(inst)
        assert a and b
        assert {doc_of(x) for x in a} == {inst.a_doc}
        assert {doc_of(x) for x in b} == {inst.b_doc}
        # Truncation cuts only the ends of A and B: each stays a contiguous run of its document.
        assert a == list(range(a[0], a[0] + len(a)))
        assert b == list(range(b[0], b[0] + len(b)))
        if inst.is_random_next:
            assert inst.b_doc != inst.a_doc
        else:
            assert inst.b_doc == inst.a_doc and b[0] > a[-1]
    assert counts.documents == 300 and counts.dropped_chunks == 0


def test_next_sentence_balance_and_short_targets():
    docs = make_docs(1500, np.random.default_rng(2), sentences=(20, 60), words=(2, 8))
    out, counts = build(docs, S=64, short=0.1)
    n = len(out)
    assert n > 7000
    random_next = sum(i.is_random_next for i in out)
    # One-sentence chunks are random whatever the coin says; the coin decides the rest at 0.5.
    coin = (random_next - counts.forced_random) / (n - counts.forced_random)
    assert abs(coin - 0.5) < 0.02
    assert abs(random_next / n - 0.5) < 0.05
    short_docs = {i.a_doc for i in out if i.short_target}
    assert abs(len(short_docs) / 1500 - 0.1) < 0.03


def test_deterministic_from_seed():
    docs = make_docs(50, np.random.default_rng(3))
    a, _ = build(docs, seed=7)
    b, _ = build(docs, seed=7)
    c, _ = build(docs, seed=8)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.tokens for x in a] != [x.tokens for x in c]


def test_random_b_is_never_the_same_document_even_with_two_documents():
    docs = make_docs(2, np.random.default_rng(4), sentences=(40, 41))
    out, counts = build(docs, S=32)
    assert any(i.is_random_next for i in out)
    for inst in out:
        assert (inst.b_doc != inst.a_doc) == inst.is_random_next


def test_one_document_without_partners_drops_single_sentence_chunks():
    docs = make_docs(1, np.random.default_rng(5), sentences=(30, 31))
    out, counts = build(docs, S=32)
    assert out and not any(i.is_random_next for i in out)
    assert all(i.b_doc == i.a_doc for i in out)
    # A seed document from another shard gives it real random partners.
    seeds = make_docs(3, np.random.default_rng(6))[2:]
    out2, counts2 = build(docs, S=32, seed_documents=seeds)
    assert counts2.dropped_chunks == 0
    assert any(i.is_random_next and i.b_doc == 2 for i in out2)


def test_streaming_reads_a_bounded_number_of_documents_ahead():
    pulled = []

    def stream():
        for d, doc in make_docs(200, np.random.default_rng(7)):
            pulled.append(d)
            yield d, doc

    gen = instances.pair_instances(stream(), max_seq_length=64, short_seq_prob=0.1, cls_id=CLS,
                                   sep_id=SEP, rng=np.random.default_rng(0), pool_size=5,
                                   lookahead=3)
    first = next(gen)
    assert first.a_doc == 0 and len(pulled) <= 5
    for inst in gen:
        assert len(pulled) - 1 - inst.a_doc <= 4  # never more than lookahead + 1 documents ahead


def test_partner_pool_is_bounded_and_trims_long_documents():
    rng = np.random.default_rng(8)
    pool = instances.PartnerPool(4, rng, max_tokens=50)
    for d, doc in make_docs(100, np.random.default_rng(9), sentences=(30, 40)):
        pool.add(d, doc)
    assert len(pool.reservoir) == 4 and pool.seen == 100
    for _, doc in pool.reservoir:
        assert sum(len(s) for s in doc) < 50 + 12
    ids = {pool.draw(exclude=-1, extra=[])[0] for _ in range(50)}
    assert ids <= {d for d, _ in pool.reservoir}
    only = pool.reservoir[0][0]
    small = instances.PartnerPool(1, rng, max_tokens=50)
    small.add(only, pool.reservoir[0][1])
    assert small.draw(exclude=only, extra=[]) is None


def test_truncation_keeps_both_sides_and_removes_from_longer():
    rng = np.random.default_rng(10)
    a, b = instances._truncate_pair(list(range(100)), list(range(1000, 1010)), 30, rng)
    assert len(a) + len(b) == 30 and b == list(range(1000, 1010))
    a, b = instances._truncate_pair(list(range(5)), list(range(1000, 1200)), 9, rng)
    assert a == list(range(5)) and len(b) == 4  # B is cut down to A's length, then ties cut B


@pytest.mark.parametrize("short", [0.0, 0.3])
def test_packing_without_nsp_keeps_every_token_in_order(short):
    docs = make_docs(60, np.random.default_rng(11), words=(2, 90))
    counts = instances.BuildCounts()
    out = list(instances.packed_instances(
        iter(docs), max_seq_length=48, short_seq_prob=short, cls_id=CLS, sep_id=SEP,
        rng=np.random.default_rng(0), counts=counts))
    stream = []
    for inst in out:
        t = inst.tokens
        assert len(t) <= 48 and t[0] == CLS and t[-1] == SEP
        assert inst.segment_start == len(t) and not inst.is_random_next and inst.b_doc == -1
        body = t[1:-1]
        assert body and body[0] != SEP and body[-1] != SEP
        assert inst.a_doc == doc_of(body[0])
        for x, y in zip(body, body[1:]):
            if y == SEP:
                continue
            if x == SEP:
                continue
            # Inside one instance tokens follow each other, or a [SEP] marks a new document.
            assert y == x + 1 or doc_of(y) == doc_of(x) + 1
        for x, y in zip(body, body[1:]):
            if x != SEP and y != SEP and doc_of(y) != doc_of(x):
                pytest.fail("documents joined without a [SEP] between them")
        stream.extend(x for x in body if x != SEP)
    everything = [x for _, doc in docs for s in doc for x in s]
    assert stream == everything
    if short:
        assert 0.15 < sum(i.short_target for i in out) / len(out) < 0.45


def test_packing_fills_instances_with_whole_sentences():
    docs = make_docs(100, np.random.default_rng(12), words=(2, 8))
    out = list(instances.packed_instances(
        iter(docs), max_seq_length=66, short_seq_prob=0.0, cls_id=CLS, sep_id=SEP,
        rng=np.random.default_rng(0)))
    # Sentences of at most 7 tokens: an instance closes only when the next one does not fit.
    assert all(len(i.tokens) > 66 - 8 for i in out[:-1])
