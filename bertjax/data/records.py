"""The record format of prepared pretraining data: fixed-length little-endian binary records, read
in tf.data with FixedLengthRecordDataset.

Why not TFRecord + tf.train.Example: every record is padded to S anyway, so a fixed layout costs
little space (most instances fill the target length) and buys three things: prepare writes records
with numpy alone (its workers never import TensorFlow, which costs seconds and hundreds of MB per
process), the pipeline decodes a whole batch with a few vectorised ops instead of proto parsing,
and integrity is a size check (records * record_bytes, recorded in each shard's .done file and in
metadata.json) plus the sha256 kept in the .done file.

Layout of one record (FORMAT, version 1):
  example_id int64  unique over the prepared data; seeds dynamic masks
  a_doc, b_doc int64  provenance: document ids of segment A and B (b_doc -1 without B); a document id
                      is (input index << 32) | document index in that input
  length int32, segment_start int32 (first index of segment 1, = length with one segment),
  next_sentence_label int32 (1 = random next), num_masked int32 (static masks, else 0)
  tokens [S] uint16 or int32 (int32 when the vocabulary has more than 65,536 ids), padded with [PAD]
  static masking only: masked positions [P] and masked (original) ids [P], same dtype, 0-padded.
In static data the tokens are already masked.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid

import numpy as np

from bertjax.data import storage

FORMAT = "bertjax-fixed-records"
VERSION = 1
HEADER_BYTES = 40
SHARD_SUFFIX = ".rec"


def token_dtype_name(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def record_dtype(max_seq_length: int, max_predictions: int, token_dtype: str,
                 static: bool) -> np.dtype:
    t = np.dtype(token_dtype).newbyteorder("<")
    fields = [("example_id", "<i8"), ("a_doc", "<i8"), ("b_doc", "<i8"), ("length", "<i4"),
              ("segment_start", "<i4"), ("next_sentence_label", "<i4"), ("num_masked", "<i4"),
              ("tokens", t, (max_seq_length,))]
    if static:
        fields += [("masked_positions", t, (max_predictions,)), ("masked_ids", t, (max_predictions,))]
    dt = np.dtype(fields)
    assert dt.fields["tokens"][1] == HEADER_BYTES
    return dt


def layout(metadata: dict) -> dict:
    """The layout fields of metadata.json, as written by prepare."""
    return {k: metadata[k] for k in ("max_seq_length", "max_predictions_per_seq", "token_dtype",
                                     "static_masks", "record_bytes")}


def dtype_from_metadata(metadata: dict) -> np.dtype:
    dt = record_dtype(metadata["max_seq_length"], metadata["max_predictions_per_seq"],
                      metadata["token_dtype"], metadata["static_masks"])
    if dt.itemsize != metadata["record_bytes"]:
        raise ValueError(f"record layout mismatch: {dt.itemsize} != {metadata['record_bytes']}")
    return dt


def read_shard(path: str, dtype: np.dtype) -> np.ndarray:
    """All records of a shard as a read-only structured array (memory-mapped: for tests, audits
    and statistics, not for training input)."""
    size = os.path.getsize(path)
    if size % dtype.itemsize:
        raise ValueError(f"{path}: {size} bytes is not a whole number of {dtype.itemsize}-byte records")
    if size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


class ShardWriter:
    """Writes records under a temporary name in the same directory and renames on a clean close,
    so a shard file under its final name is always complete. The temporary name starts with "."
    and ends in ".tmp", which prepare removes on its next run. For a gs:// path the records are
    spooled to a local temporary file (one shard of disk, never of memory) and published by
    upload, copy and delete (see storage.publish)."""

    def __init__(self, path: str):
        self.path = path
        # pid and a random part: on a cluster two attempts at one shard may share a pid.
        tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if storage.is_remote(path):
            self.tmp_name = f".{storage.basename(path)}.{tag}.tmp"
            fd, self.tmp = tempfile.mkstemp(prefix=self.tmp_name, suffix=".tmp")
            self._file = os.fdopen(fd, "wb")
        else:
            directory, name = os.path.split(os.path.abspath(path))
            self.tmp = os.path.join(directory, f".{name}.{tag}.tmp")
            self._file = open(self.tmp, "wb")
        self._sha = hashlib.sha256()
        self.records = 0
        self.bytes = 0

    def write(self, records: np.ndarray) -> None:
        data = np.ascontiguousarray(records).tobytes()
        self._file.write(data)
        self._sha.update(data)
        self.records += len(records)
        self.bytes += len(data)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if storage.is_remote(self.path):
            storage.publish(self.tmp, self.path, self.tmp_name)
        else:
            os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def decode_batch_tf(records, metadata: dict):
    """A batch of raw records (tf.string [N]) -> dict of tensors: example_id, a_doc, b_doc [N] int64;
    length, segment_start, next_sentence_label, num_masked [N] int32; tokens [N, S] int32 and, for
    static data, masked_positions / masked_ids [N, P] int32."""
    from bertjax.data.tf_runtime import tf  # prepare writes records without TensorFlow

    s = metadata["max_seq_length"]
    p = metadata["max_predictions_per_seq"]
    t = tf.uint16 if metadata["token_dtype"] == "uint16" else tf.int32
    width = 2 if metadata["token_dtype"] == "uint16" else 4

    def field(offset, nbytes, dtype, count):
        raw = tf.strings.substr(records, offset, nbytes)
        return tf.reshape(tf.io.decode_raw(raw, dtype, little_endian=True), [-1, count])

    ids = field(0, 24, tf.int64, 3)
    ints = field(24, 16, tf.int32, 4)
    out = {"example_id": ids[:, 0], "a_doc": ids[:, 1], "b_doc": ids[:, 2],
           "length": ints[:, 0], "segment_start": ints[:, 1], "next_sentence_label": ints[:, 2],
           "num_masked": ints[:, 3],
           "tokens": tf.cast(field(HEADER_BYTES, s * width, t, s), tf.int32)}
    if metadata["static_masks"]:
        base = HEADER_BYTES + s * width
        out["masked_positions"] = tf.cast(field(base, p * width, t, p), tf.int32)
        out["masked_ids"] = tf.cast(field(base + p * width, p * width, t, p), tf.int32)
    return out


# ------------------------------------------------------------------------------- integrity


class ShardError(ValueError):
    """A shard differs from what prepare recorded for it. The message names the shard."""


def done_path(shard: str) -> str:
    return shard + ".done"


def verify_shard(path: str, records: int, record_bytes: int, open_fn=open, *,
                 dtype: np.dtype | None = None, vocab_size: int | None = None,
                 chunk_records: int = 8192) -> int:
    """Checks one shard against its .done (written by prepare): record count, size and sha256,
    and, given `dtype` and `vocab_size`, that every token id is inside the vocabulary. Reads the
    shard once, sequentially; `open_fn` opens local or remote paths (open, tf.io.gfile.GFile).
    Returns the bytes read; raises ShardError naming the shard and the fix."""
    fix = ("delete it and its .done and rerun prepare (it rebuilds only what is missing), or copy "
           "the prepared directory again")
    try:
        with open_fn(done_path(path), "rb") as f:
            done = json.loads(f.read())
    except Exception as e:  # missing, unreadable or torn: the shard was never recorded complete
        raise ShardError(f"shard {path} has no readable {os.path.basename(done_path(path))} "
                         f"({type(e).__name__}): prepare never finished it; {fix}") from None
    if done.get("records") != records:
        raise ShardError(f"shard {path}: its .done says {done.get('records')} records, "
                         f"metadata.json says {records}: they come from different prepare runs; "
                         f"{fix}")
    h = hashlib.sha256()
    check_tokens = dtype is not None and vocab_size is not None
    token_fields = [k for k in ("tokens", "masked_ids") if dtype is not None and k in dtype.names]
    try:
        n = _hash_blocks(path, h, open_fn, chunk_records * record_bytes, record_bytes,
                         dtype if check_tokens else None, token_fields, vocab_size, fix)
    except ShardError:
        raise
    except Exception as e:  # gone since the input was set up, or the store refuses it
        raise ShardError(f"shard {path} cannot be read ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}); check the storage, or {fix}") from None
    if n != records * record_bytes:
        raise ShardError(f"shard {path} has {n} bytes, not the {records * record_bytes} of its "
                         f"{records} records: it is truncated or from another run; {fix}")
    if h.hexdigest() != done.get("sha256"):
        raise ShardError(f"shard {path}: its sha256 differs from the one prepare recorded: its "
                         f"bytes changed after prepare; {fix}")
    return n


def _hash_blocks(path, h, open_fn, block_bytes, record_bytes, dtype, token_fields, vocab_size,
                 fix) -> int:
    n = 0
    check_tokens = dtype is not None
    with open_fn(path, "rb") as f:
        while True:
            block = f.read(block_bytes)
            if not block:
                break
            h.update(block)
            n += len(block)
            if check_tokens and len(block) % record_bytes == 0:
                rec = np.frombuffer(block, dtype)
                for k in token_fields:
                    top = int(rec[k].max()) if len(rec) else 0
                    if top >= vocab_size:
                        raise ShardError(f"shard {path}: token id {top} in {k} is outside the "
                                         f"vocabulary of {vocab_size}; {fix}")
    return n
