"""configs/tpu.py's per-chip batches are ones that compiled and fit, as recorded in docs/plan/.

Each docs/plan/SLICE-PRESET[-512]-{recipe,sweep}.jsonl is the raw output of `bertjax plan` for that
recipe (docs/tpu.md, "Will it fit"). The bound for each recipe comes from that file only: the
largest per-chip batch recorded there as compiled and fitting (for a sweep, its
largest_per_chip_batch), under the mesh, remat policy and sequence length the recipe uses now.
No compiling here; a recipe change that these records do not cover needs a new `bertjax plan` row.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest

from launch import slices

ROOT = Path(__file__).resolve().parents[1]
PLAN_DIR = ROOT / "docs" / "plan"
NAME = re.compile(r"(?P<slice>v\d+[a-z]*-\d+)-(?P<preset>base|large)(?P<long>-512)?-"
                  r"(?P<kind>recipe|sweep)\.jsonl")
MODEL = {"base": "L12-H768", "large": "L24-H1024"}
PLAN_FILES = sorted(PLAN_DIR.glob("*.jsonl"))


def _recipe_module():
    spec = importlib.util.spec_from_file_location("tpu_recipe_under_test",
                                                  ROOT / "configs" / "tpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(path: Path) -> list[dict]:
    # The JSON lines of `bertjax plan`; the table it prints after them is not JSON.
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_there_are_recorded_compiles():
    assert PLAN_FILES, f"no compile records in {PLAN_DIR}"
    for path in PLAN_FILES:
        assert NAME.fullmatch(path.name), f"{path.name}: not SLICE-PRESET[-512]-recipe|sweep.jsonl"


@pytest.mark.parametrize("path", PLAN_FILES, ids=lambda p: p.stem)
def test_recipe_batch_is_one_that_compiled_and_fit(path):
    m = NAME.fullmatch(path.name)
    assert m, path.name
    preset, seq = m["preset"], 512 if m["long"] else 128
    arg = f"{m['slice']}:{preset}" + (":512" if m["long"] else "")
    sl = slices.parse_slice(m["slice"])
    cfg = _recipe_module().get_config(arg)
    # data=-1 spans every chip the other axes leave; the batch is split over data*fsdp.
    assert cfg.mesh.tensor == 1
    mesh = {"data": sl.chips // cfg.mesh.fsdp, "fsdp": cfg.mesh.fsdp, "tensor": 1}
    per_chip = cfg.train.batch_size // (mesh["data"] * mesh["fsdp"])
    assert per_chip * mesh["data"] * mesh["fsdp"] == cfg.train.batch_size

    records = _records(path)
    rows = [r for r in records if "per_chip_batch" in r]
    summaries = [r for r in records if "largest_per_chip_batch" in r]
    assert rows, f"{path.name} has no compiled rows"
    for r in rows:  # the file is about this slice and recipe, compiled the way it runs now
        assert (r["chips"], r["topology"].split(":")[0]) == (sl.chips, sl.generation), r
        assert (r["model"], r["seq_len"], r["task"]) == (MODEL[preset], seq, "pretraining"), r
        assert r["mesh"] == mesh, (f"{path.name} was compiled with mesh {r['mesh']}; the recipe "
                                   f"now uses {mesh}: compile it again")
        assert (r["remat"], r["dtype"], r["attention"]["train"]) == (
            str(cfg.model.remat), str(cfg.model.dtype), str(cfg.model.attention_backend)), r
        assert r["grad_accum_steps"] == cfg.train.grad_accum_steps, r

    fitting = [r["per_chip_batch"] for r in rows if r.get("compiled") and r["fits"]]
    assert fitting, f"{path.name}: no batch compiled and fit; the recipe must not use it"
    assert per_chip <= max(fitting), (
        f"configs/tpu.py:{arg} runs {per_chip} per chip but the largest batch that compiled and "
        f"fit in {path.name} is {max(fitting)}")
    too_big = [r["per_chip_batch"] for r in rows if not r["fits"]]
    assert all(per_chip < b for b in too_big), (path.name, per_chip, too_big)
    if m["kind"] == "sweep":
        assert len(summaries) == 1, path.name
        largest = summaries[0]["largest_per_chip_batch"]
        assert largest in fitting and per_chip <= largest, (path.name, per_chip, largest)
        assert math.isclose(summaries[0]["hbm_gib"], rows[0]["hbm_gib"])


# -- the "will it fit" table in docs/tpu.md -------------------------------------------------------
FIT_TABLE_MARK = "<!-- fit table: `python tests/test_tpu_recipes.py` prints it from docs/plan -->"
FIT_SLICES = {"v4-8": "v4:2x2x1", "v5e-4": "v5e:2x2", "v5p-8": "v5p:2x2x1", "v6e-4": "v6e:2x2",
              "v4-16": "v4:2x2x2", "v5e-16": "v5e:4x4", "v5p-16": "v5p:2x2x2", "v6e-16": "v6e:4x4"}
FIT_HEAD = ("| slice | topology | hosts | model | seq | recipe batch per chip | mesh (data, fsdp, "
            "tensor) | GiB per chip at the recipe batch / HBM | largest per-chip batch that fits "
            "(step) | GiB per chip there | sweep compiles |")


def _fit_row(sl: str, preset: str, long: bool) -> str:
    stem = f"{sl}-{preset}" + ("-512" if long else "")
    recipe = PLAN_DIR / f"{stem}-recipe.jsonl"
    sweep = PLAN_DIR / f"{stem}-sweep.jsonl"
    swept = _records(sweep) if sweep.exists() else []
    rows = [r for r in (_records(recipe) if recipe.exists() else []) + swept
            if "per_chip_batch" in r]
    cells = [sl, FIT_SLICES[sl]]
    model = "Large" if preset == "large" else "Base"
    if not rows:
        return "| " + " | ".join(cells + ["", model, "512" if long else "128", "", "",
                                          "not compiled yet", "owed", "", ""]) + " |"
    r = rows[0]  # the recipe's batch when there is a recipe file, else the sweep's first compile
    m = r["mesh"]
    cells += [str(r["hosts"]), model, str(r["seq_len"]), str(r["per_chip_batch"]),
              f"{m['data']}, {m['fsdp']}, {m['tensor']}",
              f"{r['total_gib']:.2f} / {r['hbm_gib']}" if r.get("compiled") else "over HBM"]
    summary = [s for s in swept if "largest_per_chip_batch" in s]
    if summary:
        s = summary[0]
        at = {x["per_chip_batch"]: x for x in swept if "per_chip_batch" in x}
        best = s["largest_per_chip_batch"]
        cells += [f"{best} ({s['batch_step']})", f"{at[best]['total_gib']:.2f}",
                  str(len(at))]
    else:
        cells += ["owed", "", ""]
    return "| " + " | ".join(cells) + " |"


def fit_table() -> str:
    lines = [FIT_HEAD, "|---|---|---:|---|---:|---:|---|---:|---:|---:|---:|"]
    for sl in FIT_SLICES:
        for preset, long in (("base", False), ("large", False), ("base", True), ("large", True)):
            lines.append(_fit_row(sl, preset, long))
    return "\n".join(lines)


def test_the_fit_table_in_docs_is_the_records():
    text = (ROOT / "docs" / "tpu.md").read_text()
    assert FIT_TABLE_MARK in text, "docs/tpu.md lost its fit table"
    after = text.split(FIT_TABLE_MARK, 1)[1].lstrip("\n").split("\n\n", 1)[0]
    assert after.strip() == fit_table(), (
        "docs/tpu.md's fit table differs from docs/plan/: paste `python tests/test_tpu_recipes.py`")


if __name__ == "__main__":
    print(fit_table())
