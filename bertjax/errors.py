"""User-facing errors: one clear line and a non-zero exit, never a traceback."""
from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """A problem the user can fix (paths, config, data). The message names the problem and the fix."""


def fail(message: str, code: int = 2) -> None:
    """Prints one line to stderr and exits non-zero."""
    first = " ".join(str(message).split())
    print(f"error: {first}", file=sys.stderr, flush=True)
    sys.exit(code)


def user_errors_exit(fn):
    """Wraps an entrypoint so a UserError ends in one line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            fail(str(e))

    return wrapper
