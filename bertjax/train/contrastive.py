"""Sentence-embedding objectives (the `sentence_embedding` task model, bertjax/model/sentence.py).

- `infonce`: in-batch negatives InfoNCE, sentence-transformers' MultipleNegativesRankingLoss.
  Query i's positive is passage i; every other passage of the GLOBAL batch and every hard
  negative of the global batch is a negative. The [B x B(1+N)] similarity is computed on the
  mesh's global arrays under jit, so each device's queries see every other device's passages,
  and the gradient flows into all of them: no hand-written all-gather, no detached copies.
  `symmetric` adds the passage -> query direction as a second softmax and averages the two
  (MultipleNegativesSymmetricRankingLoss); `directions` puts GTE's extra directions (query to
  query, document to query, document to document) into the one softmax denominator.
- `cosent`: CoSENT over scored pairs: log(1 + sum over (i, j) with score_i > score_j of
  exp(scale * (cos_j - cos_i))) (sentence-transformers' CoSENTLoss, scale 20).
- `cosine_mse`: (cos(u, v) - score)^2 (CosineSimilarityLoss).
- `sbert_softmax`: SBERT's classifier softmax(W [u; v; |u - v|]) with cross-entropy (SoftmaxLoss).

`infonce` and `cosent` couple every row of the batch, so they are not sums over micro-batches
(`summable = False`: gradient accumulation is refused for them).

Batches (static shapes; masks 1 on real tokens). The anchors (queries, first texts) take the
encoder's input names, as every objective's batch does:
  infonce: input_ids/segment_ids/input_mask [B, Sq] the queries, passage_ids/passage_mask
           [B, S], and with N hard negatives negative_ids/negative_mask [B, N, S] and
           negative_valid [B, N] (0 where a row has fewer than N negatives).
  pairs:   input_ids/segment_ids/input_mask and b_ids/b_mask [B, S], and `scores` [B] float32
           or `labels` [B] int32.
Predict batches hold the encoder inputs alone: [B, S] embeds texts ({"embedding"}); [B, 2, S]
embeds pairs ({"cosine"}, and "logits" with the classifier).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from bertjax.errors import UserError
from bertjax.model.sentence import POOLINGS, fold
from bertjax.train.objectives import F32, I32, Objective, encoder_spec, register

NEG_INF = -1e9


DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")


def infonce_loss(q, p, n=None, n_valid=None, temperature: float = 0.05, symmetric: bool = False,
                 directions: tuple[str, ...] = ("query_to_doc",)):
    """q, p [B, H]; n [B, N, H] and n_valid [B, N] or None: the embeddings (already pooled and
    normalised as the objective says). Returns (mean loss, rows whose positive ranks first).

    `directions` beyond query_to_doc add terms to each row's one softmax denominator (GTE's
    improved contrastive loss; sentence-transformers' MultipleNegativesRankingLoss(directions=...,
    partition_mode="joint")): q_i against the other queries, every query against d_i, and d_i
    against the documents of the other rows."""
    b = q.shape[0]
    cands = p if n is None else jnp.concatenate([p, n.reshape(-1, n.shape[-1])], axis=0)
    owner = jnp.concatenate([jnp.arange(b)] + ([] if n is None else
                                               [jnp.repeat(jnp.arange(b), n.shape[1])]))
    valid = jnp.ones((cands.shape[0],), bool)
    if n is not None:
        valid = jnp.concatenate([valid[:b], n_valid.reshape(-1) > 0])
    scale = lambda x: x.astype(jnp.float32) / temperature  # noqa: E731
    logits = jnp.where(valid[None, :], scale(q @ cands.T), NEG_INF)
    labels = jnp.arange(b)
    blocks = [logits]
    eye = jnp.eye(b, dtype=bool)
    if "query_to_query" in directions:
        blocks.append(jnp.where(eye, NEG_INF, scale(q @ q.T)))
    if "doc_to_query" in directions:
        blocks.append(scale(p @ q.T))
    if "doc_to_doc" in directions:
        mine = owner[None, :] == labels[:, None]
        blocks.append(jnp.where(mine | ~valid[None, :], NEG_INF, scale(p @ cands.T)))
    if len(blocks) == 1:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    else:
        joint = jnp.concatenate(blocks, axis=1)
        loss = jnp.mean(jax.nn.logsumexp(joint, axis=1) - logits[labels, labels])
    if symmetric:
        back = (p @ q.T).astype(jnp.float32) / temperature
        loss = 0.5 * (loss + optax.softmax_cross_entropy_with_integer_labels(back, labels).mean())
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return loss, correct


def cosent_loss(cos, scores, scale: float = 20.0):
    """CoSENT: cos, scores [B]. Every pair (i, j) with scores[i] < scores[j] whose cosines are in
    the wrong order costs exp(scale * (cos_i - cos_j))."""
    diff = scale * (cos[:, None] - cos[None, :])
    wrong_order = scores[:, None] < scores[None, :]
    diff = jnp.where(wrong_order, diff, NEG_INF)
    flat = jnp.concatenate([jnp.zeros((1,), jnp.float32), diff.reshape(-1)])
    return jax_logsumexp(flat)


def jax_logsumexp(x):
    m = jnp.max(x)
    return m + jnp.log(jnp.sum(jnp.exp(x - m)))


@dataclasses.dataclass(frozen=True)
class _Embedding(Objective):
    """Knobs every embedding objective takes (task.pooling, task.normalize, ...)."""

    model_task: str = "sentence_embedding"
    pooling: str = "mean"
    normalize: bool = True
    temperature: float = 0.05
    symmetric: bool = False
    directions: tuple[str, ...] = ("query_to_doc",)
    scale: float = 20.0
    num_negatives: int = 0
    query_length: int = 0  # 0 = the passages' length
    # Gradient caching (GradCache, sentence-transformers' Cached* losses): > 0 runs the encoder
    # over the batch in chunks of this many rows, each under jax.checkpoint inside a scan, so only
    # the [rows, H] embeddings are kept for the loss; the backward pass recomputes one chunk at a
    # time. The loss and gradients are the uncached ones; the memory is one chunk's.
    mini_batch: int = 0

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise UserError(f"task.pooling={self.pooling!r} is not one of {', '.join(POOLINGS)}")
        if not self.temperature > 0:
            raise UserError(f"task.temperature must be > 0, got {self.temperature}; "
                            "0.05 is sentence-transformers' default, 0.01-0.02 E5's and BGE's")
        if self.num_negatives < 0:
            raise UserError(f"task.num_negatives must be >= 0, got {self.num_negatives}")
        bad = [d for d in self.directions if d not in DIRECTIONS]
        if bad or "query_to_doc" not in self.directions:
            raise UserError(f"task.directions must list query_to_doc and any of "
                            f"{', '.join(DIRECTIONS[1:])}; got {','.join(self.directions)}")
        if self.mini_batch < 0:
            raise UserError(f"task.mini_batch must be >= 0, got {self.mini_batch}")

    def _encode(self, model, ids, mask, key):
        rows = ids.size // ids.shape[-1]
        m = self.mini_batch
        if not m or rows <= m:
            return model.encode(ids, mask, self.pooling, self.normalize, dropout_key=key)
        if rows % m:
            raise UserError(f"task.mini_batch={m} must divide the {rows} texts of a batch "
                            "(queries, passages and negatives each)")
        return _cached_encode(model, ids, mask, key, m, self.pooling, self.normalize)

    def _predict_forward(self, model, batch):
        ids, mask = batch["input_ids"], batch["input_mask"]
        if ids.ndim == 2:
            return {"embedding": self._encode(model, ids, mask, None)}
        emb = self._encode(model, ids, mask, None)  # [B, 2, H]
        u, v = emb[:, 0], emb[:, 1]
        out = {"cosine": _cosine(u, v)}
        if getattr(model, "classifier", None) is not None:
            out["logits"] = model.pair_logits(u, v)
        return out

    def _pair_embeddings(self, model, batch, key):
        u = self._encode(model, batch["input_ids"], batch["input_mask"], fold(key, 1))
        v = self._encode(model, batch["b_ids"], batch["b_mask"], fold(key, 2))
        return u, v

    def denominators(self, batch):
        return {"rows": jnp.asarray(next(iter(batch.values())).shape[0], jnp.float32)}

    @staticmethod
    def predict(out):
        return out


def _cached_encode(model, ids, mask, key, m: int, pooling: str, normalize: bool):
    """GradCache: the encoder over `rows // m` chunks of m rows, one at a time. Chunk j takes
    rows j, j + c, j + 2c, ... (c chunks), so every chunk holds rows of every batch shard."""
    lead, s = ids.shape[:-1], ids.shape[-1]
    rows = ids.size // s
    c = rows // m
    chunked = lambda x: x.reshape(m, c, s).swapaxes(0, 1)  # noqa: E731  [c, m, S]
    graphdef, state = nnx.split(model)

    @jax.checkpoint
    def one(state, ids, mask, j):
        k = None if key is None else jax.random.fold_in(key, j)
        return nnx.merge(graphdef, state).encode(ids, mask, pooling, normalize, dropout_key=k)

    emb = jax.lax.map(lambda xs: one(state, *xs),
                      (chunked(ids), chunked(mask), jnp.arange(c)))  # [c, m, H]
    return emb.swapaxes(0, 1).reshape(*lead, emb.shape[-1])


def _cosine(u, v):
    u = u / jnp.maximum(jnp.linalg.norm(u, axis=-1, keepdims=True), 1e-12)
    v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return jnp.sum(u * v, axis=-1)


def _pair_spec(batch, seq):
    return {**encoder_spec(batch, seq), "b_ids": ((batch, seq), I32),
            "b_mask": ((batch, seq), I32)}


@register("infonce")
@dataclasses.dataclass(frozen=True)
class InfoNCE(_Embedding):
    metrics = ("loss", "accuracy")
    summable = False

    def batch_spec(self, batch, seq, preds):
        q = self.query_length or seq
        spec = {**encoder_spec(batch, q), "passage_ids": ((batch, seq), I32), "passage_mask": ((batch, seq), I32)}
        if self.num_negatives:
            n = self.num_negatives
            spec.update({"negative_ids": ((batch, n, seq), I32),
                         "negative_mask": ((batch, n, seq), I32),
                         "negative_valid": ((batch, n), F32)})
        return spec

    def forward(self, model, batch, dropout_key):
        if "passage_ids" not in batch:
            return self._predict_forward(model, batch)
        out = {"q": self._encode(model, batch["input_ids"], batch["input_mask"],
                                 fold(dropout_key, 1)),
               "p": self._encode(model, batch["passage_ids"], batch["passage_mask"],
                                 fold(dropout_key, 2))}
        if "negative_ids" in batch:
            out["n"] = self._encode(model, batch["negative_ids"], batch["negative_mask"],
                                    fold(dropout_key, 3))
        return out

    def loss(self, out, batch, denoms=None):
        loss, correct = infonce_loss(out["q"], out["p"], out.get("n"), batch.get("negative_valid"),
                                     self.temperature, self.symmetric, tuple(self.directions))
        b = jnp.asarray(out["q"].shape[0], jnp.float32)
        return loss, {"loss": (loss * b, b), "accuracy": (correct, b)}


@register("cosent")
@dataclasses.dataclass(frozen=True)
class CoSENT(_Embedding):
    metrics = ("loss",)
    summable = False

    def batch_spec(self, batch, seq, preds):
        return {**_pair_spec(batch, seq), "scores": ((batch,), F32)}

    def forward(self, model, batch, dropout_key):
        if "b_ids" not in batch:
            return self._predict_forward(model, batch)
        u, v = self._pair_embeddings(model, batch, dropout_key)
        return {"cosine": _cosine(u, v)}

    def loss(self, out, batch, denoms=None):
        loss = cosent_loss(out["cosine"], batch["scores"].astype(jnp.float32), self.scale)
        b = jnp.asarray(out["cosine"].shape[0], jnp.float32)
        return loss, {"loss": (loss * b, b)}


@register("cosine_mse")
@dataclasses.dataclass(frozen=True)
class CosineMSE(CoSENT):
    summable = True

    def loss(self, out, batch, denoms=None):
        err = (out["cosine"] - batch["scores"].astype(jnp.float32)) ** 2
        b = jnp.asarray(err.shape[0], jnp.float32)
        d = denoms["rows"] if denoms is not None else b
        return jnp.sum(err) / d, {"loss": (jnp.sum(err), b)}


@register("sbert_softmax")
@dataclasses.dataclass(frozen=True)
class SBERTSoftmax(_Embedding):
    metrics = ("loss", "accuracy")

    def batch_spec(self, batch, seq, preds):
        return {**_pair_spec(batch, seq), "labels": ((batch,), I32)}

    def forward(self, model, batch, dropout_key):
        if "b_ids" not in batch:
            return self._predict_forward(model, batch)
        u, v = self._pair_embeddings(model, batch, dropout_key)
        return {"logits": model.pair_logits(u, v)}

    def loss(self, out, batch, denoms=None):
        logits, labels = out["logits"], batch["labels"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        b = jnp.asarray(ce.shape[0], jnp.float32)
        d = denoms["rows"] if denoms is not None else b
        hit = jnp.sum((jnp.argmax(logits, -1) == labels).astype(jnp.float32))
        return jnp.sum(ce) / d, {"loss": (jnp.sum(ce), b), "accuracy": (hit, b)}
