"""`run --until_done`: carry one run through preemptions until the trainer writes WORKDIR/COMPLETED.

Every poll: finish if COMPLETED exists; if the TPU is gone (preempted, terminated, its queued
resource failed or suspended) delete and re-create it, set it up and start the job; if the TPU is
READY but the job is not running on every worker, stop the rest and start it again. The workdir is
never deleted or changed and every start is the same command, so the trainer resumes from the last
committed checkpoint there instead of starting over.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from bertjax.errors import UserError
from launch import gcloud
from launch.ops import Launcher, TpuState


@dataclasses.dataclass(frozen=True)
class Policy:
    poll_s: float = 120.0
    # Job exits on a healthy TPU without COMPLETED (a crash, not a preemption) before giving up.
    max_restarts: int = 3
    # gcloud failures in a row (create, setup, ssh, describe) before giving up.
    max_failures: int = 5
    # How long a stopped job gets to finish a checkpoint before it is killed.
    stop_grace_s: int = 120
    delete_when_done: bool = False


class UntilDone:
    def __init__(self, launcher: Launcher, spec: gcloud.CreateSpec, job: Sequence[str],
                 workdir: str, env: Mapping[str, str], policy: Policy):
        self.L = launcher
        self.spec = spec
        self.job = list(job)
        self.workdir = workdir
        self.env = dict(env)
        self.p = policy
        self.restarts = 0
        self.failures = 0
        self.recreations = 0

    def note(self, text: str) -> None:
        self.L.r.note(text)

    def run(self) -> int:
        if self.L.r.dry_run:
            self._plan()
            return 0
        while not self.poll():
            self.L.sleep(self.p.poll_s)
        return 0

    # -- one poll --------------------------------------------------------------------------------
    def poll(self) -> bool:
        """One look at the run; True once it has finished."""
        done = self.L.completed(self.workdir)
        if done:
            self._finish()
            return True
        st = self.L.state()
        if st.kind in ("ABSENT", "GONE"):
            self._attempt(lambda: self._recreate(st))
        elif st.kind == "READY":
            self._on_ready(st, done)
        elif st.kind == "UNKNOWN":
            self._failed(f"cannot tell the state of {self.L.t.name} ({st.detail})")
        else:
            self.note(f"{self.L.t.name}: {st.detail}; waiting")
        return False

    def _on_ready(self, st: TpuState, done: bool | None) -> None:
        ws = self.L.workers()
        if ws is None or len(ws) < max(st.workers, 1):
            answered = 0 if ws is None else len(ws)
            self._failed(f"only {answered} of {st.workers} workers answered over ssh")
            return
        states = sorted({s for s, _ in ws.values()})
        if states == ["running"]:
            self.failures = 0
            return
        if "missing" in states:
            self.note("the tree is missing on some workers: setting them up, then starting the job")
            self._attempt(self._setup_and_restart)
            return
        if done is None:
            # Not restarted blindly: a finished run would be started again for nothing.
            self._failed(f"GCS did not say whether {self.workdir}/COMPLETED exists")
            return
        if states == ["none"]:
            self.note("the job has not been started on this TPU: starting it")
            self._attempt(self._restart)
            return
        # Checked again: the job may have finished between the first look and the ssh.
        if self.L.completed(self.workdir):
            return
        self.restarts += 1
        detail = ", ".join(f"worker {w} {s} {d}".strip() for w, (s, d) in sorted(ws.items()))
        if self.restarts > self.p.max_restarts:
            raise UserError(
                f"the job stopped {self.restarts} times on a healthy TPU without writing "
                f"{self.workdir}/COMPLETED ({detail}); read the logs (python -m launch.tpu logs "
                f"--name={self.L.t.name} --zone={self.L.t.zone} --project={self.L.t.project}) "
                "and fix the cause, then run again")
        self.note(f"restart {self.restarts}/{self.p.max_restarts}: {detail}; the job resumes from "
                  "its last checkpoint")
        self._attempt(self._restart)

    # -- actions ---------------------------------------------------------------------------------
    def _recreate(self, st: TpuState) -> None:
        if st.kind == "GONE":
            self.recreations += 1
            self.note(f"{self.L.t.name} is {st.detail}: deleting and re-creating it "
                      f"(#{self.recreations}); {self.workdir} is kept and the job resumes from "
                      "its last checkpoint")
            self.L.delete(quiet=True)
        else:
            self.note(f"{self.L.t.name} does not exist: creating it")
        self.L.create(self.spec, wait=False)
        self.L.wait_ready(self.p.poll_s)
        self.L.setup()
        self.L.start(self.job, self.workdir, self.env)
        self.failures = 0

    def _restart(self) -> None:
        self.L.stop(self.p.stop_grace_s)
        self.L.start(self.job, self.workdir, self.env)
        self.failures = 0

    def _setup_and_restart(self) -> None:
        self.L.setup()
        self._restart()

    def _attempt(self, action) -> None:
        try:
            action()
        except UserError as e:
            self._failed(str(e))

    def _failed(self, why: str) -> None:
        self.failures += 1
        self.note(f"failure {self.failures}/{self.p.max_failures}: {why}")
        if self.failures >= self.p.max_failures:
            raise UserError(f"giving up after {self.failures} failures in a row; the last: {why}")

    def _finish(self) -> None:
        step = self.L.final_step(self.workdir)
        self.note(f"{self.workdir}/COMPLETED exists (final step {step}); "
                  f"{self.recreations} re-creations, {self.restarts} restarts")
        if self.p.delete_when_done:
            self.L.delete(quiet=True)
        else:
            t = self.L.t
            self.note(f"{t.name} is still up and billed; delete it with: python -m launch.tpu "
                      f"delete --name={t.name} --zone={t.zone} --project={t.project}"
                      + (" --queued" if t.queued else ""))

    # -- --dry_run -------------------------------------------------------------------------------
    def _plan(self) -> None:
        self.note(f"until-done: every {self.p.poll_s:g}s, finish when "
                  f"{self.workdir}/COMPLETED exists:")
        self.L.completed(self.workdir)
        self.note("otherwise look at the TPU and at the job on every worker:")
        self.L.state()
        self.L.workers()
        self.note("if the TPU is missing, preempted, terminated, or its queued resource failed: "
                  f"re-create it (the workdir {self.workdir} is kept; the job resumes from its "
                  "last checkpoint):")
        self.L.delete(quiet=True)
        self.L.create(self.spec, wait=False)
        self.L.wait_ready(self.p.poll_s)
        self.L.setup()
        self.L.start(self.job, self.workdir, self.env)
        self.note("if the TPU is READY but the job is not running on every worker (crash restarts "
                  f"at most {self.p.max_restarts}):")
        self.L.stop(self.p.stop_grace_s)
        self.L.start(self.job, self.workdir, self.env)
        if self.p.delete_when_done:
            self.note("once COMPLETED exists:")
            self.L.delete(quiet=True)
