"""Joining the JAX cluster: the first thing every entrypoint does, before any other JAX call.

Three cases:
- an explicit coordinator (config `distributed.coordinator_address`, or the environment variables
  BERTJAX_COORDINATOR / BERTJAX_NUM_PROCESSES / BERTJAX_PROCESS_ID, which win over the config so one
  shared config can serve every worker);
- a Cloud TPU VM: JAX finds the coordinator and its process id by itself;
- otherwise one process, and nothing to join.
Afterwards every process prints its view of the topology and the views are checked to agree, so a
host that joined the wrong cluster, or thinks it is process 0 on its own, fails loudly at start-up
instead of hanging at the first collective.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from bertjax.errors import UserError

ENV_COORDINATOR = "BERTJAX_COORDINATOR"
ENV_NUM_PROCESSES = "BERTJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "BERTJAX_PROCESS_ID"
# Set to 1 to stay a single process on a machine that looks like a TPU VM.
ENV_SINGLE = "BERTJAX_SINGLE_PROCESS"
_TPU_ENV = ("TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID")


@dataclasses.dataclass(frozen=True)
class Topology:
    process_index: int
    process_count: int
    local_device_count: int
    global_device_count: int
    device_kind: str
    platform: str
    mode: str  # "single" | "coordinator" | "tpu"

    def __str__(self) -> str:
        return (f"process {self.process_index}/{self.process_count}: "
                f"{self.local_device_count} local / {self.global_device_count} global devices, "
                f"{self.device_kind} ({self.platform}), mode={self.mode}")


_topology: Topology | None = None


def _get(cfg: Any, name: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def on_tpu_vm(environ: Mapping[str, str] | None = None) -> bool:
    """True on a Cloud TPU VM: TPU runtime variables, or TPU device files (/dev/accel* on v2-v4,
    VFIO groups on v5e/v6e, counted only when libtpu is installed since VFIO is used elsewhere)."""
    environ = os.environ if environ is None else environ
    if any(environ.get(k) for k in _TPU_ENV):
        return True
    if glob.glob("/dev/accel[0-9]*"):
        return True
    return bool(glob.glob("/dev/vfio/[0-9]*")) and importlib.util.find_spec("libtpu") is not None


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer; set it to one") from None


def _explicit_settings(dist_cfg: Any, environ: Mapping[str, str]) -> tuple[str, int, int] | None:
    address = environ.get(ENV_COORDINATOR, "").strip() or str(_get(dist_cfg, "coordinator_address", ""))
    if not address:
        return None
    n = _int_env(environ, ENV_NUM_PROCESSES)
    n = int(_get(dist_cfg, "num_processes", 1)) if n is None else n
    i = _int_env(environ, ENV_PROCESS_ID)
    i = int(_get(dist_cfg, "process_id", 0)) if i is None else i
    if n < 1 or not 0 <= i < n:
        raise UserError(
            f"process id {i} of {n} processes is impossible; set {ENV_PROCESS_ID} "
            f"(or distributed.process_id) to 0..{max(n - 1, 0)} on each host")
    if ":" not in address:
        raise UserError(f"coordinator address {address!r} has no port; use HOST:PORT")
    return address, n, i


def _use_gloo_for_cpu() -> None:
    # Cross-process collectives on the CPU backend need an implementation; gloo needs no MPI.
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):
        pass


def _join(kwargs: dict[str, Any], where: str, timeout: int) -> None:
    # On a timeout XLA's client aborts the whole process from C++ (no Python exception), so a
    # watchdog ends it first with the one-line message; XLA is given a little longer.
    def give_up() -> None:
        print(f"error: {_join_failure(where, timeout, None)}", file=sys.stderr, flush=True)
        os._exit(2)

    watchdog = threading.Timer(timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout + 30)
    except RuntimeError as e:
        if "before any JAX" in str(e) or "only be called once" in str(e):
            raise UserError(
                f"cannot join the JAX cluster ({e}); call bertjax.train.distributed.initialize "
                "first in the program, before any other JAX call") from e
        raise UserError(_join_failure(where, timeout, e)) from e
    except Exception as e:  # XLA reports refused connections with its own exception types
        raise UserError(_join_failure(where, timeout, e)) from e
    finally:
        watchdog.cancel()


def _join_failure(where: str, timeout: int, e: BaseException | None) -> str:
    why = "not every process arrived" if e is None else (
        f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    return (f"could not join the JAX cluster {where} within {timeout}s ({why}); start the program "
            "on every host with the same coordinator and process count and distinct process ids, "
            "or raise distributed.initialization_timeout")


def _check(topo: Topology, expected_processes: int | None) -> None:
    if expected_processes is not None and topo.process_count != expected_processes:
        raise UserError(
            f"joined a cluster of {topo.process_count} processes but {expected_processes} were "
            "configured; make num_processes match the number of hosts started")
    if topo.process_count == 1:
        if topo.global_device_count != topo.local_device_count:
            raise UserError(
                f"one process sees {topo.global_device_count} global but {topo.local_device_count} "
                "local devices; start the program on every host")
        return
    kind_code = np.frombuffer(topo.device_kind.encode()[:16].ljust(16, b"\0"), np.uint8)
    mine = np.concatenate([
        np.array([topo.process_index, topo.local_device_count, topo.global_device_count], np.int64),
        kind_code.astype(np.int64)])
    views = np.asarray(multihost_utils.process_allgather(mine))
    ids = sorted(int(v) for v in views[:, 0])
    if ids != list(range(topo.process_count)):
        raise UserError(
            f"process ids {ids} are not 0..{topo.process_count - 1}; give every host a distinct id")
    if len({int(v) for v in views[:, 2]}) != 1:
        raise UserError(
            f"processes disagree on the global device count ({sorted(set(views[:, 2].tolist()))}); "
            "every host must run the same program with the same devices visible")
    if int(views[:, 1].sum()) != topo.global_device_count:
        raise UserError(
            f"local device counts {views[:, 1].tolist()} do not add up to "
            f"{topo.global_device_count} global devices; check each host's visible devices")
    if len({v.tobytes() for v in views[:, 3:]}) != 1:
        raise UserError("hosts have different accelerator kinds; use one kind of machine per run")


def initialize(dist_cfg: Any = None, *, environ: Mapping[str, str] | None = None,
               log: Callable[[str], None] | None = None) -> Topology:
    """Joins the cluster if there is one, prints and checks the topology, and returns it.

    Call it before any other JAX call. Calling it again in the same process returns the first
    result without re-joining.
    """
    global _topology
    if _topology is not None:
        return _topology
    environ = os.environ if environ is None else environ
    timeout = int(_get(dist_cfg, "initialization_timeout", 300))
    explicit = _explicit_settings(dist_cfg, environ)
    expected = None
    if explicit is not None:
        address, n, i = explicit
        expected = n
        mode = "coordinator"
        if n > 1:
            _use_gloo_for_cpu()
            _join(dict(coordinator_address=address, num_processes=n, process_id=i),
                  f"at {address} as process {i} of {n}", timeout)
    elif on_tpu_vm(environ) and environ.get(ENV_SINGLE, "") not in ("1", "true"):
        mode = "tpu"
        _join({}, "of this TPU slice", timeout)
    else:
        mode = "single"
    local = jax.local_devices()
    topo = Topology(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=len(local),
        global_device_count=jax.device_count(),
        device_kind=local[0].device_kind,
        platform=local[0].platform,
        mode=mode,
    )
    (log or (lambda s: print(s, flush=True)))(f"[bertjax] {topo}")
    _check(topo, expected)
    _topology = topo
    return topo
