"""The sentence-embedding task model: a shared-weight bi-encoder (Sentence-BERT, E5, BGE, GTE).

`bert` is the encoder with its pooler (so a Hugging Face `BertModel`/`RobertaModel` loads its
export with no missing weight; the embedding itself never reads the pooler). `num_labels > 0`
adds SBERT's softmax classifier over (u, v, |u - v|) for labelled pairs; sentence-transformers
does not save that head either, so an export holds only the encoder.

Pooling turns the final hidden states into one vector: `mean` over real tokens ([CLS] and [SEP]
included, as sentence-transformers does), `cls` (the first token's state, not the pooler), or
`last` (the last real token). L2 normalisation is optional.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax.model.encoder import BertConfig, BertModel, dense

POOLINGS = ("mean", "cls", "last")


def pool(seq, mask, mode: str):
    """[B,S,H] hidden states, [B,S] mask -> [B,H] float32."""
    seq = seq.astype(jnp.float32)
    if mode == "cls":
        return seq[:, 0]
    if mode == "last":
        last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0).astype(jnp.int32)
        return jnp.take_along_axis(seq, last[:, None, None], axis=1)[:, 0]
    if mode != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, not {mode!r}")
    w = mask[..., None].astype(jnp.float32)
    return (seq * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)


def l2_normalize(x, eps: float = 1e-12):
    # torch.nn.functional.normalize: x / max(||x||, eps)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class BertForSentenceEmbedding(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, rngs=rngs)
        self.classifier = (dense(cfg, 3 * cfg.hidden_size, cfg.num_labels, (None, "classes"),
                                 rngs=rngs) if cfg.num_labels > 0 else None)

    def __call__(self, input_ids, segment_ids, input_mask, *, dropout_key=None):
        seq, _ = self.bert(input_ids, segment_ids, input_mask, dropout_key=dropout_key)
        return {"sequence_output": seq}

    def encode(self, ids, mask, pooling: str, normalize: bool, dropout_key=None):
        """[..., S] ids and mask -> [..., H] float32 embeddings (leading dims flattened and
        restored)."""
        lead, s = ids.shape[:-1], ids.shape[-1]
        ids2, mask2 = ids.reshape(-1, s), mask.reshape(-1, s)
        seq, _ = self.bert(ids2, jnp.zeros_like(ids2), mask2, dropout_key=dropout_key)
        emb = pool(seq, mask2, pooling)
        emb = l2_normalize(emb) if normalize else emb
        return emb.reshape(*lead, emb.shape[-1])

    def pair_logits(self, u, v):
        feats = jnp.concatenate([u, v, jnp.abs(u - v)], axis=-1)
        return self.classifier(feats.astype(self.classifier.kernel.dtype)).astype(jnp.float32)


def fold(key, i: int):
    return None if key is None else jax.random.fold_in(key, i)
