"""Exact retrieval and STS metrics (numpy, float64 where it matters).

`search(queries, corpus, k)` ranks the whole corpus for every query by inner product (cosine for
normalised vectors) in chunks, exactly; `retrieval_metrics` scores the rankings against
relevance judgements as BEIR/pytrec_eval do: nDCG@10 (graded, log2 discount, ideal over every
judged document), MRR@10, Recall@k (relevant found in the top k over all relevant).
`spearman` is STS's measure: rank correlation of cosine against gold scores (ties averaged).
"""
from __future__ import annotations

import numpy as np

KS = (1, 10, 100)


def search(queries: np.ndarray, corpus: np.ndarray, k: int = 100, chunk: int = 1024):
    """[Q, H] x [D, H] -> (indices [Q, k'], scores [Q, k']) best first, k' = min(k, D)."""
    k = min(k, len(corpus))
    idx_out, sc_out = [], []
    c = np.asarray(corpus, np.float32)
    for start in range(0, len(queries), chunk):
        s = np.asarray(queries[start:start + chunk], np.float32) @ c.T
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(s, top, 1)
        order = np.argsort(-part, axis=1, kind="stable")
        idx_out.append(np.take_along_axis(top, order, 1))
        sc_out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(idx_out), np.concatenate(sc_out)


def retrieval_metrics(ranked: np.ndarray, qrels: list[dict[int, float]]) -> dict[str, float]:
    """ranked [Q, k] corpus indices best first; qrels[i] = {corpus index: relevance > 0}."""
    ndcg, mrr = [], []
    recall = {k: [] for k in KS}
    for row, rel in zip(ranked, qrels):
        rel = {d: g for d, g in rel.items() if g > 0}
        if not rel:
            continue
        gains = np.array([rel.get(int(d), 0.0) for d in row[:10]], np.float64)
        disc = 1.0 / np.log2(np.arange(2, len(gains) + 2))
        ideal = np.sort(np.array(list(rel.values()), np.float64))[::-1][:10]
        ndcg.append(float((gains * disc).sum() / (ideal * disc[:len(ideal)]).sum()))
        hits = np.nonzero(gains > 0)[0]
        mrr.append(1.0 / (hits[0] + 1) if len(hits) else 0.0)
        for k in KS:
            found = sum(1 for d in row[:k] if int(d) in rel)
            recall[k].append(found / len(rel))
    out = {"ndcg@10": _mean(ndcg), "mrr@10": _mean(mrr)}
    out.update({f"recall@{k}": _mean(v) for k, v in recall.items()})
    out["queries"] = float(len(mrr))
    return out


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    # average ties
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, ranks)
    return sums[inv] / counts[inv]


def pearson(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def spearman(a, b) -> float:
    return pearson(_ranks(a), _ranks(b))


def cosine_rows(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    u = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), 1e-12)
    v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return (u * v).sum(-1)
