"""The two layouts of the encoder's layers: per layer (".../encoder/layers/3/attention/...", what
checkpoints from unrolled models, Hugging Face and the original hold) and stacked (one array per
parameter with a leading layer axis, what `scan_layers` trains). Conversion is exact: stack and
index, on flat {key path tuple: array} dicts."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

_LAYERS = ("encoder", "layers")


def split_layer_key(key: tuple) -> tuple[tuple, tuple] | None:
    """(prefix up to .../encoder/layers, rest) or None for keys outside the layer stack."""
    for i in range(len(key) - 1):
        if tuple(key[i:i + 2]) == _LAYERS:
            return tuple(key[:i + 2]), tuple(key[i + 2:])
    return None


def _is_index(x: Any) -> bool:
    return isinstance(x, int) or (isinstance(x, str) and x.isdigit())


def is_stacked(flat: Mapping[tuple, Any]) -> bool:
    return any((s := split_layer_key(k)) is not None and s[1] and not _is_index(s[1][0]) for k in flat)


def per_layer(flat: Mapping[tuple, Any]) -> dict[tuple, Any]:
    """Stacked -> per layer (a no-op on per-layer dicts)."""
    out: dict[tuple, Any] = {}
    for k, v in flat.items():
        s = split_layer_key(k)
        if s is None or not s[1] or _is_index(s[1][0]):
            out[k] = v
            continue
        for i in range(v.shape[0]):
            out[s[0] + (i,) + s[1]] = v[i]
    return out


def stacked(flat: Mapping[tuple, Any], num_layers: int, stack=np.stack) -> dict[tuple, Any]:
    """Per layer -> stacked (a no-op on stacked dicts). A layer missing a parameter leaves that
    parameter out, so the caller's missing-key report names it."""
    out: dict[tuple, Any] = {}
    groups: dict[tuple, dict[int, Any]] = {}
    for k, v in flat.items():
        s = split_layer_key(k)
        if s is None or not s[1] or not _is_index(s[1][0]):
            out[k] = v
            continue
        groups.setdefault(s[0] + s[1][1:], {})[int(s[1][0])] = v
    for k, layers in groups.items():
        if sorted(layers) == list(range(num_layers)):
            out[k] = stack([layers[i] for i in range(num_layers)])
    return out
