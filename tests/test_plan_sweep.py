"""`bertjax plan --sweep=batch`'s search, with the compile replaced by a known HBM limit.

A real sweep compiles each probe for minutes (docs/tpu.md), so the search itself is checked here
against a fake chip whose limit is set by the test: whatever the guess, the answer must be that
limit, proved by a compile that fits and one `step` more that does not.
"""
import pytest

from bertjax.tools import plan


def _planner(limit, hbm_gib=16.0):
    """A Planner whose "compile" fits exactly the batches up to `limit`. Below the limit the
    planned total grows linearly and then flattens, as XLA's rematerialisation makes it near the
    HBM (docs/tpu.md: 14.45 GiB at 320, 15.50 at 552 on v5e)."""
    p = object.__new__(plan.Planner)
    p.hbm_gib, p._cache = hbm_gib, {}
    p.compiled = []

    def compile_(per_chip, remat):
        p.compiled.append(per_chip)
        if per_chip > limit:
            return {"per_chip_batch": per_chip, "fits": False, "compiled": False}
        total = min(1.4 + 0.045 * per_chip, hbm_gib - 0.5 + per_chip / (limit * 10))
        return {"per_chip_batch": per_chip, "fits": True, "compiled": True, "total_gib": total}

    p._compile = compile_
    return p


@pytest.mark.parametrize("guess", [None, 8, 96, 552, 560, 2000])
@pytest.mark.parametrize("limit", [3, 8, 64, 100, 552, 1203])
def test_sweep_finds_the_limit_from_any_guess(limit, guess):
    p = _planner(limit)
    best, rows = p.largest_batch("none", start=64, step=8, guess=guess)
    assert best == limit - limit % 8
    by_batch = {r["per_chip_batch"]: r["fits"] for r in rows}
    assert by_batch[best + 8] is False  # one step more was compiled and does not fit
    if best:
        assert by_batch[best] is True


def test_an_exact_guess_costs_two_compiles():
    p = _planner(552)
    best, _ = p.largest_batch("none", start=64, step=8, guess=552)
    assert (best, p.compiled) == (552, [552, 560])


def test_without_a_guess_two_compiles_predict_then_bracket():
    p = _planner(552)
    best, _ = p.largest_batch("none", start=64, step=8)
    assert best == 552 and p.compiled[:2] == [64, 128]
    assert len(p.compiled) == len(set(p.compiled))  # nothing is compiled twice
