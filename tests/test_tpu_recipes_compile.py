"""Every configs/tpu.py recipe (each preset at its longest sequence) compiles, in the suite, for a TPU slice of 4 hosts: v5e-16 (v5e:4x4,
16 chips, fsdp 4 across each host's chips). Each compile is the real train step as `bertjax plan`
builds it (tools/plan.py's Planner: the recipe's mesh, remat policy, dtype, splash attention and
per-chip batch), with only model.num_layers cut to 1 to keep it affordable on a CPU.

A recipe whose mesh no longer builds, whose step no longer partitions (a Mosaic kernel outside
shard_map), or whose per-chip batch overflows a chip even at one layer fails here. The full-depth
memory of each recipe is checked against docs/plan/ by test_tpu_recipes.py. Every preset a family
issue adds to configs/tpu.py's PER_CHIP_BATCH joins this test by itself, and each member's own
recipe (MEMBERS: RoBERTa, ALBERT, ELECTRA with both its networks, DeBERTa-v3) compiles the same
way, on the same slice, with splash attention (attention dropout 0; DeBERTa's attention runs as
xla, its bias terms do not fit splash), fsdp 4 and 16 sequences per chip.

Each compile runs at XLA's lowest execution-time effort (-1), which cut Base 128 from 52 s to
10 s on the idle 2-core box (2026-12-04) and schedules less tightly: its memory figure came out
higher (0.765 against 0.629 GiB), so "fits" here errs on the safe side. XLA's persistent cache
does not keep these TPU compiles. A per-chip batch that does not fit fails in seconds
(RESOURCE_EXHAUSTED at compile time).
"""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import libtpu  # noqa: F401  (pinned in requirements.txt: imported plainly, never skipped)
import pytest

from bertjax.tools.plan import Planner

ROOT = Path(__file__).resolve().parents[1]
SLICE, TOPOLOGY, HOSTS = "v5e-16", "v5e:4x4", 4
EFFORT = -1.0  # XLA's exec-time optimization effort: see the module docstring


def _tpu_recipes():
    spec = importlib.util.spec_from_file_location("tpu_recipe_compiled", ROOT / "configs" / "tpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _longest(presets) -> list[str]:
    """Each preset at its longest sequence only: the mesh, the partitioning and the kernels are
    the same at 128, and the per-chip batch at 512 holds as many or more tokens and the larger
    attention, so 512 is the one that can fail to fit (the 128 compiles cost about 55 s of the
    suite, 2026-12-05; all four are compiled by `bertjax plan` for docs/plan/)."""
    longest = {}
    for preset, seq in presets:
        longest[preset] = max(seq, longest.get(preset, 0))
    return [f"{SLICE}:{preset}" + (":512" if seq == 512 else "")
            for preset, seq in sorted(longest.items())]


RECIPES = _longest(_tpu_recipes().PER_CHIP_BATCH)


def _member(spec: str):
    path, arg = spec.split(":")
    module_spec = importlib.util.spec_from_file_location(f"member_{arg}_{Path(path).stem}",
                                                         ROOT / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cfg = module.get_config(arg)
    with cfg.unlocked():
        cfg.model.attention_dropout = 0.0
        cfg.mesh.data, cfg.mesh.fsdp = -1, 4
        cfg.train.batch_size = 16 * 16
        cfg.train.grad_accum_steps = 1
    return cfg


MEMBERS = ["configs/roberta.py:base", "configs/albert.py:base", "configs/electra.py:base",
           "configs/deberta.py:base"]
# Members whose attention cannot run in splash (DeBERTa's c2p/p2c bias terms): xla on TPU.
XLA_ONLY = {"configs/deberta.py:base"}


@pytest.mark.slow
@pytest.mark.parametrize("arg", RECIPES + MEMBERS)
def test_recipe_step_compiles_and_fits_on_a_four_host_slice(arg):
    module = _tpu_recipes()
    cfg = _member(arg) if arg in MEMBERS else module.get_config(arg)
    full_layers = int(cfg.model.num_layers)
    with cfg.unlocked():
        cfg.model.num_layers = 1
    t0 = time.monotonic()
    planner = Planner(cfg, TOPOLOGY, 1, effort=EFFORT)
    per_chip = cfg.train.batch_size // planner.rows
    assert per_chip * planner.rows == cfg.train.batch_size
    row = planner.run(per_chip, str(cfg.model.remat))
    seconds = time.monotonic() - t0
    print(json.dumps({"recipe": arg, "seconds": round(seconds, 1),
                      **{k: row.get(k) for k in ("per_chip_batch", "mesh", "total_gib", "fits")}}))

    assert row["hosts"] == HOSTS and row["chips"] == 16, row
    assert row["mesh"] == {"data": 16 // module.fsdp_size(module.parse_slice(SLICE)),
                           "fsdp": module.fsdp_size(module.parse_slice(SLICE)), "tensor": 1}, row
    assert (row["remat"], row["dtype"]) == (str(cfg.model.remat), str(cfg.model.dtype)), row
    splash = arg not in XLA_ONLY
    assert row["attention"]["train"] == ("splash" if splash else "xla"), row
    assert row["compiled"], f"{arg}: the step did not compile: {row.get('error')}"
    assert row["uses_splash_kernel"] == splash, row
    assert row["fits"], (f"{arg}: {per_chip} per chip plans {row['total_gib']} GiB on a "
                         f"{row['hbm_gib']} GiB chip with 1 of its {full_layers} layers")
    assert {"all-reduce", "all-gather"} <= {c["kind"] for c in row["collectives"]}, row
