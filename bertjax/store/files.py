"""File helpers shared across bertjax: hashing and all-or-nothing writes."""
from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable

from etils import epath

from bertjax.errors import UserError


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_atomic(path: str | os.PathLike, data: bytes | str, *,
                 gcs_upload: Callable[[str, bytes], object] | None = None) -> str:
    """Writes all or nothing; the one write_atomic of bertjax (the workdir and prepare's storage
    use this one). A local path: a hidden temporary file in the same directory, renamed into place,
    so a reader never sees a half-written file under the final name. A URL (gs://...) goes through
    etils.epath: an object appears whole when its upload ends, and the rename keeps that.

    gcs_upload, when given, writes gs:// URLs instead of etils.epath (which reaches gs:// through
    TensorFlow where it is installed): data/storage.py passes its google-cloud-storage upload, one
    request that makes no object until it has all the bytes, so prepare's workers never load
    TensorFlow. Returns PATH as a string."""
    path = os.fspath(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    if gcs_upload is not None and path.startswith("gs://"):
        gcs_upload(path, data)
        return path
    if "://" in path:
        return _write_atomic_url(path, data)
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
