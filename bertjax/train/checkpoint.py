"""Checkpoints with Orbax: resume (everything) and init-from (params only) are different things.

Layout of a run's workdir:
    <workdir>/checkpoints/<step>/state    train state {"step", "params", "opt_state"} (Orbax PyTree)
    <workdir>/checkpoints/<step>/data     input-pipeline position (JSON)
    <workdir>/checkpoints/<step>/config   {"config": the user's config, "plan": the run plan}
(the rest of a workdir, and every file name: store/workdir.py)
Layout of a params-only checkpoint (written by `save_params`, e.g. by the converters):
    <dir>/params              Orbax PyTree of the parameters (plain nested dicts)
    <dir>/model_config.json   the model section of the config
    <dir>/<extra files>       e.g. vocab.txt
A step counts only once Orbax has committed it: it writes into "<step>.orbax-checkpoint-tmp" and
renames when every item is complete (on object stores it writes commit_success.txt instead), so a
run killed mid-save resumes from the previous step. Paths may be local or any etils.epath URL
(gs://...).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from bertjax.errors import UserError
from bertjax.model import layer_stack
from bertjax.store import retries as storage_retries
from bertjax.store.workdir import CHECKPOINT_SUBDIR, MODEL_CONFIG_FILE, PARAMS_ITEM

ITEMS = ("state", "data", "config")
_ORBAX_TREE_FILE = "_METADATA"


def absolute(path: str | epath.PathLike) -> epath.Path:
    """Orbax refuses relative directories; local paths are made absolute, URLs kept as they are."""
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def one_line(e: BaseException, limit: int = 400) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def failure_cause(e: BaseException) -> str:
    """The cause of a storage failure, named first: TensorStore's messages put it last, past what
    one line can show ("" when there is nothing to add)."""
    text = str(e)
    if "No space left" in text:
        return "disk full (No space left on device); "
    gave_up = re.search(r"All (\d+) retry attempts failed", text)
    if gave_up:
        code = re.search(r"http_response_code='(\d+)'|HTTP response code (\d+)", text)
        curl = re.search(r"CURL error ([^\[\]]+)", text)
        what = (f"HTTP {code.group(1) or code.group(2)}" if code else
                " ".join(curl.group(1).split()) if curl else "errors")
        return f"storage {what} after {gave_up.group(1)} retries; "
    return ""


def _as_json(obj: Any, what: str) -> dict:
    if hasattr(obj, "to_json_best_effort"):  # an ml_collections ConfigDict
        obj = json.loads(obj.to_json_best_effort())
    try:
        json.dumps(obj)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what} must be JSON-serialisable: {e}") from e
    return dict(obj)


def _quiet_failed_save_noise() -> None:
    """After a failed async save Orbax leaves one unretrieved future per array (each logged by
    asyncio with the whole error) and, at exit, callbacks onto its closed event loop (printed as
    ignored exceptions). The failure is reported once, by our UserError; this drops the echoes."""
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(
                unraisable.exc_value):
            return
        previous(unraisable)

    sys.unraisablehook = hook


def _release_waiting_orbax_threads() -> None:
    """After a failed save, Orbax's background threads of that save go on waiting (up to its
    coordination timeout, many minutes) for signals the failed save will never send; they are
    not daemon threads, so the process printed its error line and then did not exit (seen on
    gs://, tests/test_faults_gcs.py). Each is cancelled first, so that the signal then sent only
    wakes it to return without running its step (no commit marker can be written by it).
    One process only: in a multi-process run the signals are shared with processes whose saves
    may still be going on."""
    if jax.process_count() != 1:
        return
    try:
        # Orbax's private module, hence inside the guard.
        from orbax.checkpoint._src.futures import future as ocp_future

        waiting = [t for t in threading.enumerate()
                   if isinstance(t, ocp_future._SignalingThread) and t.is_alive()]
        for t in waiting:
            t.cancel()
        for t in waiting:
            ocp_future.set_signals(t._receive_signals, operation_id=t._operation_id)
    except Exception:  # another Orbax: nothing to release, or not this way
        pass


# Orbax's replica-parallel save has every replica of a replicated array write one slice of it.
# Each slice is a separate device op dispatched from Python, so for small arrays the dispatches
# cost far more than the bytes: a tiny model replicated over 8 devices spent most of each save
# slicing (about 870 slice ops per save). Below this slice size one replica writes the array whole;
# Base- and Large-sized tables (megabytes per slice) keep the parallel write.
_MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 1 << 20
_array_handler_set = False


def _use_replica_parallel_only_for_large_slices() -> None:
    global _array_handler_set
    if not _array_handler_set:
        ocp.type_handlers.register_type_handler(
            jax.Array, ocp.type_handlers.ArrayHandler(
                min_slice_bytes_for_replica_parallel=_MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL),
            override=True)
        _array_handler_set = True


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """Saves and restores the train state, the data position and the resolved config together.

    Every process must call `save`, `restore` and `wait`. Saves are asynchronous by default: `save`
    returns once the arrays are copied off the devices. A failed background save is reported by
    the next `save`, `wait` or `close` as a UserError naming the step and the last good step.
    """

    def __init__(self, workdir: str | epath.PathLike, keep: int = 3, async_: bool = True):
        storage_retries.apply()
        _use_replica_parallel_only_for_large_slices()
        self.workdir = absolute(workdir)
        self.directory = self.workdir / CHECKPOINT_SUBDIR
        self._pending: int | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None,
            enable_async_checkpointing=async_,
            create=True,
            # Temporary dirs left by a killed run would otherwise sit there forever.
            cleanup_tmp_directories=True,
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        except OSError as e:
            raise UserError(f"cannot use checkpoint directory {self.directory} ({one_line(e)}); "
                            "check the path and its write permission") from e

    def _failed(self, steps: str, e: BaseException) -> UserError:
        _quiet_failed_save_noise()
        _release_waiting_orbax_threads()
        last = self.latest_step()
        remote = "://" in str(self.directory)
        where = ("the bucket's status, quota and your write access" if remote
                 else "free space and write permission there")
        return UserError(
            f"checkpoint save of step {steps} in {self.directory} failed ({failure_cause(e)}"
            f"{one_line(e)}); the last committed step is {last}. Check {where}, then rerun: "
            "training resumes from the last committed step")

    def save(self, step: int, state: Any, data_state: Mapping[str, Any],
             config_json: Mapping[str, Any], force: bool = False) -> bool:
        """Starts saving `step`; returns False if Orbax's policy skips it (already saved)."""
        data = _as_json(data_state, "data_state")
        config = _as_json(config_json, "config_json")
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data),
                                  config=ocp.args.JsonSave(config))
        previous = self._pending
        try:
            saved = self._manager.save(int(step), args=args, force=force)
        except UserError:
            raise
        except Exception as e:
            # Orbax first waits for the previous save, so its failure lands here too.
            which = f"{previous} or {step}" if previous is not None else str(step)
            raise self._failed(which, e) from e
        self._pending = int(step) if saved else previous
        return saved

    def wait(self) -> None:
        """Blocks until the pending save is committed; raises if it failed."""
        try:
            self._manager.wait_until_finished()
            self._manager.check_for_errors()
        except Exception as e:
            step, self._pending = self._pending, None
            raise self._failed(str(step), e) from e
        self._pending = None

    def latest_step(self) -> int | None:
        """The newest committed step on storage (None if there is none)."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict, dict]:
        """Loads (state, data_state, config) of `step` (None: the latest committed one).

        `abstract_state` is a pytree of jax.ShapeDtypeStruct carrying shardings for the current
        mesh (see mesh.with_shardings); the state comes back on that mesh, whatever mesh saved it.
        """
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise UserError(f"no committed checkpoint in {self.directory}; start without "
                                "resuming or point --workdir at the run to resume")
            step = steps[-1]
        if step not in steps:
            raise UserError(f"no committed checkpoint for step {step} in {self.directory}; "
                            f"available: {steps or 'none'}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore())
        try:
            out = self._manager.restore(step, args=args)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"checkpoint step {step} in {self.directory} does not fit this model "
                f"({one_line(e)}); resume with the model config it was saved with, or start a "
                "new workdir with init_from to load its params only") from e
        return out.state, dict(out.data or {}), dict(out.config or {})

    def close(self) -> None:
        """Waits for the pending save (raising if it failed) and releases Orbax's threads."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- params only


def _plain(tree: Any) -> Any:
    return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def save_params(directory: str | epath.PathLike, params: Any, model_config: Mapping[str, Any],
                extra_files: Mapping[str, bytes | str | epath.PathLike] | None = None,
                overwrite: bool = False) -> epath.Path:
    """Writes a params-only checkpoint (layout in the module docstring); all processes call it.

    `extra_files` maps a file name to bytes to write, or to a path to copy. Everything goes into
    "<dir>.partial" first, which is renamed to <dir> once complete.
    """
    storage_retries.apply()
    directory = absolute(directory)
    if directory.exists():
        if not overwrite:
            raise UserError(f"{directory} already exists; choose a new output directory or remove it")
    config = _as_json(model_config, "model_config")
    partial = directory.parent / f"{directory.name}.partial"
    primary = jax.process_index() == 0
    if primary:
        if partial.exists():
            partial.rmtree()
        partial.mkdir(parents=True)
    _barrier("bertjax_save_params_start")
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
        ckptr.save(partial / PARAMS_ITEM, args=ocp.args.StandardSave(_plain(params)))
    if primary:
        (partial / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name, content in (extra_files or {}).items():
            if isinstance(content, bytes):
                (partial / name).write_bytes(content)
            else:
                epath.Path(content).copy(partial / name)
        if directory.exists():
            directory.rmtree()
        partial.rename(directory)
    _barrier("bertjax_save_params_done")
    return directory


@dataclasses.dataclass
class LoadReport:
    """What `load_params` did. Keys are "/"-joined parameter paths."""

    source: str
    loaded: list[str]
    missing: list[str]  # in the model, not in the checkpoint: left to the caller's init
    unexpected: list[str]  # in the checkpoint, not in the model: ignored
    model_config: dict | None = None

    def summary(self, limit: int = 8) -> str:
        def few(keys):
            return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")

        lines = [f"loaded {len(self.loaded)} params from {self.source}"]
        if self.missing:
            lines.append(f"missing (freshly initialised) {len(self.missing)}: {few(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected (ignored) {len(self.unexpected)}: {few(self.unexpected)}")
        return "\n".join(lines)


def _key_name(k: Any) -> str:
    return str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))


def _norm(names: list[str]) -> str:
    # A Variable's array sits under a "value" key; plain-dict checkpoints have none.
    if names and names[-1] == "value":
        names = names[:-1]
    return "/".join(names)


def _resolve_source(ckpt_dir: epath.Path) -> tuple[epath.Path, tuple[str, ...], dict | None]:
    """Finds the Orbax tree to read: (tree dir, key prefix of the params in it, model config)."""
    if (ckpt_dir / PARAMS_ITEM / _ORBAX_TREE_FILE).exists():
        cfg_file = ckpt_dir / MODEL_CONFIG_FILE
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else None
        return ckpt_dir / PARAMS_ITEM, (), cfg
    step_dir = None
    if (ckpt_dir / "state" / _ORBAX_TREE_FILE).exists():
        step_dir = ckpt_dir
    else:
        root = ckpt_dir / CHECKPOINT_SUBDIR if (ckpt_dir / CHECKPOINT_SUBDIR).exists() else ckpt_dir
        if root.exists():
            steps = ocp.path.step.checkpoint_steps(root)
            if steps:
                step_dir = root / str(max(steps))
    if step_dir is None:
        raise UserError(
            f"{ckpt_dir} holds no bertjax checkpoint (neither a run workdir with committed steps nor a "
            f"params-only checkpoint with {PARAMS_ITEM}/ and {MODEL_CONFIG_FILE}); fix init_from")
    cfg = None
    cfg_file = step_dir / "config" / "metadata"
    if cfg_file.exists():
        cfg = json.loads(cfg_file.read_text()).get("plan", {}).get("model")
    return step_dir / "state", ("params",), cfg


@dataclasses.dataclass
class _Relaid:
    """A model leaf that the checkpoint holds in the other layer layout (model/layer_stack.py):
    `keys` are the saved leaves it comes from; `index` is None to stack them (a scanned model
    from a per-layer checkpoint) or the layer to take from one stacked leaf."""

    keys: list[str]
    index: int | None
    layers: int = 0  # the stacked leaf's layer count, when taking one layer from it

    def sources(self, v) -> list[tuple[str, tuple, Any]]:
        sharding = getattr(v, "sharding", None)
        if self.index is None:  # each saved layer is one slice of the stacked leaf
            inner = None
            if isinstance(sharding, jax.sharding.NamedSharding):
                inner = jax.sharding.NamedSharding(sharding.mesh,
                                                   jax.sharding.PartitionSpec(*sharding.spec[1:]))
            return [(k, tuple(v.shape[1:]), inner) for k in self.keys]
        outer = None
        if isinstance(sharding, jax.sharding.NamedSharding):
            outer = jax.sharding.NamedSharding(sharding.mesh,
                                               jax.sharding.PartitionSpec(None, *sharding.spec))
        return [(self.keys[0], (self.layers,) + tuple(v.shape), outer)]

    def combine(self, arrays: list, v):
        out = jnp.stack(arrays) if self.index is None else arrays[0][self.index]
        sharding = getattr(v, "sharding", None)
        return jax.device_put(out, sharding) if sharding is not None else out


def _relayout(saved: dict, wanted: dict) -> dict[str, _Relaid]:
    """Model keys that the checkpoint holds only in the other layer layout."""
    out: dict[str, _Relaid] = {}
    saved_t = {tuple(k.split("/")): k for k in saved}
    wanted_t = {tuple(k.split("/")): k for k in wanted if k not in saved}
    if not wanted_t:
        return out
    if layer_stack.is_stacked(wanted_t) and not layer_stack.is_stacked(saved_t):
        for wk, name in wanted_t.items():
            split = layer_stack.split_layer_key(wk)
            if split is None or not split[1]:
                continue
            n = wanted[name].shape[0]
            keys = ["/".join(split[0] + (str(i),) + split[1]) for i in range(n)]
            if all(k in saved for k in keys):
                out[name] = _Relaid(keys, None)
    elif layer_stack.is_stacked(saved_t) and not layer_stack.is_stacked(wanted_t):
        for wk, name in wanted_t.items():
            split = layer_stack.split_layer_key(wk)
            if split is None or len(split[1]) < 2 or not split[1][0].isdigit():
                continue
            src = "/".join(split[0] + split[1][1:])
            if src in saved:
                out[name] = _Relaid([src], int(split[1][0]), int(saved[src][1].shape[0]))
    return out


def _saved_leaves(meta: Any, prefix: tuple[str, ...]) -> dict[str, tuple[tuple[str, ...], Any]]:
    """"/"-joined key (below `prefix`) -> (full key path, leaf metadata) of a saved tree."""
    saved: dict[str, tuple[tuple[str, ...], Any]] = {}

    def collect(node: Any, keys: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                collect(v, keys + (str(k),))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                collect(v, keys + (str(i),))
        elif node is not None and hasattr(node, "shape"):
            if keys[: len(prefix)] == prefix:
                saved[_norm(list(keys[len(prefix):]))] = (keys, node)

    collect(meta, ())
    return saved


def _check_shapes(saved: dict, wanted: dict, ckpt_dir) -> None:
    mismatched = [f"{k}: checkpoint {tuple(saved[k][1].shape)} vs model {tuple(v.shape)}"
                  for k, v in wanted.items() if k in saved and tuple(saved[k][1].shape) != tuple(v.shape)]
    if mismatched:
        shown = "; ".join(mismatched[:6]) + (f"; +{len(mismatched) - 6} more" if len(mismatched) > 6 else "")
        raise UserError(f"init_from {ckpt_dir}: parameter shapes differ ({shown}); use a checkpoint "
                        "of the same model size and vocabulary, or change the model config to match")


def load_params(ckpt_dir: str | epath.PathLike, abstract_params: Any,
                fallback: Any = None) -> tuple[Any, LoadReport]:
    """Loads only parameters, for init-from (fine-tuning, continued pretraining).

    `ckpt_dir` is a run workdir (latest committed step), one step dir, or a params-only checkpoint.
    `abstract_params` is the model's param pytree of jax.ShapeDtypeStruct with shardings for the
    current mesh (arrays are accepted too: their shape, dtype and sharding are used). Matching is by
    key path; values are cast to the model's dtypes. Returns params shaped like `abstract_params`:
    missing leaves are taken from `fallback` (e.g. freshly initialised params) when given, else
    left abstract. A shape mismatch raises a UserError listing the keys and both shapes.
    """
    storage_retries.apply()
    ckpt_dir = absolute(ckpt_dir)
    tree_dir, prefix, model_cfg = _resolve_source(ckpt_dir)
    reader = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
    meta = reader.metadata(tree_dir)
    meta = getattr(getattr(meta, "item_metadata", meta), "tree", meta)

    saved = _saved_leaves(meta, prefix)
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
    wanted = {_norm([_key_name(k) for k in path]): leaf for path, leaf in flat}
    relaid = _relayout(saved, wanted)
    _check_shapes(saved, wanted, ckpt_dir)

    target: dict = {}

    def want(saved_key: str, shape, dtype, sharding) -> None:
        node = target
        keys = saved[saved_key][0]
        for part in keys[:-1]:
            node = node.setdefault(part, {})
        node[keys[-1]] = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    for k, v in wanted.items():
        if k in saved:
            want(k, v.shape, v.dtype, getattr(v, "sharding", None))
        elif k in relaid:
            for src, shape, sharding in relaid[k].sources(v):
                want(src, shape, v.dtype, sharding)
    restored: dict = {}
    if target:
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)
        restored = reader.restore(tree_dir, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))

    fallback_leaves = None
    if fallback is not None:
        fallback_leaves = [leaf for _, leaf in jax.tree_util.tree_flatten_with_path(fallback)[0]]
        if len(fallback_leaves) != len(flat):
            raise ValueError("fallback must have the structure of abstract_params")
    def restored_leaf(saved_key: str):
        node = restored
        for part in saved[saved_key][0]:
            node = node[part]
        return node

    leaves = []
    for i, (path, leaf) in enumerate(flat):
        k = _norm([_key_name(p) for p in path])
        if k in saved:
            leaves.append(restored_leaf(k))
        elif k in relaid:
            leaves.append(relaid[k].combine([restored_leaf(src) for src in relaid[k].keys], leaf))
        else:
            leaves.append(fallback_leaves[i] if fallback_leaves is not None else leaf)
    used = set(wanted) | {src for r in relaid.values() for src in r.keys}
    report = LoadReport(
        source=str(tree_dir),
        loaded=sorted(k for k in wanted if k in saved or k in relaid),
        missing=sorted(k for k in wanted if k not in saved and k not in relaid),
        unexpected=sorted(k for k in saved if k not in used),
        model_config=model_cfg,
    )
    return jax.tree_util.tree_unflatten(treedef, leaves), report


def load_parts(ckpt_dir: str | epath.PathLike, abstract_parts: Mapping[str, Any],
               fallback: Mapping[str, Any]) -> tuple[dict, LoadReport]:
    """`load_params` for a model whose parameters are split into parts ({"params", "frozen"}):
    each part is matched against the same checkpoint, and one report covers the whole model."""
    out, reports = {}, []
    for part, abstract in abstract_parts.items():
        out[part], report = load_params(ckpt_dir, abstract, fallback=fallback[part])
        reports.append(report)
    if len(reports) == 1:
        return out, reports[0]
    loaded = sorted(k for r in reports for k in r.loaded)
    return out, LoadReport(
        source=reports[0].source, loaded=loaded,
        missing=sorted(k for r in reports for k in r.missing),
        unexpected=sorted(set.intersection(*(set(r.unexpected) for r in reports))),
        model_config=reports[0].model_config)
