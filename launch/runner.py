"""Runs command lines, or under --dry_run prints them exactly (shell-quoted) and runs nothing."""
from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence

from bertjax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Result:
    rc: int
    out: str = ""
    err: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def last_error_line(self) -> str:
        lines = [ln.strip() for ln in self.err.splitlines() if ln.strip()]
        return lines[-1] if lines else f"exit code {self.rc}"


Execute = Callable[[Sequence[str], bool], Result]


def subprocess_execute(argv: Sequence[str], capture: bool) -> Result:
    try:
        if capture:
            p = subprocess.run(list(argv), capture_output=True, text=True)
            return Result(p.returncode, p.stdout, p.stderr)
        # Not captured: gcloud's prompts, progress and errors reach the user directly.
        return Result(subprocess.run(list(argv)).returncode)
    except FileNotFoundError:
        raise UserError(
            f"{argv[0]} was not found on PATH; install the Google Cloud CLI "
            "(https://cloud.google.com/sdk/docs/install) and run `gcloud auth login`") from None


class Runner:
    """Every command the launcher issues goes through `run`, which also records it in `history`."""

    def __init__(self, dry_run: bool = False, execute: Execute = subprocess_execute,
                 echo: Callable[[str], None] | None = None):
        self.dry_run = dry_run
        self._execute = execute
        self._echo = echo or (lambda s: print(s, flush=True))
        self.history: list[list[str]] = []

    def run(self, argv: Sequence[str], capture: bool = False) -> Result:
        argv = [str(a) for a in argv]
        self.history.append(argv)
        if self.dry_run:
            self._echo(shlex.join(argv))
            return Result(0)
        if not capture:
            print(f"+ {shlex.join(argv)}", file=sys.stderr, flush=True)
        return self._execute(argv, capture)

    def note(self, text: str) -> None:
        """A comment line: under --dry_run it explains the plan, otherwise it reports progress."""
        self._echo(f"# {text}" if self.dry_run else f"[launch] {text}")
