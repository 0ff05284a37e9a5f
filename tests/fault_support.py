"""Shared pieces of the fault-injection suite (tests/test_faults*.py): the seed every random choice
comes from, and the results file docs/reliability.md is made from.

BERTJAX_FAULT_SEED fixes the seed (tests/conftest.py draws one per session when it is unset and
prints it in the report header); every assertion message carries it, so a failure replays with
    BERTJAX_FAULT_SEED=<seed> pytest tests/test_faults.py
BERTJAX_FAULT_RESULTS=DIR makes each fault class write DIR/<class>.json (trials, what was
compared, what survived); tests/fault_table.py turns those files into the table.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import time


def seed() -> int:
    return int(os.environ.get("BERTJAX_FAULT_SEED", "0"))


def rng(name: str) -> random.Random:
    """A generator per test, so one test's draws do not depend on which others ran."""
    return random.Random(f"{seed()}:{name}")


def tag() -> str:
    return f"[BERTJAX_FAULT_SEED={seed()}]"


def record(fault_class: str, **fields) -> None:
    out = os.environ.get("BERTJAX_FAULT_RESULTS")
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    fields = {"class": fault_class, "seed": seed(), "time": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                          time.gmtime()),
              **fields}
    tmp = os.path.join(out, f".{fault_class}.json.tmp")
    with open(tmp, "w") as f:
        json.dump(fields, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(out, f"{fault_class}.json"))


def workdir_files(path: str) -> list[str]:
    """Regular files under `path` (relative), the state a later run could pick up."""
    found = []
    for root, _, files in os.walk(path):
        found += [os.path.relpath(os.path.join(root, f), path) for f in files]
    return sorted(found)


# --------------------------------------------------------------------------- random SIGKILLs

TRAINING_LINE = "compiled and ran the first step"


class Watched:
    """A child process whose stdout lines are read (with arrival times) by a thread."""

    def __init__(self, cmd, cwd, env, log_path):
        import subprocess
        import threading

        self.t0 = time.monotonic()
        self._err = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"},
                                     stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, line.rstrip("\n")))

    def seen(self, text: str) -> float | None:
        for t, line in list(self.lines):
            if text in line:
                return t
        return None

    def finish(self, timeout=300) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        self._err.close()
        return rc

    def stdout(self) -> str:
        return "\n".join(line for _, line in self.lines)


def resumed_from(w: Watched) -> int | None:
    """The N of the run's `resumed from step N` line, or None when it printed none."""
    for _, line in list(w.lines):
        m = re.search(r"resumed from step (\d+)", line)
        if m:
            return int(m.group(1))
    return None


def _wait_then_kill(w: Watched, ready) -> bool:
    """Polls `ready()` while the run lives; SIGKILLs it the moment it holds. True if killed."""
    while not ready() and w.proc.poll() is None:
        time.sleep(0.002)
    killed = w.proc.poll() is None
    if killed:
        w.proc.send_signal(signal.SIGKILL)
    return killed


def kill_after_first_checkpoint(start, committed) -> dict:
    """The deterministic trial: SIGKILLs the run the moment its first checkpoint is committed
    (`committed()` > 0), then starts it again and SIGKILLs that run once it has trained a step.
    Returns what happened; the caller asserts that the second run resumed from the commit."""
    assert committed() == 0, "the deterministic kill wants a fresh workdir"
    w = start()
    killed = _wait_then_kill(w, lambda: committed() > 0)
    rc = w.finish()
    at_kill = committed()  # read after the death: nothing can commit in between any more
    again = start()
    reached = _wait_then_kill(again, lambda: again.seen(TRAINING_LINE) is not None)
    again.finish()
    return {"mode": "right after the first checkpoint appeared", "killed": killed,
            "exit": rc, "committed_at_kill": at_kill, "next_resumed_from": resumed_from(again),
            "next_reached_training": again.seen(TRAINING_LINE) is not None,
            "next_killed_in_training": reached}


def check_resumes(trials: list[dict], final: Watched, committed_before_final: int,
                  where: str) -> int:
    """What a run that ignored its checkpoints (and retrained from step 0) would fail: at least
    one kill landed after a commit; every start that got as far as training with a committed
    step on disk logged `resumed from step N` for exactly that step, the final run included; at
    least one logged N > 0. Returns how many resumes were checked."""
    assert any(t["killed"] and t["committed_at_kill"] > 0 for t in trials), (
        f"{where}: no kill landed after a commit")
    starts = [(t["committed_before"], t["resumed_from"], t["reached_training"]) for t in trials]
    starts.append((committed_before_final, resumed_from(final), True))
    checked = 0
    for before, got, reached in starts:
        if before > 0 and (reached or got is not None):
            assert got == before, (
                f"{where}: a start with step {before} committed logged resumed from {got}")
            checked += 1
        if before == 0:
            assert got is None, f"{where}: resumed from {got} with nothing committed"
    assert checked >= 1, f"{where}: no run resumed from a committed step"
    return checked


def kill_at_random(start, n_kills: int, rng: random.Random, ref_start_s: float, ref_train_s: float,
                   workdir: str, remaining, committed=lambda: 0) -> list[dict]:
    """Starts the run `n_kills` times and SIGKILLs it each time at a random moment: even trials
    uniformly over the training phase that is left (steps, evals, async saves); odd trials
    uniformly over a whole run's life (mostly start-up and restore, as on a real preemptible VM).
    `remaining()` is the share of the run still to train; `committed()` the last committed step.
    Returns one dict per trial saying where the kill landed (judged from the output and the files
    left behind), the committed step before the start and at the kill, and the step the run said
    it resumed from."""
    import glob

    trials = []
    start_s = ref_start_s  # replaced by a warm start-up as soon as one is seen
    for k in range(n_kills):
        share = max(remaining(), 0.05)

        def leftovers():
            # Temporary dirs of a save (Orbax) or of a best checkpoint (ours).
            return (set(glob.glob(os.path.join(workdir, "**", "*orbax-checkpoint-tmp*"),
                                  recursive=True)),
                    set(glob.glob(os.path.join(workdir, "**", "*.partial"), recursive=True)))

        before_tmp, before_partial = leftovers()
        committed_before = committed()
        w = start()
        if k % 2 == 1:
            mode, at = "uniform over the run", rng.uniform(0.0, start_s + ref_train_s * share)
            while time.monotonic() - w.t0 < at and w.proc.poll() is None:
                time.sleep(0.01)
        else:
            mode = "uniform over training"
            while w.seen(TRAINING_LINE) is None and w.proc.poll() is None:
                time.sleep(0.01)
            began = w.seen(TRAINING_LINE) or 0.0
            if w.seen(TRAINING_LINE) is not None:
                # The reference compiled from cold; later starts read the compile cache.
                start_s = began
            at = began + rng.uniform(0.0, ref_train_s * share)
            while time.monotonic() - w.t0 < at and w.proc.poll() is None:
                time.sleep(0.005)
        killed = w.proc.poll() is None
        if killed:
            w.proc.send_signal(signal.SIGKILL)
        rc = w.finish()
        committed_at_kill = committed()
        tmp, partial = leftovers()
        # A leftover of an earlier kill is cleaned up at start-up; only new ones say where we were.
        tmp, partial = tmp - before_tmp, partial - before_partial
        if not killed:
            where = f"missed: the run had ended (exit {rc})"
        elif tmp:
            where = "during an async checkpoint save"
        elif partial:
            where = "during a best-checkpoint write"
        elif w.seen(TRAINING_LINE) is not None:
            where = "training"
        elif w.seen("resumed from step") is not None:
            where = "after restore, before the first step"
        else:
            where = "start-up (imports, data checks, restore)"
        trials.append({"mode": mode, "at_s": round(at, 3), "killed": killed, "landed": where,
                       "committed_before": committed_before,
                       "committed_at_kill": committed_at_kill,
                       "resumed_from": resumed_from(w),
                       "reached_training": w.seen(TRAINING_LINE) is not None})
    return trials


def logged_losses(metrics_jsonl: str) -> list[tuple[int, float]]:
    """Every (step, loss) line, repeats included: steps re-run after a resume must match too."""
    rows = []
    with open(metrics_jsonl) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the line a kill cut short
            if "train/loss" in row:
                rows.append((int(row["step"]), float(row["train/loss"])))
    return rows
