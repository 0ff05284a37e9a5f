"""Dot-product attention backends behind one switch: "xla" (everywhere), "cudnn" (GPU), "splash" (TPU).

All take q, k, v as [batch, seq, heads, head_dim] in the compute dtype and a [batch, seq] 0/1 padding
mask, and return [batch, seq, heads, head_dim]. Softmax runs in float32 in every backend.
"""
from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp

BACKENDS = ("auto", "xla", "cudnn", "splash")
_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def resolve_backend(name: str, platform: str | None = None) -> str:
    """Maps "auto" to the fastest backend for the platform; falls back to "xla" where unavailable."""
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {name!r}")
    platform = platform or jax.default_backend()
    if name == "auto":
        return {"gpu": "cudnn", "tpu": "splash"}.get(platform, "xla")
    if name == "cudnn" and platform != "gpu":
        _warn_once(f"attention_backend='cudnn' needs a GPU (platform is {platform}); using 'xla'")
        return "xla"
    if name == "splash" and platform != "tpu":
        _warn_once(f"attention_backend='splash' needs a TPU (platform is {platform}); using 'xla'")
        return "xla"
    return name


def xla_attention(q, k, v, mask, *, dropout_rate=0.0, dropout_key=None):
    """Reference attention. Padded keys get a large negative bias (as the original's -10000)."""
    depth = q.shape[-1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(depth))
    bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min / 2)
    probs = jax.nn.softmax(logits + bias, axis=-1)
    if dropout_rate > 0.0 and dropout_key is not None:
        keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def cudnn_attention(q, k, v, mask):
    """cuDNN fused attention. BERT padding is trailing, so per-row key lengths express the mask
    exactly and let cuDNN skip the padded blocks instead of reading a dense bias."""
    lengths = jnp.sum(mask, axis=-1).astype(jnp.int32)
    return jax.nn.dot_product_attention(
        q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation="cudnn"
    )


@functools.lru_cache(maxsize=None)
def _splash_kernel(seq_len: int, num_heads: int):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    full = sm.MultiHeadMask([sm.FullMask((seq_len, seq_len)) for _ in range(num_heads)])
    return sk.make_splash_mha(full, head_shards=1, q_seq_shards=1)


def splash_attention(q, k, v, mask):
    """Pallas splash attention on TPU. Padding is expressed as segment ids (real=1, pad=0) so real
    tokens never attend to padding; padded query rows produce values that nothing downstream reads."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, s, h, d = q.shape
    kernel = _splash_kernel(s, h)
    seg = sk.SegmentIds(q=mask.astype(jnp.int32), kv=mask.astype(jnp.int32))
    scale = 1.0 / jnp.sqrt(jnp.float32(d)).astype(q.dtype)
    # The kernel works per example on [heads, seq, head_dim].
    qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q * scale, k, v))
    out = jax.vmap(kernel)(qh, kh, vh, segment_ids=seg)
    return jnp.swapaxes(out, 1, 2)


def attend(q, k, v, mask, *, backend: str, dropout_rate: float = 0.0, dropout_key=None):
    if backend == "xla":
        return xla_attention(q, k, v, mask, dropout_rate=dropout_rate, dropout_key=dropout_key)
    if dropout_rate > 0.0 and dropout_key is not None:
        _warn_once(
            f"attention_backend={backend!r} fuses the softmax and cannot drop attention "
            "probabilities; attention dropout is skipped (set model.attention_backend='xla' to keep it)"
        )
    if backend == "cudnn":
        return cudnn_attention(q, k, v, mask)
    if backend == "splash":
        return splash_attention(q, k, v, mask)
    raise ValueError(f"unknown attention backend {backend!r}")
