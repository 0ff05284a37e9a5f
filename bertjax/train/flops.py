"""Model FLOPs per token and model-FLOPs utilisation (MFU).

Counted per training token (forward + backward = 3x forward, 2 FLOPs per multiply-add):
    F = 6*L*(4*d^2 + 2*d*d_ff)      attention projections and feed-forward matmuls
      + 12*L*d*T                    attention scores and weighted values (T = sequence length)
      + 6*(d^2 + d*V) * f           MLM head transform and tied output layer, run on a fraction f
                                    of positions (f = P/T when the head sees only the P gathered ones)
Embedding lookups, LayerNorms, softmax, the pooler and NSP are left out (each is < 0.2% for Base).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Dense bf16 peak per chip, from the vendors' datasheets (not measured here). Matched in order as
# lower-case substrings of jax's `device.device_kind`, so the more specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756e12),
    ("h100", 989e12),  # SXM; "NVIDIA H100 80GB HBM3"
    ("h200", 989e12),
    ("a100", 312e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5", 459e12),  # v5p
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
)


def flops_per_token(num_layers: int, hidden_size: int, intermediate_size: int, vocab_size: int,
                    seq_len: int, num_predictions: int | None = None) -> float:
    """Training FLOPs per token by the formula in the module docstring.

    `num_predictions` is P, the masked positions per sequence the MLM head runs on; None means the
    head runs on every position (f = 1).
    """
    L, d, d_ff, V, T = num_layers, hidden_size, intermediate_size, vocab_size, seq_len
    f = 1.0 if num_predictions is None else num_predictions / T
    return float(6 * L * (4 * d * d + 2 * d * d_ff) + 12 * L * d * T + 6 * (d * d + d * V) * f)


def model_flops_per_token(model_cfg: Any, seq_len: int, num_predictions: int | None = None) -> float:
    """`flops_per_token` for the `model` section of the config."""
    def get(name):
        return model_cfg[name] if isinstance(model_cfg, Mapping) else getattr(model_cfg, name)

    return flops_per_token(get("num_layers"), get("hidden_size"), get("intermediate_size"),
                           get("vocab_size"), seq_len, num_predictions)


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of one device, or None for an unknown kind (CPU included)."""
    kind = device_kind.lower()
    for pattern, value in PEAK_BF16_FLOPS:
        if pattern in kind:
            return value
    return None


def mfu(tokens_per_second: float, flops_per_token_: float, num_devices: int,
        device_kind: str) -> float | None:
    """Achieved model FLOP/s over the peak of all devices; None when the peak is unknown."""
    peak = peak_flops(device_kind)
    if peak is None or num_devices <= 0:
        return None
    return tokens_per_second * flops_per_token_ / (peak * num_devices)


def electra_flops_per_token(model_cfg: Any, seq_len: int, num_masked: int,
                            generator_layers: int = 0) -> float:
    """ELECTRA's step per token: the discriminator's encoder with its head (dense H->H, then
    H->1) on every token, plus the generator's encoder (model_cfg's generator_* width,
    `generator_layers` deep, 0 = the same depth) with its MLM head (H_g->E transform and the tied
    E->V output) on the `num_masked` positions. The E->H projections add 6*E*H per network when
    E differs from H."""
    def get(name):
        return model_cfg[name] if isinstance(model_cfg, Mapping) else getattr(model_cfg, name)

    L, d, d_ff, V, T = (get("num_layers"), get("hidden_size"), get("intermediate_size"),
                        get("vocab_size"), seq_len)
    e = get("embedding_size") or d
    g = get("generator_hidden_size")
    g_ff = get("generator_intermediate_size") or 4 * g
    f = num_masked / T
    disc = 6 * L * (4 * d * d + 2 * d * d_ff) + 12 * L * d * T + 6 * (d * d + d)
    L_g = generator_layers or L
    gen = 6 * L_g * (4 * g * g + 2 * g * g_ff) + 12 * L_g * g * T + 6 * (g * e + e * V) * f
    projections = 6 * e * d * (e != d) + 6 * e * g * (e != g)
    return float(disc + gen + projections)
