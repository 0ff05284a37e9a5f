"""The BERT encoder in Flax NNX: embeddings, post-LN transformer layers, pooler.

Parameters are float32 and carry logical axis names (nnx.with_partitioning) so train/mesh.py can
shard them without touching this file. Compute runs in `cfg.dtype`; LayerNorm and softmax in float32.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax.model import attention as attn_lib


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    hidden_act: str = "gelu"
    attention_backend: str = "auto"
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    num_labels: int = 2

    @classmethod
    def from_dict(cls, d) -> "BertConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(d).items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}"
            )
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act must be one of {sorted(ACTIVATIONS)}, got {self.hidden_act!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        attn_lib.check_backend(self.attention_backend, self.attention_dropout)


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
# Floating types the matmuls can run in (dtype) or params be stored in (param_dtype).
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class DropoutKeys:
    """Hands out a distinct key per dropout site. None means deterministic (eval).

    Keys are derived from one key passed at call time (from the seed and step), so dropout needs no
    RNG state inside the model and a resumed run draws exactly the masks of an unbroken one.
    """

    def __init__(self, key: jax.Array | None):
        self.key = key
        self.count = 0

    def __call__(self) -> jax.Array | None:
        if self.key is None:
            return None
        self.count += 1
        return jax.random.fold_in(self.key, self.count)


def dropout(x, rate: float, keys: DropoutKeys):
    key = keys()
    if key is None or rate <= 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def _init(cfg: BertConfig, names):
    return nnx.with_partitioning(nnx.initializers.truncated_normal(cfg.initializer_range), names)


def _zeros(names):
    return nnx.with_partitioning(nnx.initializers.zeros_init(), names)


def _dtype(name: str):
    return jnp.dtype(name)


class LayerNorm(nnx.Module):
    """LayerNorm computed in float32 whatever the compute dtype; the output is cast back."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(
            cfg.hidden_size,
            epsilon=cfg.layer_norm_eps,
            dtype=jnp.float32,
            param_dtype=_dtype(cfg.param_dtype),
            use_fast_variance=False,
            scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
            bias_init=_zeros(("embed",)),
            rngs=rngs,
        )
        self.out_dtype = _dtype(cfg.dtype)

    def __call__(self, x):
        return self.norm(x.astype(jnp.float32)).astype(self.out_dtype)


def dense(cfg: BertConfig, n_in: int, n_out: int, names, *, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        n_in,
        n_out,
        dtype=_dtype(cfg.dtype),
        param_dtype=_dtype(cfg.param_dtype),
        kernel_init=_init(cfg, names),
        bias_init=_zeros(names[-1:]),
        rngs=rngs,
    )


class Embeddings(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        def embed(n, names):
            return nnx.Embed(
                n,
                cfg.hidden_size,
                dtype=_dtype(cfg.dtype),
                param_dtype=_dtype(cfg.param_dtype),
                embedding_init=_init(cfg, names),
                rngs=rngs,
            )

        self.word_embeddings = embed(cfg.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(cfg.max_position_embeddings, ("pos", "embed"))
        self.token_type_embeddings = embed(cfg.type_vocab_size, ("type", "embed"))
        self.layer_norm = LayerNorm(cfg, rngs=rngs)
        self.rate = cfg.hidden_dropout

    def __call__(self, input_ids, segment_ids, keys: DropoutKeys):
        seq_len = input_ids.shape[1]
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(segment_ids)
            + self.position_embeddings(jnp.arange(seq_len))[None]
        )
        return dropout(self.layer_norm(x), self.rate, keys)


class SelfAttention(nnx.Module):
    """Fused q/k/v projection ([hidden, 3, heads, head_dim]): one matmul instead of three."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        h, nh, hd = cfg.hidden_size, cfg.num_heads, cfg.head_dim
        common = dict(dtype=_dtype(cfg.dtype), param_dtype=_dtype(cfg.param_dtype), rngs=rngs)
        self.qkv = nnx.Einsum(
            "bsd,dthk->bsthk",
            (h, 3, nh, hd),
            (3, nh, hd),
            kernel_init=_init(cfg, ("embed", None, "heads", None)),
            bias_init=_zeros((None, "heads", None)),
            **common,
        )
        self.out = nnx.Einsum(
            "bshk,hkd->bsd",
            (nh, hd, h),
            (h,),
            kernel_init=_init(cfg, ("heads", None, "embed")),
            bias_init=_zeros(("embed",)),
            **common,
        )
        self.backend = cfg.attention_backend
        self.attention_dropout = cfg.attention_dropout

    def __call__(self, x, mask, keys: DropoutKeys):
        qkv = self.qkv(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        ctx = attn_lib.attend(
            q,
            k,
            v,
            mask,
            backend=self.backend,
            dropout_rate=self.attention_dropout,
            dropout_key=keys(),
        )
        return self.out(ctx)


class EncoderLayer(nnx.Module):
    """Post-LN: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.attention = SelfAttention(cfg, rngs=rngs)
        self.attention_layer_norm = LayerNorm(cfg, rngs=rngs)
        self.intermediate = dense(cfg, cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), rngs=rngs)
        self.output = dense(cfg, cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), rngs=rngs)
        self.output_layer_norm = LayerNorm(cfg, rngs=rngs)
        self.act = cfg.hidden_act
        self.rate = cfg.hidden_dropout

    def __call__(self, x, mask, keys: DropoutKeys):
        a = dropout(self.attention(x, mask, keys), self.rate, keys)
        x = self.attention_layer_norm(x + a)
        f = self.output(ACTIVATIONS[self.act](self.intermediate(x)))
        return self.output_layer_norm(x + dropout(f, self.rate, keys))


class Encoder(nnx.Module):
    """The layer stack. With `scan_layers`, one EncoderLayer holds every layer's parameters
    stacked on a leading "layers" axis and the forward pass is a scan: the compiled program holds
    one layer instead of L, which cuts TPU compile time for Large several-fold. Checkpoints and
    exports always use the per-layer layout (interop/layers.py converts)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.policy = REMAT_POLICIES[cfg.remat]
        self.remat = cfg.remat != "none"
        self.scan = cfg.scan_layers
        self.num_layers = cfg.num_layers
        if self.scan:
            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def stacked(rngs):
                return EncoderLayer(cfg, rngs=rngs)

            self.layers = stacked(rngs)
        else:
            self.layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

    def __call__(self, x, mask, keys: DropoutKeys):
        # One key per layer, drawn the same way with or without remat or scan, so all agree.
        layer_keys = [keys() for _ in range(self.num_layers)]
        run = nnx.remat(_run_layer, policy=self.policy) if self.remat else _run_layer
        if not self.scan:
            for layer, key in zip(self.layers, layer_keys):
                x = run(layer, x, mask, key)
            return x
        stacked_keys = None if layer_keys[0] is None else jnp.stack(layer_keys)

        @nnx.scan(in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)
        def body(h, layer, key):
            return run(layer, h, mask, key)

        if stacked_keys is None:
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def body_nokey(h, layer):
                return run(layer, h, mask, None)

            return body_nokey(x, self.layers)
        return body(x, self.layers, stacked_keys)


def _run_layer(layer, x, mask, key):
    return layer(x, mask, DropoutKeys(key))


class Pooler(nnx.Module):
    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.dense = dense(cfg, cfg.hidden_size, cfg.hidden_size, ("embed", None), rngs=rngs)

    def __call__(self, sequence_output):
        return jnp.tanh(self.dense(sequence_output[:, 0]))


class BertModel(nnx.Module):
    """Embeddings + encoder + pooler. Returns (sequence_output [B,S,H], pooled_output [B,H] or None)."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs, add_pooler: bool = True):
        self.config = cfg
        self.embeddings = Embeddings(cfg, rngs=rngs)
        self.encoder = Encoder(cfg, rngs=rngs)
        # Token classification and QA read every position, never the pooled [CLS]: no pooler there.
        self.pooler = Pooler(cfg, rngs=rngs) if add_pooler else None

    def __call__(self, input_ids, segment_ids, input_mask, *, dropout_key=None):
        keys = DropoutKeys(dropout_key)
        x = self.embeddings(input_ids, segment_ids, keys)
        x = self.encoder(x, input_mask, keys)
        return x, (self.pooler(x) if self.pooler is not None else None)
