"""Turns the fault suite's result files into the table of docs/reliability.md.

    BERTJAX_FAULT_RESULTS=/tmp/faults pytest -n 2 tests/test_faults_*.py
    python tests/fault_table.py /tmp/faults
"""
from __future__ import annotations

import glob
import json
import os
import sys

ORDER = ["sigkill_pretrain", "sigkill_finetune", "best_after_resume", "sigterm_two_processes",
         "data_damage", "full_disk_local", "gcs_transient", "gcs_persistent_write",
         "gcs_persistent_read", "lock_local", "lock_gcs", "cli_pretrain",
         "cli_finetune"]


def _numbers(r: dict) -> str:
    parts = []
    if "kills" in r:
        landed: dict[str, int] = {}
        for k in r["kills"]:
            landed[k["landed"]] = landed.get(k["landed"], 0) + 1
        parts.append("kills landed: " + ", ".join(f"{n}x {w}" for w, n in landed.items()))
    for key, label in (("loss_rows_compared", "loss lines compared"),
                       ("max_loss_diff", "max loss diff"), ("max_param_diff", "max param diff"),
                       ("max_best_param_diff", "max best-param diff"),
                       ("saved_step", "saved step"), ("last_committed", "last committed step"),
                       ("faults_served", "faults served"), ("faults_retried", "retried"),
                       ("restore_faults_served", "restore read faults served"),
                       ("restore_faults_retried", "retried"),
                       ("requests_seen", "requests seen"), ("seconds", "run s"),
                       ("rerun_seconds", "rerun s"), ("unbroken_seconds", "unbroken run s")):
        if key in r:
            parts.append(f"{label} {r[key]:g}" if isinstance(r[key], float) else
                         f"{label} {r[key]}")
    if "best" in r and isinstance(r["best"], dict):
        parts.append(f"best step {r['best']['step']} ({r['best']['metric']}="
                     f"{r['best']['value']:.4f}) as unbroken")
    if "results" in r:
        parts.append("; ".join(f"{x['kind']}: stopped after {x['batches_before']} good batches"
                               for x in r["results"]))
    return "; ".join(parts)


def table(directory: str) -> str:
    rows = {}
    for path in glob.glob(os.path.join(directory, "*.json")):
        r = json.load(open(path))
        rows[r["class"]] = r
    lines = ["| fault class | how injected | trials | what survived | numbers (this run) |",
             "|---|---|---|---|---|"]
    for name in ORDER + sorted(set(rows) - set(ORDER)):
        if name not in rows or name == "hash_cost":
            continue
        r = rows[name]
        cells = [str(r.get(k, "")).replace("|", "/") for k in ("injected", "trials", "survived")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {cells[2]} | {_numbers(r)} |")
    seeds = sorted({r["seed"] for r in rows.values()})
    lines.append("")
    lines.append(f"Seed(s): {', '.join(map(str, seeds))}; written {max(r['time'] for r in rows.values())}.")
    if "hash_cost" in rows:
        h = rows["hash_cost"]
        lines.append(f"Shard check cost: {h['bytes'] / 1e6:.0f} MB hashed in {h['seconds']:.3f} s "
                     f"= {h['mb_per_second']:.0f} MB/s (page-cached local file, one core).")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
