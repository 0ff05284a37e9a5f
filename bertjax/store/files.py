"""File helpers shared across bertjax: hashing and all-or-nothing writes."""
from __future__ import annotations

import hashlib
import os
import tempfile
import uuid

from etils import epath

from bertjax.errors import UserError


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: str, data: bytes | str) -> str:
    """Writes to a hidden temporary file in the same directory, then renames it into place, so a
    reader never sees a half-written file under the final name. A URL (gs://...) goes through
    etils.epath: an object appears whole when its upload ends, and the rename keeps that."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if "://" in os.fspath(path):
        return _write_atomic_url(os.fspath(path), data)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=directory)
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror}); choose a writable location") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp creates the file private (0600); give it the usual permissions of a data file.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _write_atomic_url(path: str, data: bytes) -> str:
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_bytes(data)
    tmp.replace(target)
    return path


class AtomicTextWriter:
    """A text file written line by line under a temporary name and renamed on a clean close; on an
    exception the temporary file is removed and nothing appears under the final name."""

    def __init__(self, path: str):
        self.path = path
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(
            prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
        )
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def write(self, text: str) -> None:
        self._file.write(text)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self._file.close()
        if exc_type is None:
            os.chmod(self._tmp, 0o644)
            os.replace(self._tmp, self.path)
        elif os.path.exists(self._tmp):
            os.unlink(self._tmp)
        return False
