"""The unit of work of the text stream (stream.py): one input file's instances for one epoch.

A worker process runs `build_unit`: it reads and tokenizes the file and builds its instances with
prepare's own code (prepare_units.instance_stream, partner seeds from the neighbouring file), the
random draws coming from (seed, file index, pair epoch) exactly as prepare's pass `pair epoch` of
that file does. So epoch e of the stream holds the instances of prepare's pass e, and another
epoch draws other segment boundaries, partners and truncations from the same text.

This module imports no TensorFlow: the stream's worker processes are spawned and import only it.
"""
from __future__ import annotations

import os

import numpy as np

from bertjax.data import instances
from bertjax.data import prepare_units as units
from bertjax.errors import UserError


def init_worker() -> None:
    # Workers only tokenize and build pairs; nothing they import should log.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def build_unit(job) -> dict:
    """job = (Options, file index, file, neighbour (index, file) or None, pair epoch). Returns the
    instances as arrays: tokens [n, S] int32 (pad-filled), length, segment_start,
    next_sentence_label [n] int32, example_id [n] int64."""
    o, index, source, neighbour, pair_epoch = job
    tok = units.cached_tokenizer(o.vocab)
    counts = instances.BuildCounts()
    docs = units._tokenized(o, tok, index, source)
    stream = units.instance_stream(o, tok, index, pair_epoch,
                                   docs, units.partner_seeds(o, tok, neighbour), counts)
    built = list(stream)
    n, s = len(built), o.max_seq_length
    if n > 1 << 32:
        raise UserError(f"{source} makes over 2**32 instances in one epoch; split it into "
                        "smaller files")
    tokens = np.full((n, s), tok.pad_id, np.int32)
    out = {"tokens": tokens, "length": np.zeros(n, np.int32),
           "segment_start": np.zeros(n, np.int32), "next_sentence_label": np.zeros(n, np.int32)}
    for k, inst in enumerate(built):
        tokens[k, :len(inst.tokens)] = inst.tokens
        out["length"][k] = len(inst.tokens)
        out["segment_start"][k] = inst.segment_start
        out["next_sentence_label"][k] = inst.is_random_next
    out["example_id"] = units.first_example_id(index, pair_epoch) + np.arange(n, dtype=np.int64)
    return out

