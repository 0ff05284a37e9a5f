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
