"""Device time per op class from a `bench --profile_dir=DIR` trace.

bench writes the compiled train step's HLO (DIR/train_step.hlo.txt) and a jax.profiler trace with
a Perfetto JSON copy (DIR/plugins/profile/<run>/perfetto_trace.json.gz). Every timed XLA op in the
trace carries its HLO instruction name (`args.hlo_op`, or the event name); the HLO says what that
instruction is, so its time goes to one class:

- collectives: all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute (and their
  async -start/-done halves);
- attention: cuDNN/flash attention custom calls, and the score and value einsums of the XLA path
  (their op names carry "bhqk", the [batch, heads, query, key] layout of attention/model);
- matmul: other dots, convolutions and cuBLAS/cuBLASLt GEMM custom calls, and fusions holding one;
- layernorm: fusions that hold an rsqrt (LayerNorm is the step's only reciprocal square root
  outside the optimizer);
- dropout_rng: the random-bit generation of dropout (threefry, bernoulli, uniform);
- optimizer: ops outside the forward (`jvp(...)`) and backward (`transpose(...)`) of the step:
  gradient clipping and the AdamW update;
- elementwise_other: everything else (GELU, softmax, residual adds, copies, loss).
The classes follow HLO names and op metadata, so they are a reading aid, not an exact ledger: a
fusion that holds a dot and its bias add counts as matmul.

    python -m bertjax.bench.profile_summary DIR [--steps=N]
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import re
import sys

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
CLASSES = ("matmul", "attention", "layernorm", "elementwise_other", "dropout_rng", "optimizer",
           "collectives")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"\s([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_RNG = ("threefry", "_bernoulli", "_uniform", "random_bits", "rng-bit-generator", "DropoutKeys")


def parse_hlo(text: str) -> tuple[dict, dict]:
    """({computation: [instruction rows]}, {instruction name: row}); a row holds the opcode,
    the called computations, the custom-call target and the op_name metadata."""
    computations: dict[str, list] = {}
    instructions: dict[str, dict] = {}
    current: list | None = None
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head and "=" not in line.split("(", 1)[0]:
            current = computations.setdefault(head.group(1), [])
            continue
        m = _INSTRUCTION.match(line)
        if not m or current is None:
            continue
        rest = m.group(2)
        op = _OPCODE.search(" " + rest)
        target = _TARGET.search(rest)
        op_name = _OP_NAME.search(rest)
        row = {"name": m.group(1), "opcode": op.group(1) if op else "",
               "calls": _CALLS.findall(rest), "target": target.group(1) if target else "",
               "op_name": op_name.group(1) if op_name else ""}
        current.append(row)
        instructions[row["name"]] = row
    return computations, instructions


def _contents(row: dict, computations: dict, seen: set | None = None) -> list[dict]:
    """The row and every instruction of the computations it calls, recursively."""
    seen = set() if seen is None else seen
    out = [row]
    for callee in row["calls"]:
        if callee in seen:
            continue
        seen.add(callee)
        for inner in computations.get(callee, []):
            out.extend(_contents(inner, computations, seen))
    return out


def classify(row: dict, computations: dict) -> str:
    inside = _contents(row, computations)
    opcodes = {r["opcode"] for r in inside}
    targets = " ".join(r["target"] for r in inside).lower()
    names = " ".join(r["op_name"] for r in inside)
    if any(op.startswith(c) for op in opcodes for c in COLLECTIVES):
        return "collectives"
    if "fmha" in targets or "flash" in targets or "attention" in targets:
        return "attention"
    has_dot = bool(opcodes & {"dot", "convolution"}) or "gemm" in targets or "cublas" in targets
    if has_dot:
        dot_names = " ".join(r["op_name"] for r in inside if r["opcode"] == "dot") or names
        return "attention" if "bhqk" in dot_names else "matmul"
    if any(k in names for k in _RNG) or "rng-bit-generator" in opcodes:
        return "dropout_rng"
    own = row["op_name"]
    if own.startswith("jit(") and "jvp(" not in own and "transpose(" not in own \
            and "/" in own:
        return "optimizer"
    if "rsqrt" in opcodes:
        return "layernorm"
    return "elementwise_other"


def latest_trace(profile_dir: str) -> str:
    paths = sorted(glob.glob(os.path.join(profile_dir, "plugins", "profile", "*",
                                          "perfetto_trace.json.gz")))
    if not paths:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {profile_dir}/plugins/profile")
    return paths[-1]


def summarize(profile_dir: str, steps: int = 1) -> dict:
    """Milliseconds per step and share of the timed op time, per class."""
    with open(os.path.join(profile_dir, "train_step.hlo.txt"), encoding="utf-8") as f:
        computations, instructions = parse_hlo(f.read())
    with gzip.open(latest_trace(profile_dir), "rt", encoding="utf-8") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    cache: dict[str, str] = {}
    totals = dict.fromkeys(CLASSES, 0.0)
    unmatched = 0
    for e in events:
        if e.get("ph") != "X":
            continue
        args = e.get("args") or {}
        name = args.get("hlo_op") or e.get("name", "")
        module = args.get("hlo_module", "")
        if module and "train_step" not in module:
            continue
        row = instructions.get(name)
        if row is None:
            unmatched += "hlo_op" in args
            continue
        if name not in cache:
            cache[name] = classify(row, computations)
        totals[cache[name]] += float(e.get("dur", 0.0))  # microseconds
    whole = sum(totals.values())
    return {
        "ms_per_step": {k: round(v / 1e3 / max(steps, 1), 4) for k, v in totals.items()},
        "share": {k: round(v / whole, 4) if whole else 0.0 for k, v in totals.items()},
        "timed_ms_per_step": round(whole / 1e3 / max(steps, 1), 4),
        "unmatched_ops": unmatched,
        "trace": latest_trace(profile_dir),
    }


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m bertjax.bench.profile_summary DIR [--steps=N]", file=sys.stderr)
        return 2
    steps = 1
    for a in argv[2:]:
        if a.startswith("--steps="):
            steps = int(a.split("=", 1)[1])
    print(json.dumps(summarize(argv[1], steps), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
