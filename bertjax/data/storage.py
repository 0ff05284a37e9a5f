"""Files of prepare on a local disk or in Google Cloud Storage (gs://bucket/path), one small API for
both runners.

Why google-cloud-storage and not TensorFlow's gfile, etils epath or Beam's FileSystems: gfile (and
epath, which reaches gs:// through it) would load TensorFlow into every worker, seconds and hundreds
of MB for processes that only tokenize and write bytes; Beam's FileSystems would load Beam into the
local runner. google-cloud-storage is the client both of those use underneath, it is already
pinned (Orbax needs it), it honours STORAGE_EMULATOR_HOST (the tests' fake GCS), and it retries
transient errors (429, 5xx, dropped connections) with exponential back-off.

GCS has no rename: a shard is uploaded under a temporary name, copied to its final name, and the
temporary object deleted; only then is its .done written. Every write here is safe to retry: an
upload or a copy repeated after a lost reply writes the same bytes again.
"""
from __future__ import annotations

import fnmatch
import glob
import io
import os
import re

from bertjax.errors import UserError
from bertjax.store import files

# google-cloud-storage and google.api_core are imported inside the functions that reach gs://:
# they take 0.4 s, and local prepare runs and each of their worker processes never need them.

SCHEME = "gs://"
_CLIENT = None
# (size, generation) of the inputs an input glob listed, so planning a run over thousands of inputs
# costs a few list calls, not a metadata request per file. The identity of an input is what it
# was when listed, which is what the plan records.
_LISTED: dict = {}
# Seconds a storage call keeps retrying transient errors before it gives up (the library's default).
RETRY_DEADLINE = 120.0


def is_remote(path: str) -> bool:
    return path.startswith(SCHEME)


def join(base: str, *names: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(base, *names)


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_remote(path) else os.path.basename(path)


def _split(url: str) -> tuple[str, str]:
    bucket, _, name = url[len(SCHEME):].partition("/")
    if not bucket:
        raise UserError(f"{url} names no bucket; use gs://BUCKET/PATH")
    return bucket, name


def _client():
    global _CLIENT
    if _CLIENT is None:
        from google.cloud import storage

        try:
            _CLIENT = storage.Client()
        except Exception as e:  # google.auth raises DefaultCredentialsError and others
            raise UserError(f"cannot reach Google Cloud Storage ({type(e).__name__}: {e}); run "
                            "`gcloud auth application-default login` or give the machine a "
                            "service account") from None
    return _CLIENT


def _retry():
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(RETRY_DEADLINE)


def _blob(url: str):
    bucket, name = _split(url)
    return _client().bucket(bucket).blob(name)


def _storage_error(url: str, e: Exception) -> UserError:
    return UserError(f"{url}: {type(e).__name__}: {e}; check the bucket name and your access to it")


def _get(url: str):
    """The object's metadata, or None when it does not exist."""
    from google.api_core import exceptions

    bucket, name = _split(url)
    try:
        return _client().bucket(bucket).get_blob(name, retry=_retry())
    except exceptions.NotFound:
        return None
    except exceptions.GoogleAPIError as e:
        raise _storage_error(url, e) from None


def isfile(path: str) -> bool:
    if is_remote(path):
        return bool(_split(path)[1]) and _get(path) is not None
    return os.path.isfile(path)


def exists(path: str) -> bool:
    return isfile(path) if is_remote(path) else os.path.exists(path)


def size(path: str) -> int:
    if is_remote(path):
        if path in _LISTED:
            return _LISTED[path][0]
        blob = _get(path)
        if blob is None:
            raise FileNotFoundError(path)
        return blob.size
    return os.path.getsize(path)


def identity(path: str) -> dict:
    """What makes a shard built from this input stale when it changes: for an object its size and
    generation (a new upload is a new generation), for a local file its size and mtime."""
    if is_remote(path):
        if path not in _LISTED:
            blob = _get(path)
            if blob is None:
                raise UserError(f"input {path} no longer exists; check the input glob")
            _LISTED[path] = (blob.size, blob.generation)
        size_, generation = _LISTED[path]
        return {"source": path, "size": size_, "generation": generation}
    st = os.stat(path)
    return {"source": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _list(url_prefix: str, delimiter: str | None = None, remember: bool = False):
    from google.api_core import exceptions

    bucket, prefix = _split(url_prefix)
    try:
        for blob in _client().list_blobs(bucket, prefix=prefix, delimiter=delimiter,
                                         retry=_retry()):
            if remember:
                _LISTED[f"{SCHEME}{bucket}/{blob.name}"] = (blob.size, blob.generation)
            yield blob
    except exceptions.NotFound:
        raise UserError(f"bucket gs://{bucket} does not exist; check the URL") from None
    except exceptions.GoogleAPIError as e:
        raise _storage_error(url_prefix, e) from None


def glob_remote(pattern: str) -> list[str]:
    """Objects matching a gs:// glob ("*" and "?" within a name, "**" across "/"); a pattern
    without wildcards is one object or, failing that, every object under that prefix."""
    bucket, name = _split(pattern)
    wild = re.search(r"[*?\[]", name)
    if not wild:
        if name and _get(pattern) is not None:
            return [pattern]
        prefix = name.rstrip("/") + "/" if name else ""
        return sorted(f"{SCHEME}{bucket}/{b.name}"
                      for b in _list(f"{SCHEME}{bucket}/{prefix}", remember=True)
                      if not b.name.endswith("/"))
    prefix = name[:wild.start()]
    # fnmatch's "*" crosses "/", a shell glob's does not; "**" is the one that may.
    regex = re.compile("".join(
        ".*" if part == "**" else fnmatch.translate(part).removeprefix("(?s:").removesuffix(r")\Z")
        .replace(".*", "[^/]*") for part in re.split(r"(\*\*)", name)) + r"\Z", re.S)
    return sorted(f"{SCHEME}{bucket}/{b.name}"
                  for b in _list(f"{SCHEME}{bucket}/{prefix}", remember=True)
                  if regex.match(b.name) and not b.name.endswith("/"))


def file_sizes(directory: str) -> dict:
    """{name: bytes} of the files directly in DIRECTORY (one listing, for a bucket)."""
    if is_remote(directory):
        base = directory.rstrip("/") + "/"
        prefix = _split(base)[1]
        return {b.name[len(prefix):]: b.size for b in _list(base, delimiter="/")}
    if not os.path.isdir(directory):
        return {}
    return {e.name: e.stat().st_size for e in os.scandir(directory) if e.is_file()}


def open_read(path: str):
    """A binary stream of the file, read in chunks (retried) from GCS."""
    if not is_remote(path):
        return open(path, "rb")
    # BlobReader is a BufferedIOBase without a line buffer of its own: wrap it so that iterating
    # lines reads megabytes at a time, not a byte per call.
    return io.BufferedReader(_blob(path).open("rb", chunk_size=8 << 20, retry=_retry()),
                             buffer_size=1 << 20)


def read_bytes(path: str) -> bytes:
    """The whole file; FileNotFoundError when it does not exist, local or not."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    from google.api_core import exceptions

    try:
        return _blob(path).download_as_bytes(retry=_retry())
    except exceptions.NotFound:
        raise FileNotFoundError(path) from None


def makedirs(path: str) -> None:
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)  # GCS has no directories to make


def remove(path: str) -> None:
    """Deletes a file; no error when it is already gone (a retried delete may find it so)."""
    if not is_remote(path):
        if os.path.exists(path):
            os.unlink(path)
        return
    from google.api_core import exceptions

    try:
        _blob(path).delete(retry=_retry())
    except exceptions.NotFound:
        pass


def hidden_temporaries(directory: str) -> list[str]:
    """Files of DIRECTORY named ".*.tmp": what an interrupted run left."""
    if is_remote(directory):
        base = directory.rstrip("/") + "/"
        bucket, prefix = _split(base)
        found = []
        for blob in _list(base + "."):
            rest = blob.name[len(prefix):]
            if "/" not in rest and rest.endswith(".tmp"):
                found.append(f"{SCHEME}{bucket}/{blob.name}")
        return found
    return glob.glob(os.path.join(directory, ".*.tmp"))


def upload(url: str, data: bytes) -> None:
    """One upload to gs://: GCS makes no object until it has all the bytes, so it is all or
    nothing (what write_atomic needs) without TensorFlow."""
    from google.api_core import exceptions

    try:
        _blob(url).upload_from_string(data, retry=_retry())
    except exceptions.GoogleAPIError as e:
        raise _storage_error(url, e) from None


def write_atomic(path: str, data: bytes | str) -> str:
    """store.files.write_atomic, with gs:// written by `upload` (no TensorFlow in the workers)."""
    return files.write_atomic(path, data, gcs_upload=upload)


def publish(local_tmp: str, path: str, tmp_name: str) -> None:
    """Moves a complete local file to PATH on GCS: uploaded as TMP_NAME (beside PATH), copied to
    PATH, the temporary object deleted, the local file removed."""
    from google.api_core import exceptions

    bucket_name, name = _split(path)
    bucket = _client().bucket(bucket_name)
    tmp_blob = bucket.blob(name.rsplit("/", 1)[0] + "/" + tmp_name if "/" in name else tmp_name)
    try:
        # upload_from_filename re-sends the whole file when a try fails: safe, it is the same bytes.
        tmp_blob.upload_from_filename(local_tmp, retry=_retry(), checksum="crc32c")
        tmp_blob.reload(retry=_retry())
        bucket.copy_blob(tmp_blob, bucket, name, source_generation=tmp_blob.generation,
                         retry=_retry())
    except exceptions.GoogleAPIError as e:
        raise _storage_error(path, e) from None
    finally:
        remove(f"{SCHEME}{bucket_name}/{tmp_blob.name}")
        os.unlink(local_tmp)
