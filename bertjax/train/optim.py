"""The BERT optimizers: global-norm clipping, Adam (optionally without bias correction, as in the
original), decoupled weight decay that skips LayerNorm parameters and biases, and a learning-rate
schedule with linear warmup. `optim.name="lamb"` adds LAMB's layer-wise trust ratio (You et al.,
2019, arXiv 1904.00962) between the decay and the learning rate, for batches of 32k-64k.

Weight-decay rule, applied to each parameter's key path (Variable wrappers ignored, names
lower-cased): a parameter is NOT decayed when
- its own name ends in "bias" (every bias, including the MLM output bias), or
- any component of its path contains "norm" (LayerNorm, layer_norm, attention_norm, ...), or
- any component has a token "ln" or "ln<digits>" between underscores (ln, ln_1, attn_ln).
Everything else (kernels, embeddings) is decayed.

Layer-wise learning-rate decay (`optim.layer_decay` = d < 1; ELECTRA's fine-tuning recipe: 0.8 for
small/base, 0.9 for large) gives a parameter at depth k the rate lr * d ** (L + 2 - k), L the
model's num_layers: depth 0 for anything under an `embeddings` component (tables, their LayerNorm,
the E->H projection), i + 1 for `.../encoder/layers/<i>/...`, L for DeBERTa's relative table
`.../encoder/relative/...` (every layer reads it), L + 2 for everything else (pooler,
task heads), whatever the path's first component (bert/, generator/). See `layer_depth`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax.errors import UserError

SCHEDULES = ("linear", "cosine", "constant", "rsqrt")
OPTIMIZERS = ("adamw", "lamb")
_LN_TOKEN = re.compile(r"^ln\d*$")


_MISSING = object()


def _get(cfg: Any, name: str, default: Any = _MISSING) -> Any:
    if default is _MISSING:
        return cfg[name] if isinstance(cfg, Mapping) else getattr(cfg, name)
    return cfg.get(name, default) if isinstance(cfg, Mapping) else getattr(cfg, name, default)


def _names(path: tuple) -> list[str]:
    out = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
            continue  # the array inside an nnx.Variable
        out.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))).lower())
    return out


def is_decayed(path: tuple) -> bool:
    """The weight-decay rule of the module docstring, for one jax key path."""
    names = _names(path)
    if not names or names[-1].endswith("bias"):
        return False
    for n in names:
        if "norm" in n or any(_LN_TOKEN.match(t) for t in n.split("_")):
            return False
    return True


def decay_mask(params: Any) -> Any:
    """A pytree of bools shaped like `params`: True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(lambda p, _: is_decayed(p), params)


def scale_by_adam_no_bias_correction(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam's update m / (sqrt(v) + eps) with raw moving averages, as in the original BERT
    AdamWeightDecayOptimizer. The state has the layout of optax.scale_by_adam, so a checkpoint
    loads whichever way `bias_correction` is set."""

    def init(params):
        zeros = lambda p: jnp.zeros_like(p)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                      mu=jax.tree.map(zeros, params), nu=jax.tree.map(zeros, params))

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, updates)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
        count = optax.safe_increment(state.count)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def _trust_ratio_axis(path: tuple) -> int | None:
    """The axis whose slices are separate "layers" inside one tensor: the fused q/k/v kernel
    [hidden, 3, heads, head_dim] holds what the original stores as three dense kernels, so each
    of q, k and v gets its own ratio there. None: the tensor is one layer."""
    return 1 if _names(path)[-2:] == ["qkv", "kernel"] else None


def scale_by_layer_trust_ratio(mask: Callable[[Any], Any]) -> optax.GradientTransformation:
    """LAMB's trust ratio: each layer's update u (Adam's step plus decay) is scaled by
    ||w|| / ||u||, its own parameter norm over its own update norm, so every layer moves by the
    same fraction of its weights whatever its gradient scale. A layer is a tensor, or a q/k/v
    slice of the fused attention kernel (_trust_ratio_axis). The ratio is 1 where either norm is
    0 (a zero-initialised tensor would otherwise never move), and 1 for the tensors `mask` leaves
    out: LayerNorm parameters and biases, as the BERT LAMB recipes (the paper's TF code and
    NVIDIA's) exclude them together with weight decay."""

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("the LAMB trust ratio needs the params")
        which = mask(params)

        def scale(path, u, w, on):
            if not on:
                return u
            axis = _trust_ratio_axis(path)
            over = tuple(a for a in range(u.ndim) if a != axis)
            w_norm = jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)), axis=over, keepdims=True))
            u_norm = jnp.sqrt(jnp.sum(jnp.square(u.astype(jnp.float32)), axis=over, keepdims=True))
            ratio = jnp.where((w_norm > 0) & (u_norm > 0), w_norm / jnp.maximum(u_norm, 1e-30), 1.0)
            return (u * ratio).astype(u.dtype)

        return jax.tree_util.tree_map_with_path(scale, updates, params, which), state

    return optax.GradientTransformation(init, update)


def check_layer_decay(value: Any) -> float:
    """optim.layer_decay as a float in (0, 1]; a UserError of one line for anything else."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < value <= 1.0
    if not ok:  # NaN fails the range test too
        raise UserError(f"optim.layer_decay={value!r} must be a number in (0, 1]: 1.0 is off, "
                        "ELECTRA fine-tunes with 0.8 (small/base) or 0.9 (large)")
    return float(value)


def layer_depth(path: tuple, num_layers: int, num_hidden_groups: int = 0) -> int | tuple[int, ...]:
    """The depth that sets a parameter's learning rate under layer decay (module docstring): an
    int, or for a scanned stack (`.../encoder/layers/<array>`, every layer on the leading axis)
    one depth per slice, (1, ..., L).

    These are google-research/electra's depths (model/optimization.py, _get_layer_lrs): 0 for
    "/embeddings/" and "/embeddings_project/", "encoder/layer_<i>/" at i + 1, "task_specific/" at
    L + 2, each key matched anywhere in a variable's name (so whatever scope holds the encoder,
    as here for generator/). That map has no depth L + 1, so its top layer already runs at
    d**2, not d: followed here. ELECTRA has no pooler (modeling.py: the pooled output is the
    first token's vector; its classifier is one dense layer under task_specific/), so the
    reference does not place ours; it sits between the last layer and the task head, where
    Hugging Face's ELECTRA classification head has its first dense layer, and gets the head's
    L + 2.

    Shared layers (num_hidden_groups = G > 0, ALBERT): entry g is run by layers l with
    l*G//L == g, and takes the depth of the last of them. Its update sums the gradients of every
    layer that runs it, the top one included; the first one's depth would hold ALBERT's single
    shared layer (G = 1), the whole encoder, at an unshared stack's bottom-layer rate d**(L+1)
    (0.055 of the rate at L = 12, d = 0.8) though it also does the top layer's work. G = L gives
    the unshared rule exactly."""
    names = _names(path)
    for i in range(len(names) - 1):
        if names[i] == "encoder" and names[i + 1] == "relative":
            # DeBERTa's relative table (and its LayerNorm) is read by every layer: like a
            # shared layer, it takes the depth of the last layer that reads it.
            return num_layers
        if names[i] == "encoder" and names[i + 1] == "layers":
            if i + 2 >= len(names) or not names[i + 2].isdigit():
                return tuple(range(1, num_layers + 1))
            entry = int(names[i + 2])
            groups = num_hidden_groups or num_layers
            runs = [layer for layer in range(num_layers) if layer * groups // num_layers == entry]
            if not runs:
                raise ValueError(f"parameter {'/'.join(names)}: layer entry {entry} is run by no "
                                 f"layer of num_layers={num_layers}, "
                                 f"num_hidden_groups={num_hidden_groups}")
            return runs[-1] + 1
    if "embeddings" in names:
        return 0
    return num_layers + 2


def scale_by_layer_decay(inner: optax.GradientTransformation, layer_decay: float,
                         num_layers: int, num_hidden_groups: int = 0
                         ) -> optax.GradientTransformation:
    """`inner` with each update leaf multiplied by layer_decay ** (L + 2 - depth) (`layer_depth`)
    after it: the same as giving each parameter its own learning rate, on top of whatever inner
    does (clipping, Adam, weight decay, LAMB's ratio, the schedule). Stateless, and the state is
    inner's own: a checkpoint loads whatever layer_decay the run that saved it had."""
    def factor(path, u):
        depth = layer_depth(path, num_layers, num_hidden_groups)
        f = float(layer_decay) ** (num_layers + 2 - np.asarray(depth, np.float64))
        if f.ndim:  # a scanned stack: one factor per layer along the leading axis
            if u.ndim == 0 or u.shape[0] != f.shape[0]:
                raise ValueError(f"parameter {'/'.join(_names(path))} of shape {u.shape} is not a "
                                 f"stack of num_layers={num_layers} layers")
            f = f.reshape((-1,) + (1,) * (u.ndim - 1))
        return u * jnp.asarray(f, u.dtype)

    def update(updates, state, params=None):
        updates, state = inner.update(updates, state, params)
        return jax.tree_util.tree_map_with_path(factor, updates), state

    return optax.GradientTransformation(inner.init, update)


@dataclasses.dataclass(frozen=True)
class _Schedule:
    name: str
    peak: float
    warmup: int
    num_steps: int
    end: float

    def __call__(self, step):
        step = jnp.asarray(step, jnp.float32)
        warm = self.peak * step / max(self.warmup, 1)
        span = max(self.num_steps - self.warmup, 1)
        frac = jnp.clip((step - self.warmup) / span, 0.0, 1.0)
        if self.name == "linear":
            after = self.peak + (self.end - self.peak) * frac
        elif self.name == "cosine":
            after = self.end + (self.peak - self.end) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
        elif self.name == "constant":
            after = jnp.full_like(step, self.peak)
        else:  # rsqrt, continuous with the warmup at its end
            after = self.peak * jax.lax.rsqrt(jnp.maximum(step, max(self.warmup, 1)) / max(self.warmup, 1))
        return jnp.where(step < self.warmup, warm, after)


def make_schedule(name: str, learning_rate: float, warmup_steps: int, num_steps: int,
                  end_lr_fraction: float = 0.0) -> Callable[[Any], jax.Array]:
    """Learning rate as a function of the update count (0 for the first update).

    Warmup rises linearly from 0 to `learning_rate` over `warmup_steps` (the first update gets 0, as
    in the original). After it: "linear" and "cosine" fall to `end_lr_fraction * learning_rate` at
    `num_steps` and stay there; "constant" stays at the peak; "rsqrt" decays as
    sqrt(warmup / step). The original BERT decayed over all `num_steps` counted from step 0; here the
    decay starts at the end of warmup, which differs by at most warmup/num_steps of the peak.
    """
    if name not in SCHEDULES:
        raise UserError(f"unknown learning-rate schedule {name!r}; set optim.schedule to one of "
                        f"{', '.join(SCHEDULES)}")
    if num_steps < 1:
        raise UserError(f"train.num_steps={num_steps} must be at least 1")
    if warmup_steps < 0:
        raise UserError(f"optim.warmup_steps={warmup_steps} must be >= 0")
    if name in ("linear", "cosine") and warmup_steps > num_steps:
        raise UserError(f"optim.warmup_steps={warmup_steps} exceeds train.num_steps={num_steps}; "
                        "lower the warmup (fine-tuning usually uses 10% of the steps)")
    if learning_rate < 0:
        raise UserError(f"optim.learning_rate={learning_rate} must be >= 0")
    if not 0.0 <= end_lr_fraction <= 1.0:
        raise UserError(f"optim.end_lr_fraction={end_lr_fraction} must be in [0, 1]")
    return _Schedule(name, float(learning_rate), int(warmup_steps), int(num_steps),
                     float(end_lr_fraction) * float(learning_rate))


def make_optimizer(optim_cfg: Any, num_steps: int, warmup_steps: int | None = None,
                   model_cfg: Any = None) -> tuple[optax.GradientTransformation, Callable]:
    """Returns (optimizer, schedule) for the `optim` section of the config; `warmup_steps` (a run
    plan's) replaces optim.warmup_steps when given. `model_cfg` (BertConfig, dict or ConfigDict:
    num_layers, num_hidden_groups) is needed when optim.layer_decay < 1.

    Chain: clip by global norm (skipped when clip_norm <= 0) -> Adam (bias correction per
    `optim.bias_correction`) -> decoupled weight decay on the params `decay_mask` selects ->
    [lamb only: the layer-wise trust ratio on the same params] -> scale by -schedule(count)
    [-> layer_decay < 1 only: each parameter's layer factor, `scale_by_layer_decay`].
    With bias correction and no clipping "adamw" is exactly optax.adamw.
    """
    name = str(_get(optim_cfg, "name"))
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; set optim.name to one of "
                        f"{', '.join(OPTIMIZERS)}")
    schedule = make_schedule(str(_get(optim_cfg, "schedule")), float(_get(optim_cfg, "learning_rate")),
                             int(_get(optim_cfg, "warmup_steps") if warmup_steps is None
                                 else warmup_steps), int(num_steps),
                             float(_get(optim_cfg, "end_lr_fraction")))
    b1, b2, eps = (float(_get(optim_cfg, k)) for k in ("b1", "b2", "eps"))
    if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0) or eps <= 0:
        raise UserError(f"Adam needs 0 <= b1, b2 < 1 and eps > 0 (got b1={b1}, b2={b2}, eps={eps})")
    weight_decay = float(_get(optim_cfg, "weight_decay"))
    clip_norm = float(_get(optim_cfg, "clip_norm"))
    parts = []
    if clip_norm > 0:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if bool(_get(optim_cfg, "bias_correction")):
        parts.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    else:
        parts.append(scale_by_adam_no_bias_correction(b1, b2, eps))
    # Present even at zero decay so the optimizer state keeps one layout across configs.
    parts.append(optax.add_decayed_weights(weight_decay, mask=decay_mask))
    if name == "lamb":
        parts.append(scale_by_layer_trust_ratio(decay_mask))
    parts.append(optax.scale_by_learning_rate(schedule))
    tx = optax.chain(*parts)
    # A config saved before the key existed has no layer decay.
    layer_decay = check_layer_decay(_get(optim_cfg, "layer_decay", 1.0))
    if layer_decay < 1.0:
        if model_cfg is None:
            raise ValueError("optim.layer_decay < 1 needs the model config (num_layers)")
        tx = scale_by_layer_decay(tx, layer_decay, int(_get(model_cfg, "num_layers")),
                                  int(_get(model_cfg, "num_hidden_groups", 0)))
    return tx, schedule
