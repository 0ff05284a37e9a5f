"""The linters the project holds itself to: ruff over the Python tree, shellcheck over launch/*.sh.

Both come from requirements-dev.txt and are found next to the interpreter running the tests, so the
check needs no network and no system packages.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PYTHON_TREES = ["launch", "bertjax", "configs", "tests"]


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed next to {sys.executable} or on PATH; "
                    "install requirements-dev.txt (make setup)")
    return found


def run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff():
    trees = [t for t in PYTHON_TREES if (ROOT / t).is_dir()]
    p = run([tool("ruff"), "check", "--no-cache", *trees])
    assert p.returncode == 0, p.stdout + p.stderr


def test_shellcheck():
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "launch").glob("*.sh"))
    assert scripts, "launch/ holds no shell scripts to check"
    p = run([tool("shellcheck"), "--shell=bash", "--severity=style", *scripts])
    assert p.returncode == 0, p.stdout + p.stderr
    for s in scripts:
        assert (ROOT / s).read_text().startswith("#!/usr/bin/env bash\n"), f"{s}: no bash shebang"
