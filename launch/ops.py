"""The launcher's operations on one TPU: each issues gcloud commands through a Runner."""
from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from bertjax.errors import UserError
from launch import gcloud, packing, remote
from launch.runner import Result, Runner

# Node and queued-resource states, sorted into what the launcher does about them.
NODE_READY = {"READY"}
NODE_GONE = {"PREEMPTED", "TERMINATED", "STOPPED"}
QUEUED_ACTIVE = {"ACTIVE"}
QUEUED_GONE = {"FAILED", "SUSPENDED"}
# Consecutive failures to read a TPU's state before waiting for it is given up.
UNKNOWN_LIMIT = 5
_NOT_FOUND = re.compile(r"NOT_FOUND|not found|does not exist", re.I)
_NO_OBJECT = re.compile(r"matched no objects|No URLs matched|not found|does not exist", re.I)


@dataclasses.dataclass(frozen=True)
class TpuState:
    """kind: READY (usable), PENDING (wait), GONE (preempted or failed: delete and re-create),
    ABSENT (nothing there: create), UNKNOWN (gcloud failed for another reason: wait, do nothing)."""

    kind: str
    detail: str = ""
    workers: int = 0


def classify(queued: bool, queued_state: str | None, node_state: str | None,
             workers: int = 0) -> TpuState:
    """Pure decision from the states gcloud reports; None = that resource does not exist."""
    if queued:
        if queued_state is None:
            return TpuState("ABSENT", "no queued resource")
        if queued_state in QUEUED_GONE:
            return TpuState("GONE", f"queued resource {queued_state}")
        if queued_state not in QUEUED_ACTIVE:
            return TpuState("PENDING", f"queued resource {queued_state}")
        if node_state is None:
            return TpuState("PENDING", "queued resource ACTIVE, node not visible yet")
    elif node_state is None:
        return TpuState("ABSENT", "no TPU VM")
    if node_state in NODE_READY:
        return TpuState("READY", node_state, workers)
    if node_state in NODE_GONE:
        return TpuState("GONE", f"node {node_state}")
    return TpuState("PENDING", f"node {node_state}")


def check_workdir(workdir: str) -> str:
    if not re.fullmatch(r"gs://[a-z0-9][-_.a-z0-9]*[a-z0-9]/.+", workdir or ""):
        raise UserError(
            f"--workdir={workdir!r} must be a folder in a GCS bucket, e.g. gs://BUCKET/runs/base: "
            "the TPU VMs are deleted after preemption and every host must see the same workdir")
    return workdir.rstrip("/")


class Launcher:
    def __init__(self, target: gcloud.Target, runner: Runner, root: Path = packing.ROOT,
                 tarball: Path = packing.TARBALL, sleep: Callable[[float], None] = time.sleep):
        target.validate()
        self.t = target
        self.r = runner
        self.root = root
        self.tarball = tarball
        self.sleep = sleep

    # -- helpers ---------------------------------------------------------------------------------
    def _must(self, res: Result, what: str) -> Result:
        if not res.ok:
            why = res.last_error_line() if res.err.strip() else (
                f"gcloud exited with code {res.rc} (its message is above)")
            raise UserError(f"{what} failed: {why}; fix that and run the command again")
        return res

    def _ssh(self, command: str, what: str, capture: bool = False) -> Result:
        return self._must(self.r.run(gcloud.ssh_all(self.t, command), capture=capture), what)

    # -- the TPU ---------------------------------------------------------------------------------
    def create(self, spec: gcloud.CreateSpec, wait: bool = True, poll_s: float = 60) -> None:
        self._must(self.r.run(gcloud.create(self.t, spec)), f"creating {self.t.name}")
        if self.t.queued and wait:
            self.wait_ready(poll_s)

    def _describe(self, argv: list[str]) -> tuple[dict | None, str]:
        """(parsed JSON, or None when the resource does not exist; "" or why gcloud failed)."""
        res = self.r.run(argv, capture=True)
        if res.ok:
            try:
                return json.loads(res.out or "{}"), ""
            except json.JSONDecodeError:
                return None, "gcloud printed no JSON"
        return None, "" if _NOT_FOUND.search(res.err) else res.last_error_line()

    def state(self) -> TpuState:
        qstate = None
        if self.t.queued:
            q, failed = self._describe(gcloud.describe_queued(self.t))
            if failed:
                return TpuState("UNKNOWN", f"describing the queued resource failed: {failed}")
            qstate = None if q is None else str((q.get("state") or {}).get("state", "UNKNOWN"))
            if qstate not in QUEUED_ACTIVE and not self.r.dry_run:
                return classify(True, qstate, None)
        node, failed = self._describe(gcloud.describe_node(self.t))
        if failed:
            return TpuState("UNKNOWN", f"describing the TPU VM failed: {failed}")
        nstate = None if node is None else str(node.get("state", "UNKNOWN"))
        workers = len((node or {}).get("networkEndpoints") or [])
        return classify(self.t.queued, qstate, nstate, workers)

    def wait_ready(self, poll_s: float, timeout_s: float | None = None) -> TpuState:
        if self.r.dry_run:
            self.r.note(f"then poll every {poll_s:g}s until the TPU is READY:")
            self.state()
            return TpuState("READY")
        start, last, unknown = time.monotonic(), "", 0
        while True:
            st = self.state()
            if st.detail != last:
                self.r.note(f"{self.t.name}: {st.kind} ({st.detail})")
                last = st.detail
            if st.kind == "READY":
                return st
            unknown = unknown + 1 if st.kind == "UNKNOWN" else 0
            if unknown >= UNKNOWN_LIMIT:
                raise UserError(f"{st.detail} ({unknown} times in a row); check `gcloud auth list`, "
                                "the project and the zone")
            if st.kind in ("GONE", "ABSENT"):
                raise UserError(f"{self.t.name} is {st.detail} while waiting for it; "
                                "delete it and create it again (or use run --until_done)")
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise UserError(f"{self.t.name} was not READY after {timeout_s:g}s ({st.detail})")
            self.sleep(poll_s)

    def delete(self, quiet: bool) -> None:
        self._must(self.r.run(gcloud.delete(self.t, quiet)), f"deleting {self.t.name}")

    # -- code and environment on the workers -----------------------------------------------------
    def sync(self) -> None:
        if self.r.dry_run:
            self.r.note("pack the files git lists (tracked + untracked, not ignored) into "
                        f"{self.tarball}")
            sync_id = "TREE_SHA256"
        else:
            n, size, sync_id = packing.pack(self.root, self.tarball)
            self.r.note(f"packed {n} files, {size / 2**20:.1f} MiB, tree {sync_id}")
            if size > packing.WARN_BYTES:
                self.r.note("that is large: is there data or output in the tree that "
                            ".gitignore should exclude?")
        self._must(self.r.run(gcloud.scp_all(self.t, str(self.tarball), remote.TARBALL)),
                   "copying the tree to the workers")
        self._ssh(remote.sync(sync_id), "unpacking the tree on the workers")

    def setup(self) -> None:
        self.sync()
        self._ssh(remote.setup(), "installing the pinned requirements on the workers")

    # -- the job ---------------------------------------------------------------------------------
    def start(self, job: Sequence[str], workdir: str, env: Mapping[str, str]) -> None:
        self._ssh(remote.start(job, workdir, env), "starting the job on the workers")

    def stop(self, grace_s: int) -> None:
        self._ssh(remote.stop(grace_s), "stopping the job on the workers")

    def workers(self) -> dict[str, tuple[str, str]] | None:
        """worker -> (running|exited|none|missing, detail), or None when ssh failed."""
        res = self.r.run(gcloud.ssh_all(self.t, remote.alive()), capture=True)
        if self.r.dry_run:
            return {}
        found = remote.parse_alive(res.out)
        return found if (res.ok or found) else None

    def logs(self, lines: int, follow: bool) -> None:
        self._ssh(remote.logs(lines, follow), "reading the logs")

    def completed(self, workdir: str) -> bool | None:
        """True once the trainer wrote WORKDIR/COMPLETED; None when GCS could not be asked."""
        res = self.r.run(gcloud.storage_ls(f"{workdir}/COMPLETED", self.t.project), capture=True)
        if res.ok:
            return not self.r.dry_run
        return False if _NO_OBJECT.search(res.err) else None

    def final_step(self, workdir: str) -> str:
        """The step the trainer wrote into COMPLETED ({"step": N, ...}), or "?"."""
        res = self.r.run(gcloud.storage_cat(f"{workdir}/COMPLETED", self.t.project), capture=True)
        try:
            return str(json.loads(res.out)["step"])
        except (ValueError, KeyError, TypeError):
            return res.out.strip() or "?"
