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


def kill_at_random(start, n_kills: int, rng: random.Random, ref_start_s: float, ref_train_s: float,
                   workdir: str, remaining) -> list[dict]:
    """Starts the run `n_kills` times and SIGKILLs it each time at a random moment: even trials
    uniformly over the training phase that is left (steps, evals, async saves); odd trials
    uniformly over a whole run's life (mostly start-up and restore, as on a real preemptible VM).
    `remaining()` is the share of the run still to train. Returns one dict per trial saying
    where the kill landed (judged from the output and the files left behind)."""
    import glob
    import signal

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
        trials.append({"mode": mode, "at_s": round(at, 3), "killed": killed, "landed": where})
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
