"""No silent skips in CI: with CI set to a true value (1, true, yes, on; `.ci/run` sets CI=1), a
skipped test or module fails the run, unless its reason matches an entry of ALLOWED, each of
which says why that skip is legitimate. Outside CI a skip stays a skip (`make test` lists them,
`-rs`).

tests/conftest.py imports the hooks below; `pytest -p ci_skips` loads them alone (the
self-test in test_ci_skips.py does that on a scratch directory).
"""
from __future__ import annotations

import os
import re

import pytest

# (pattern searched in the skip's reason, why this skip may stand in CI). Keep it short: a
# pinned dependency, a slow start, a missing command line tool or a missing binary is never here.
ALLOWED: tuple[tuple[str, str], ...] = (
    (r"this machine has TPU chips",
     "the test is about a machine without TPU chips (stand-in TPU variables must not make it join "
     "a slice); on a TPU VM it does not apply, and the TPU tests themselves run there"),
    (r"cannot mount a small tmpfs here",
     "a full disk made by the kernel (real ENOSPC from TensorStore and Orbax) needs a 16 MB tmpfs "
     "mount, which needs CAP_SYS_ADMIN; an unprivileged CI box cannot give one"),
)

TRUE = ("1", "true", "yes", "on")


def ci_enabled(environ=None) -> bool:
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() in TRUE


def why_allowed(reason: str) -> str | None:
    """The allow-list's reason for a skip with this message, or None when it is not allowed."""
    for pattern, why in ALLOWED:
        if re.search(pattern, reason):
            return why
    return None


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        longrepr = longrepr[2]
    return str(longrepr).removeprefix("Skipped: ")


def _fail_unless_allowed(report) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or not ci_enabled():
        return
    reason = _reason(report)
    if why_allowed(reason) is None:
        report.outcome = "failed"
        report.longrepr = (f"skipped in CI, which fails the run: {reason}\n(CI="
                           f"{os.environ.get('CI')}; fix the environment, or add the reason to "
                           "ALLOWED in tests/ci_skips.py with why it may stand)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_unless_allowed(report)
    return report


# Modules skipped whole (skip(allow_module_level=True), importorskip at import): a failed
# collection would stop the whole run, so they are collected here and fail it at the end.
_SKIPPED_MODULES: dict[str, str] = {}


def pytest_collectreport(report):
    if report.skipped and ci_enabled() and why_allowed(_reason(report)) is None:
        _SKIPPED_MODULES[report.nodeid] = _reason(report)


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED_MODULES:
        terminalreporter.section("modules skipped in CI, which fails the run", red=True)
        for nodeid, reason in sorted(_SKIPPED_MODULES.items()):
            terminalreporter.write_line(f"{nodeid}: {reason}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    # xdist workers forward their collection reports to the controller, which decides.
    if _SKIPPED_MODULES and not hasattr(session.config, "workerinput"):
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
