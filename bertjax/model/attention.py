"""Dot-product attention backends behind one switch: "xla" (everywhere), "cudnn" (GPU), "splash" (TPU).

All take q, k, v as [batch, seq, heads, head_dim] in the compute dtype and a [batch, seq] 0/1 padding
mask, and return [batch, seq, heads, head_dim]. Softmax runs in float32 in every backend.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

BACKENDS = ("auto", "xla", "cudnn", "splash")
_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print(f"warning: {msg}", file=sys.stderr, flush=True)


FUSED = {"gpu": "cudnn", "tpu": "splash"}


def check_backend(name: str, attention_dropout: float) -> None:
    """Config-time check: the name only (the platform is known when a step is traced), and no
    explicitly fused backend with attention dropout, which the fused kernels cannot apply."""
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {name!r}")
    if name in FUSED.values() and attention_dropout > 0.0:
        raise ValueError(
            f"attention_backend={name!r} fuses the softmax and cannot apply attention_dropout="
            f"{attention_dropout}; set model.attention_dropout=0.0 (a change of BERT's recipe) or "
            "model.attention_backend=auto (keeps the dropout with xla attention while training)")


def resolve_backend(name: str, platform: str | None = None, *, seq_len: int | None = None,
                    dropout: bool = False) -> str:
    """The backend a traced attention call uses.

    "auto" picks the platform's fused kernel (cudnn on GPU, splash on TPU) unless attention dropout
    applies (training with attention_dropout > 0): then xla, so that "auto" never changes BERT's
    recipe. A fused kernel on the wrong platform, or splash on a length it cannot tile, falls back
    to xla with a one-time reason.
    """
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {BACKENDS}, got {name!r}")
    platform = platform or mesh_platform()
    if name == "auto":
        fused = FUSED.get(platform)
        if fused is None:
            return "xla"
        if dropout:
            _warn_once(f"attention_backend='auto' keeps attention dropout by using 'xla' attention "
                       f"while training on {platform}; set model.attention_dropout=0.0 for the "
                       f"fused {fused!r} kernel")
            return "xla"
        name = fused
    if name in FUSED.values() and FUSED.get(platform) != name:
        _warn_once(f"attention_backend={name!r} needs a {'GPU' if name == 'cudnn' else 'TPU'} "
                   f"(platform is {platform}); using 'xla'")
        return "xla"
    if name == "splash" and seq_len is not None and splash_block(seq_len) is None:
        _warn_once(f"splash attention tiles sequences in blocks of 128; length {seq_len} is not a "
                   "multiple, so this model uses 'xla' attention")
        return "xla"
    return name


def _attend(logits, v, mask, dropout_rate, dropout_key):
    """Scaled logits -> the values' mix: padded keys get a large negative bias (as the
    original's -10000), then softmax, then attention-probability dropout."""
    bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min / 2)
    probs = jax.nn.softmax(logits + bias, axis=-1)
    if dropout_rate > 0.0 and dropout_key is not None:
        keep = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
    return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(v.dtype), v)


def xla_attention(q, k, v, mask, *, dropout_rate=0.0, dropout_key=None):
    """Reference attention."""
    depth = q.shape[-1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(depth))
    return _attend(logits, v, mask, dropout_rate, dropout_key)


@functools.lru_cache(maxsize=64)
def relative_index(seq_len: int, span: int, buckets: int, max_distance: int) -> np.ndarray:
    """DeBERTa's [S, S] row of the relative table for query i and key j: the distance i - j,
    log-bucketed when `buckets` > 0 (exact within +/- buckets/2, then log-spaced so that
    `max_distance` lands on the last bucket), shifted by `span` and clipped to [0, 2 * span).

    Static (numpy) for a static length: the traced step holds it as a constant. The log runs in
    float32 as in the reference implementation, so that a distance on a bucket edge rounds the
    same way."""
    rel = np.arange(seq_len)[:, None] - np.arange(seq_len)[None, :]
    if buckets > 0 and max_distance > 0:
        mid = buckets // 2
        sign = np.sign(rel)
        far = np.where(np.abs(rel) < mid, mid - 1, np.abs(rel)).astype(np.float32)
        log_pos = np.ceil(np.log(far / np.float32(mid)) / np.log(np.float32((max_distance - 1) / mid))
                          * np.float32(mid - 1)) + mid
        rel = np.where(far <= mid, rel, log_pos * sign).astype(np.int64)
    return np.clip(rel + span, 0, 2 * span - 1).astype(np.int32)


def disentangled_attention(q, k, v, mask, pos_q, pos_k, *, terms: tuple[str, ...], buckets: int,
                           max_distance: int, dropout_rate=0.0, dropout_key=None):
    """DeBERTa's attention: content->content plus content->position (c2p: query i against the
    key map of distance i-j's embedding) and position->content (p2c: key j against the query
    map of the same distance's embedding), all divided by sqrt(d * (1 + len(terms))).

    pos_q, pos_k: [2 * span, heads, head_dim], the relative table through the layer's query and
    key maps. Only xla can run it: the fused kernels take no bias terms. Each term is computed
    against every table row ([B, H, S, 2*span]) and then gathered per (i, j), which costs
    S * 2*span per head instead of S * S * head_dim."""
    seq, depth, span = q.shape[1], q.shape[-1], pos_q.shape[0] // 2
    index = jnp.asarray(relative_index(seq, span, buckets, max_distance))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    if "c2p" in terms:
        c2p = jnp.einsum("bqhd,rhd->bhqr", q, pos_k, preferred_element_type=jnp.float32)
        logits = logits + jnp.take_along_axis(c2p, index[None, None], axis=-1)
    if "p2c" in terms:
        # Row j of the key side reads the distance i - j for every query i: index transposed.
        p2c = jnp.einsum("bkhd,rhd->bhkr", k, pos_q, preferred_element_type=jnp.float32)
        logits = logits + jnp.swapaxes(jnp.take_along_axis(p2c, index.T[None, None], axis=-1),
                                       -1, -2)
    logits = logits / jnp.sqrt(jnp.float32(depth * (1 + len(terms))))
    return _attend(logits, v, mask, dropout_rate, dropout_key)


def cudnn_attention(q, k, v, mask):
    """cuDNN fused attention. BERT padding is trailing, so per-row key lengths express the mask
    exactly and let cuDNN skip the padded blocks instead of reading a dense bias."""
    lengths = jnp.sum(mask, axis=-1).astype(jnp.int32)
    return jax.nn.dot_product_attention(
        q, k, v, query_seq_lengths=lengths, key_value_seq_lengths=lengths, implementation="cudnn"
    )


SPLASH_BLOCKS = (512, 256, 128)


def splash_block(seq_len: int) -> int | None:
    """The splash tile for a sequence length: the largest of 512/256/128 that divides it, or None
    when none does (the kernel tiles whole 128-lane blocks; such lengths use xla)."""
    return next((b for b in SPLASH_BLOCKS if seq_len % b == 0), None)


@functools.lru_cache(maxsize=None)
def _splash_kernel(seq_len: int, num_heads: int, interpret: bool):
    # The TPU kernel's modules load with the splash backend only: the CPU and GPU paths never
    # need Mosaic.
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b = splash_block(seq_len)
    blocks = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                           block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    full = sm.MultiHeadMask([sm.FullMask((seq_len, seq_len)) for _ in range(num_heads)])
    return sk.make_splash_mha(full, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                              interpret=interpret)


def _splash_local(q, k, v, mask, interpret: bool = False):
    """The kernel on one device's block: q, k, v [b, s, h, d], mask [b, s]."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    _, s, h, d = q.shape
    kernel = _splash_kernel(s, h, interpret)
    ids = mask.astype(jnp.int32)
    seg = sk.SegmentIds(q=ids, kv=ids)
    scale = (1.0 / jnp.sqrt(jnp.float32(d))).astype(q.dtype)
    # The kernel works per example on [heads, seq, head_dim].
    qh, kh, vh = (jnp.swapaxes(t, 1, 2) for t in (q * scale, k, v))
    out = jax.vmap(kernel)(qh, kh, vh, segment_ids=seg)
    return jnp.swapaxes(out, 1, 2)


def splash_attention(q, k, v, mask, *, interpret: bool = False):
    """Pallas splash attention. Padding is expressed as segment ids (real=1, pad=0) so real tokens
    never attend to padding; padded query rows produce values that nothing downstream reads.

    XLA cannot partition a Mosaic kernel, so on a mesh of more than one device (set by `on_mesh`)
    the kernel runs inside shard_map: each device attends over its own rows, and over its own heads
    when the heads axis divides them. Attention needs no communication either way.
    """
    placement = _PLACEMENT.get()
    local = functools.partial(_splash_local, interpret=interpret)
    if placement is None or placement.mesh.size == 1:
        return local(q, k, v, mask)
    mesh, batch_axes, head_axis = placement
    batch_axes = tuple(a for a in batch_axes if a in mesh.shape)
    rows = math.prod(mesh.shape[a] for a in batch_axes)
    if q.shape[0] % rows:
        raise ValueError(f"splash attention: batch {q.shape[0]} does not split over {batch_axes}")
    heads = head_axis if head_axis in mesh.shape and q.shape[2] % mesh.shape[head_axis] == 0 else None
    qkv_spec = P(batch_axes, None, heads, None)
    # check_vma=False: the Pallas call carries no varying-manual-axes annotations.
    return jax.shard_map(local, mesh=mesh, in_specs=(qkv_spec, qkv_spec, qkv_spec, P(batch_axes)),
                         out_specs=qkv_spec, check_vma=False)(q, k, v, mask)


class Placement(NamedTuple):
    mesh: Mesh
    batch_axes: tuple[str, ...]
    head_axis: str


# Set while a step is traced. A Python context, not a jit argument: the mesh is static, and the
# model package must not know the trainer's mesh axes.
_PLACEMENT: contextvars.ContextVar[Placement | None] = contextvars.ContextVar(
    "bertjax_attention_placement", default=None)


@contextlib.contextmanager
def on_mesh(mesh: Mesh, batch_axes: tuple[str, ...], head_axis: str):
    """Tells the attention backends which mesh the traced step runs on: splash places its kernel
    with it, and "auto" resolves for the mesh's platform (a TPU mesh compiled ahead of time on a
    CPU host gets splash)."""
    token = _PLACEMENT.set(Placement(mesh, tuple(batch_axes), head_axis))
    try:
        yield
    finally:
        _PLACEMENT.reset(token)


def mesh_platform() -> str:
    placement = _PLACEMENT.get()
    if placement is not None:
        return placement.mesh.devices.flat[0].platform
    return jax.default_backend()


def attend(q, k, v, mask, *, backend: str, dropout_rate: float = 0.0, dropout_key=None):
    """`backend` is the configured name; it is resolved here, at trace time, where the platform,
    the sequence length and whether dropout applies are all known."""
    dropout = dropout_rate > 0.0 and dropout_key is not None
    backend = resolve_backend(backend, seq_len=q.shape[1], dropout=dropout)
    if backend == "xla":
        return xla_attention(q, k, v, mask, dropout_rate=dropout_rate, dropout_key=dropout_key)
    if backend == "cudnn":
        return cudnn_attention(q, k, v, mask)
    return splash_attention(q, k, v, mask)


RELATIVE_REASON = ("DeBERTa's disentangled attention adds c2p/p2c bias terms, which the fused "
                   "kernels (splash, cudnn) cannot take")


def describe(name: str, attention_dropout: float, seq_len: int, platform: str,
             relative: bool = False) -> dict:
    """What a run's attention really is, for the run plan: the backend in training and in eval,
    and the attention dropout that training applies. `relative` (DeBERTa) always runs xla."""
    if relative:
        return {"configured": name, "train": "xla", "eval": "xla",
                "attention_dropout": attention_dropout, "why_xla": RELATIVE_REASON}
    train = resolve_backend(name, platform, seq_len=seq_len, dropout=attention_dropout > 0.0)
    evaluate = resolve_backend(name, platform, seq_len=seq_len, dropout=False)
    return {"configured": name, "train": train, "eval": evaluate,
            "attention_dropout": attention_dropout if train == "xla" else 0.0}
