"""Moving weights between a bertjax NNX model and the Hugging Face layout."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import traversals

from bertjax.errors import UserError
from bertjax.interop import hf_dir, layouts
from bertjax.model import layer_stack
from bertjax.model.bert import build_model
from bertjax.model.encoder import BertConfig


def flat_params(model: nnx.Module) -> dict[tuple, np.ndarray]:
    """The model's parameters by key path, always in the per-layer layout (scanned models
    included), which is what every checkpoint format here maps from."""
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return layer_stack.per_layer({k: np.asarray(v) for k, v in traversals.flatten_mapping(pure).items()})


def _model_layout(flat: dict[tuple, np.ndarray], current: dict) -> dict[tuple, np.ndarray]:
    if not layer_stack.is_stacked(current):
        return flat
    num_layers = next(v.shape[0] for k, v in current.items() if layer_stack.is_stacked({k: v}))
    return layer_stack.stacked(flat, num_layers)


def set_flat_params(model: nnx.Module, flat: dict[tuple, np.ndarray]) -> None:
    state = nnx.state(model, nnx.Param)
    current = traversals.flatten_mapping(nnx.to_pure_dict(state))
    flat = _model_layout(flat, current)
    merged = {k: flat.get(k, v) for k, v in current.items()}
    nnx.replace_by_pure_dict(state, traversals.unflatten_mapping(merged))
    nnx.update(model, state)


def model_from_flat(task: str, cfg: BertConfig, flat: dict[tuple, np.ndarray],
                    build=None) -> nnx.Module:
    """Builds the model straight from loaded weights: shapes come from nnx.eval_shape, so no
    initialiser runs (each would compile and run once, seconds on a CPU) unless a weight is
    missing and must keep a fresh initialisation. `build` makes the model when the registry's
    `build_model(task, cfg)` is not it (an ELECTRA pair with a shallower generator)."""
    build = build or (lambda: build_model(task, cfg))
    abstract = nnx.eval_shape(build)
    graphdef, state = nnx.split(abstract)
    wanted = traversals.flatten_mapping(nnx.to_pure_dict(state))
    flat = _model_layout(flat, wanted)
    if any(k not in flat for k in wanted):
        model = build()
        set_flat_params(model, flat)
        return model
    values = {k: jnp.asarray(flat[k], dtype=v.dtype) for k, v in wanted.items()}
    nnx.replace_by_pure_dict(state, traversals.unflatten_mapping(values))
    return nnx.merge(graphdef, state)


def param_shapes(task: str, cfg: BertConfig) -> dict[tuple, tuple]:
    abstract = nnx.eval_shape(lambda: build_model(task, cfg))
    flat = traversals.flatten_mapping(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    # Per-layer shapes whatever the model's layout: they are what weight files map to.
    return {k: tuple(v.shape) for k, v in layer_stack.per_layer(
        {k: np.empty(v.shape, np.bool_) for k, v in flat.items()}).items()}


def load_hf(path: str, task: str | None = None, allow_missing: bool = False, **overrides):
    """Reads an HF BERT directory into a bertjax model. Returns (model, cfg, task, report).

    Any bertjax parameter without an HF source is an error unless `allow_missing` (then it keeps its
    fresh initialisation and is listed in the report), so a partial load never passes silently."""
    hf_cfg = hf_dir.read_config(path)
    layout = layouts.for_hf_config(hf_cfg)
    task = task or layout.task_from_hf_config(hf_cfg)
    cfg = BertConfig.from_dict({**layout.config_from_hf(hf_cfg), **overrides},
                               what=f"{path}/config.json")
    params, report = layout.hf_to_ours(hf_dir.read_tensors(path), cfg, task,
                                       param_shapes(task, cfg))
    if report["missing"] and not allow_missing:
        raise UserError(f"{path} lacks weights for: {'; '.join(report['missing'])}")
    return model_from_flat(task, cfg, params), cfg, task, report


def to_hf_tensors(model: nnx.Module, cfg: BertConfig, task: str) -> dict[str, np.ndarray]:
    return layouts.for_arch(cfg.arch).ours_to_hf(flat_params(model), cfg, task)


def save_hf(model, cfg: BertConfig, task: str, out_dir: str, extra_files=(), id2label=None) -> None:
    config = layouts.for_arch(cfg.arch).config_to_hf(cfg, task, id2label)
    hf_dir.write_dir(out_dir, config,
                     to_hf_tensors(model, cfg, task), extra_files)
