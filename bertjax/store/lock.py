"""One job per workdir: a lease file, <workdir>/LOCK, that the holding job keeps fresh.

Two jobs in one workdir (a launcher re-run, a second terminal) would both resume from the same
checkpoint and write their steps into the same directory; Orbax does nothing against it. So the
training loop takes the lease before it writes anything and a second job refuses, naming the
holder's host, pid and start time.

A hold is stale, and is taken over, when
- it is on this host and its pid is not running (a killed job), or
- its heartbeat is older than `stale_after` seconds (a preempted VM, or a reused pid).
The holder rewrites the heartbeat every `heartbeat` seconds from a daemon thread; both come from
BERTJAX_LOCK_HEARTBEAT_S / BERTJAX_LOCK_STALE_S (defaults 30 s and 180 s), so a preempted VM's
workdir is free again three minutes after its last heartbeat.

Creation and take-over must be atomic, or two starting jobs could both win:
- local disks: the lease is created with O_CREAT | O_EXCL; a stale one is first renamed to a
  unique name (only one renamer succeeds) and removed;
- gs://: the lease is a GCS object written through the JSON API (google-cloud-storage, which
  Orbax needs anyway) with generation preconditions: create with ifGenerationMatch=0, take over
  and heartbeat with ifGenerationMatch=<the generation read>. TensorFlow's gfile has no
  preconditions, so it cannot do this.

In a multi-process run only process 0 takes the lease; the others learn the outcome through an
all-gather, so either every process goes on or every process stops with the same line.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from jax.experimental import multihost_utils

from bertjax.errors import UserError

LOCK_FILE = "LOCK"

_held: dict[str, "Hold"] = {}  # re-entrant within a process (pretrain -> loop.train)


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class _Local:
    def __init__(self, path: str):
        self.path = path

    def read(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f), None
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError):
            return {}, None  # unreadable (torn by a crash mid-write): treated as stale

    def create(self, record: dict) -> bool:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        return True

    def take_over(self, record: dict, _generation) -> bool:
        grave = f"{self.path}.stale-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, grave)  # exactly one of several racing jobs gets here
        except FileNotFoundError:
            pass
        else:
            os.unlink(grave)
        return self.create(record)

    def refresh(self, record: dict, _generation) -> bool:
        current, _ = self.read()
        if not current or current.get("token") != record["token"]:
            return False
        tmp = f"{self.path}.{record['token']}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, self.path)
        return True

    def release(self, token: str, _generation) -> None:
        current, _ = self.read()
        if current and current.get("token") == token:
            os.unlink(self.path)


class _Gcs:
    # google-cloud-storage (0.4 s to import) is imported in these methods only: a local workdir
    # never needs it.
    def __init__(self, url: str):
        from google.cloud import storage

        bucket, _, name = url[len("gs://"):].partition("/")
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            client = storage.Client.create_anonymous_client()  # tests' fake GCS
        else:
            client = storage.Client()
        self.blob_name = name
        self.bucket = client.bucket(bucket)

    def _blob(self):
        return self.bucket.blob(self.blob_name)

    def read(self):
        from google.api_core import exceptions

        blob = self._blob()
        try:
            data = blob.download_as_bytes()
        except exceptions.NotFound:
            return None, None
        try:
            return json.loads(data), blob.generation
        except ValueError:
            return {}, blob.generation

    def _write(self, record: dict, generation: int) -> int | None:
        from google.api_core import exceptions

        blob = self._blob()
        try:
            blob.upload_from_string(json.dumps(record), content_type="application/json",
                                    if_generation_match=generation)
        except exceptions.PreconditionFailed:
            return None
        return blob.generation

    def create(self, record: dict):
        return self._write(record, 0)

    def take_over(self, record: dict, generation):
        return self._write(record, generation)

    def refresh(self, record: dict, generation):
        return self._write(record, generation)

    def release(self, token: str, generation) -> None:
        from google.api_core import exceptions

        try:
            self._blob().delete(if_generation_match=generation)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            pass


class WorkdirLock:
    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = workdir.rstrip("/") + "/" + LOCK_FILE
        self.store = _Gcs(self.path) if workdir.startswith("gs://") else _Local(self.path)
        self.heartbeat = _env_float("BERTJAX_LOCK_HEARTBEAT_S", 30.0)
        self.stale_after = _env_float("BERTJAX_LOCK_STALE_S", 180.0)
        now = time.time()
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "start": now,
                       "heartbeat": now, "token": uuid.uuid4().hex}
        self.generation = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _stale(self, holder: dict) -> bool:
        if not holder or "pid" not in holder:
            return True
        if time.time() - float(holder.get("heartbeat", 0)) > self.stale_after:
            return True
        return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder["pid"]))

    def acquire(self) -> "WorkdirLock":
        for _ in range(5):  # a holder that releases while we look: look again
            got = self.store.create(self.record)
            if got:
                self.generation = got if not isinstance(got, bool) else None
                break
            holder, generation = self.store.read()
            if holder is None:
                continue
            if not self._stale(holder):
                raise UserError(
                    f"workdir {self.workdir} is in use by another job (host {holder.get('host')}, "
                    f"pid {holder.get('pid')}, started {_when(float(holder.get('start', 0)))}, "
                    f"last heartbeat {time.time() - float(holder.get('heartbeat', 0)):.0f}s ago); "
                    f"stop that job or use another --workdir (a hold is stale "
                    f"{self.stale_after:.0f}s after its last heartbeat, see {self.path})")
            got = self.store.take_over(self.record, generation)
            if got:
                self.generation = got if not isinstance(got, bool) else None
                break
        else:
            raise UserError(f"could not take {self.path}: other jobs keep taking it; start one job "
                            "per workdir")
        self._thread = threading.Thread(target=self._beat, name="bertjax-workdir-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            self.record["heartbeat"] = time.time()
            try:
                got = self.store.refresh(self.record, self.generation)
            except Exception:  # a storage hiccup: the next beat tries again
                continue
            if not got:
                # Taken over (we were stale, e.g. a long stall): say so; the rerun will sort it out.
                print(f"warning: lost the workdir lease {self.path} to another job", flush=True)
                return
            if not isinstance(got, bool):
                self.generation = got

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.store.release(self.record["token"], self.generation)
        except Exception:  # a lease left behind goes stale; never mask the run's own outcome
            pass


def _key(workdir: str) -> str:
    return workdir.rstrip("/") if "://" in workdir else os.path.abspath(workdir)


class Hold:
    """What `acquire` returns on every process; only process 0's holds the lease."""

    def __init__(self, key: str, lock: WorkdirLock | None):
        self.key, self.lock, self.depth = key, lock, 1


def acquire(workdir: str) -> Hold:
    """Takes (or re-enters) the lease on `workdir`.

    Every process must call it, the same number of times: the outcome is agreed on collectively
    in multi-process runs."""
    key = _key(workdir)
    if key in _held:
        _held[key].depth += 1
        return _held[key]
    lock, error = None, ""
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(key).acquire()
        except UserError as e:
            error = str(e)
            if jax.process_count() == 1:
                raise
    if jax.process_count() > 1:
        refused = multihost_utils.broadcast_one_to_all(np.array(bool(error)))
        if bool(refused):
            if error:
                raise UserError(error)
            raise UserError(f"process 0 could not take the lease on workdir {workdir}; see its "
                            "log for the job holding it")
    hold = Hold(key, lock)
    _held[key] = hold
    return hold


def release(hold: Hold | None) -> None:
    if hold is None:
        return
    hold.depth -= 1
    if hold.depth <= 0:
        _held.pop(hold.key, None)
        if hold.lock is not None:
            hold.lock.release()
