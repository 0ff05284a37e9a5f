"""LoRA (Hu et al., 2021): low-rank adapters on the encoder's linear maps, h = W0 x + (alpha/r) B A x.

The adapters are parameters of the one encoder, built when the model config asks for them
(`BertConfig.lora_rank` > 0, from the run's `lora` config section), so a scanned, sharded or
shared-layer encoder carries them exactly as it carries the weights they adapt: stacked on the
layer axis under `scan_layers`, one per shared group for ALBERT, and with the logical axis names of
their base matrix (A takes the input axes, B the output axes). They are `nnx.LoRAParam`s: the
fine-tuning objective trains them and the head, and the step keeps the base in its frozen part.

B starts at zero, so before the first step the model computes exactly what its base does. A starts
as PEFT's does (kaiming-uniform with a = sqrt(5) on the (r, in) matrix: U(-1/sqrt(in), 1/sqrt(in))),
so an adapter trained here and one trained with PEFT start from the same distribution.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from bertjax.errors import UserError

# Our name -> where the adapted map sits in a layer. Attention's q/k/v share one fused kernel
# ([H, 3, heads, head_dim]); each of them gets its own adapter, as PEFT puts one on each Linear.
TARGETS = ("query", "key", "value", "attention_output", "intermediate", "output")
QKV = ("query", "key", "value")
DEFAULT_TARGETS = "query,value"


class LoraConfigError(UserError, ValueError):
    """A `lora` section that cannot build adapters: the commands print it as one line."""


def parse_targets(text: str) -> tuple[str, ...]:
    """"query,value" -> ("query", "value"); "all" is every linear map of the layer. An unknown
    name ends in one line listing the valid ones."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if names == ["all"]:
        return TARGETS
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise LoraConfigError(
            f"lora.targets={text!r}: {', '.join(unknown) or 'no target'} matches no layer; "
            f"valid names: {', '.join(TARGETS)} (comma-separated) or all")
    # Canonical order, so the same set always builds the same tree.
    return tuple(t for t in TARGETS if t in names)


def check(rank: int, alpha: float, dropout: float, targets: str) -> tuple[str, ...]:
    if int(rank) <= 0:
        raise LoraConfigError(f"lora.rank={rank} must be a positive integer (8 is the LoRA "
                              "paper's GLUE setting)")
    if not float(alpha) > 0:
        raise LoraConfigError(f"lora.alpha={alpha} must be positive (the update is scaled by "
                              "alpha/rank)")
    if not 0.0 <= float(dropout) < 1.0:
        raise LoraConfigError(f"lora.dropout={dropout} must be in [0, 1)")
    return parse_targets(targets)


def _uniform(bound: float):
    def init(key, shape, dtype):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class Adapter(nnx.Module):
    """(alpha/r) * B(A(dropout(x))) for one linear map from `in_shape` (the trailing axes of x) to
    `out_shape`. A is in_shape + (r,), B is (r,) + out_shape."""

    def __init__(self, in_shape, out_shape, in_names, out_names, *, rank: int, alpha: float,
                 dropout: float, dtype, param_dtype, rngs: nnx.Rngs):
        fan_in = math.prod(in_shape)
        # A separate stream when the model has one, so adding adapters leaves every other
        # parameter's initialisation (a task head's, at the same seed) as it was without them.
        key = rngs.lora() if "lora" in rngs else rngs.params()
        self.a = nnx.LoRAParam(_uniform(1.0 / math.sqrt(fan_in))(
            key, (*in_shape, rank), param_dtype), out_sharding=(*in_names, None))
        self.b = nnx.LoRAParam(jnp.zeros((rank, *out_shape), param_dtype),
                               out_sharding=(None, *out_names))
        self.n_in = len(in_shape)
        self.scale = float(alpha) / int(rank)
        self.rate = float(dropout)
        self.dtype = dtype

    def __call__(self, x, keys):
        # A key is drawn only when there is dropout, so an adapter without it leaves every other
        # dropout site's mask as the base model draws it.
        key = keys() if self.rate > 0 else None
        if key is not None:
            keep = jax.random.bernoulli(key, 1.0 - self.rate, x.shape)
            x = jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))
        a = self.a[...].astype(self.dtype)
        b = self.b[...].astype(self.dtype)
        h = jnp.tensordot(x.astype(self.dtype), a, axes=self.n_in)
        return jnp.tensordot(h, b, axes=1) * jnp.asarray(self.scale, self.dtype)


def adapters(cfg, where: dict, *, rngs: nnx.Rngs) -> nnx.Dict | None:
    """The adapters of `cfg`'s targets among `where` (target -> (in_shape, out_shape, in_names,
    out_names)); None when the config has no LoRA or targets none of them."""
    if not cfg.lora_rank:
        return None
    chosen = [t for t in parse_targets(cfg.lora_targets) if t in where]
    if not chosen:
        return None
    return nnx.Dict({t: Adapter(*where[t], rank=cfg.lora_rank, alpha=cfg.lora_alpha,
                                dropout=cfg.lora_dropout, dtype=jnp.dtype(cfg.dtype),
                                param_dtype=jnp.dtype(cfg.param_dtype), rngs=rngs)
                     for t in chosen})


def add(lora, name: str, y, x, keys):
    """y = W0 x plus the update of target `name` when it has an adapter."""
    if lora is None or name not in lora:
        return y
    return y + lora[name](x, keys).astype(y.dtype)
