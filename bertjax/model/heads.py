"""Task heads. Every head returns float32 logits; the losses upstream stay in float32."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from bertjax.model.encoder import ACTIVATIONS, BertConfig, DropoutKeys, LayerNorm, dense, dropout


def gather_positions(sequence_output, positions):
    """[B,S,H] x [B,P] -> [B,P,H]: the MLM head runs on the P masked positions only, never on S."""
    return jnp.take_along_axis(sequence_output, positions[..., None].astype(jnp.int32), axis=1)


class MaskedLM(nnx.Module):
    """dense -> activation -> LayerNorm -> output tied to the word embeddings + per-token bias.

    The tie is made by calling the embedding module passed in (`attend`), so the table exists once
    and the module also works in NNX tree mode.
    """

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        # H -> E: the decoder is the (V, E) word embedding table.
        self.transform = dense(cfg, cfg.hidden_size, cfg.embedding_width, ("embed", None),
                               rngs=rngs)
        self.layer_norm = LayerNorm(cfg, rngs=rngs, size=cfg.embedding_width)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.dtype(cfg.param_dtype)),
                              out_sharding=("vocab",))
        self.act = cfg.hidden_act

    def __call__(self, sequence_output, positions, word_embeddings: nnx.Embed):
        x = gather_positions(sequence_output, positions)
        x = self.layer_norm(ACTIVATIONS[self.act](self.transform(x)))
        logits = word_embeddings.attend(x).astype(jnp.float32)
        return logits + self.bias[...].astype(jnp.float32)


class Classifier(nnx.Module):
    """dropout -> dense to `num_outputs`: NSP (2 on the pooled vector), sequence classification or
    regression (num_labels, 1 = regression), token classification (per position), span QA (2)."""

    def __init__(self, cfg: BertConfig, num_outputs: int, *, rngs: nnx.Rngs, drop: bool = True):
        self.dense = dense(cfg, cfg.hidden_size, num_outputs, ("embed", "classes"), rngs=rngs)
        self.rate = cfg.hidden_dropout if drop else 0.0

    def __call__(self, x, keys: DropoutKeys):
        return self.dense(dropout(x, self.rate, keys)).astype(jnp.float32)
