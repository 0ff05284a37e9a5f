"""The device mesh, the logical-axis rules that place parameters on it, and global batches.

The mesh always has the three axes ("data", "fsdp", "tensor"). The batch is split over data*fsdp;
parameters are split over fsdp (their "embed" dim) and tensor (vocab/heads/mlp dims). Optimizer
moments get exactly their parameter's sharding, so an update never moves data between devices.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from bertjax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical parameter axis -> mesh axis (None = replicated). Every logical name the model uses must be
# listed: flax leaves unknown names untouched, and an unknown name is not a mesh axis.
DEFAULT_RULES: tuple[tuple[str, str | None], ...] = (
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("pos", None),
    ("type", None),
    ("classes", None),
    # The stacked-layer axis of scan_layers: every device holds every layer.
    ("layers", None),
)


def _axis_sizes(mesh_cfg: Any, num_devices: int) -> tuple[int, int, int]:
    sizes = [int(mesh_cfg[a]) if isinstance(mesh_cfg, Mapping) else int(getattr(mesh_cfg, a))
             for a in MESH_AXES]
    shape = dict(zip(MESH_AXES, sizes))
    if sum(s == -1 for s in sizes) > 1:
        raise UserError(f"mesh {shape}: at most one axis may be -1 (fill); set the others to sizes")
    if any(s == 0 or s < -1 for s in sizes):
        raise UserError(f"mesh {shape}: axis sizes must be positive or -1 (fill)")
    fixed = math.prod(s for s in sizes if s != -1)
    if num_devices % fixed:
        raise UserError(
            f"mesh {shape} needs a multiple of {fixed} devices but there are {num_devices}; "
            f"choose mesh.data/fsdp/tensor whose product divides {num_devices}")
    if -1 in sizes:
        sizes[sizes.index(-1)] = num_devices // fixed
    elif fixed != num_devices:
        raise UserError(
            f"mesh {shape} uses {fixed} of the {num_devices} devices; set one axis to -1 "
            f"or make the product {num_devices}")
    return tuple(sizes)


def make_mesh(mesh_cfg: Any, devices: Sequence[Any] | None = None) -> Mesh:
    """Builds the ("data", "fsdp", "tensor") mesh over `devices` (default: all devices).

    `mesh_cfg` has integer fields data/fsdp/tensor; one of them may be -1 to take the remaining
    devices. Axes are Auto so XLA propagates shardings through the model. On multi-slice TPU the
    slices are stacked along "data", the only axis whose traffic (one gradient all-reduce per step)
    tolerates the slow inter-slice network.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = _axis_sizes(mesh_cfg, len(devices))
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    slices = sorted({getattr(d, "slice_index", 0) for d in devices})
    if len(slices) > 1:
        n = len(slices)
        if shape[0] % n:
            raise UserError(
                f"mesh data={shape[0]} must be a multiple of the {n} TPU slices; "
                f"set mesh.data to a multiple of {n} (or -1)")
        ici = (shape[0] // n, shape[1], shape[2])
        grid = mesh_utils.create_hybrid_device_mesh(ici, (n, 1, 1), devices)
        return Mesh(grid, MESH_AXES, axis_types=axis_types)
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def _rules_dict(rules: Any) -> dict[str, Any]:
    return dict(rules.items() if isinstance(rules, Mapping) else rules)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Any = DEFAULT_RULES) -> PartitionSpec:
    """Maps one parameter's logical axis names to a PartitionSpec on `mesh`.

    A name that is itself a mesh axis maps to that axis. A dim whose size the mesh axis does not
    divide is replicated instead (jit refuses uneven shardings of arguments; e.g. a 30,522-row
    vocabulary on tensor=4), and a mesh axis is used at most once per array.
    """
    table = _rules_dict(rules)
    used: set[str] = set()
    out: list[Any] = []
    for name, size in zip(names, shape):
        target = table.get(name, name if name in mesh.shape else None) if name is not None else None
        if name is not None and name not in table and name not in mesh.shape:
            raise ValueError(
                f"parameter axis name {name!r} has no sharding rule; add it to the rules "
                f"(known: {sorted(table)})")
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a in mesh.shape and a not in used)
        width = math.prod(mesh.shape[a] for a in axes)
        if not axes or size % width:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*out)


def _variable_names(v: nnx.Variable) -> tuple | None:
    meta = v.get_metadata()
    names = meta.get("out_sharding") or meta.get("sharding_names")
    return tuple(names) if names else None


def _path_key(path: tuple) -> tuple:
    """Key path without Variable wrappers, so a moment's path ends like its parameter's."""
    keys = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey) and k.name == "value":
            continue
        keys.append(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
    return tuple(keys)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: Any = DEFAULT_RULES) -> Any:
    """Returns a pytree of NamedSharding shaped like `abstract_state` (arrays or ShapeDtypeStructs).

    Leaves inside an `nnx.Variable` carrying logical axis names are placed by `rules`. Optax
    moments built from an `nnx.State` are Variables with the same names, so they follow
    automatically. A plain-array leaf (e.g. a moment of a pure-dict param tree) takes the sharding of
    the one named parameter of equal shape that shares the longest key-path suffix with it.
    Everything else (step counters, scalars, unnamed arrays) is replicated.
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    # Every suffix of every named leaf's key path -> candidates (shape, sharding).
    by_suffix: dict[tuple, list[tuple[tuple, NamedSharding]]] = {}

    def place_variable(v):
        names = _variable_names(v)
        shape = getattr(v.get_value(), "shape", None)
        if names is None or shape is None:
            return replicated
        if len(names) != len(shape):
            raise ValueError(f"axis names {names} do not match a parameter of shape {tuple(shape)}")
        return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))

    def first_pass(path, v):
        if isinstance(v, nnx.Variable):
            s = place_variable(v)
            key, shape = _path_key(path), tuple(getattr(v.get_value(), "shape", ()))
            for start in range(len(key)):
                by_suffix.setdefault(key[start:], []).append((shape, s))
            return v.replace(s)
        return v

    is_var = lambda x: isinstance(x, nnx.Variable)
    tree = jax.tree_util.tree_map_with_path(first_pass, abstract_state, is_leaf=is_var)

    def second_pass(path, x):
        if isinstance(x, nnx.Variable):
            return x
        shape = tuple(getattr(x, "shape", ()))
        if not shape:
            return replicated
        key = _path_key(path)
        for start in range(len(key)):  # longest suffix first; ambiguous suffixes are skipped
            hits = [s for shp, s in by_suffix.get(key[start:], ()) if shp == shape]
            if len(hits) == 1:
                return hits[0]
        return replicated

    return jax.tree_util.tree_map_with_path(second_pass, tree, is_leaf=is_var)


def with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """Pairs a `jax.eval_shape` result with `state_shardings` output: the restore target Orbax
    needs to load a checkpoint onto the current mesh."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_state, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch-leading arrays: rows split over data*fsdp, other dims whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def host_batch_slice(mesh: Mesh, global_batch_size: int,
                     process_index: int | None = None) -> tuple[int, int, int]:
    """Which rows of each global batch this process must feed.

    Returns (host_shard_index, num_host_shards, local_batch_size): the data pipeline should read
    shard `host_shard_index` of `num_host_shards` and yield `local_batch_size` rows. Processes whose
    devices hold the same batch rows (when a model axis spans hosts) get the same index and must
    feed identical data. `process_index` defaults to this process (another one's answer is what
    a plan for a multi-host slice checks).
    """
    n = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if global_batch_size % n:
        raise UserError(
            f"batch size {global_batch_size} is not divisible by data*fsdp={n}; "
            f"use a multiple of {n}")
    rows_of = batch_sharding(mesh).devices_indices_map((n,))
    per_process: dict[int, set[int]] = {}
    for d, idx in rows_of.items():
        per_process.setdefault(d.process_index, set()).add(idx[0].start or 0)
    groups = sorted({tuple(sorted(s)) for s in per_process.values()})
    me = jax.process_index() if process_index is None else process_index
    mine = tuple(sorted(per_process[me]))
    return groups.index(mine), len(groups), global_batch_size * len(mine) // n


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Turns this process's numpy rows into global jax arrays split over data*fsdp."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
