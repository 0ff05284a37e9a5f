"""Shared featurisation for fine-tuning tasks: packing with the tokenizer's input layout
(build_inputs: BERT's [CLS] A [SEP] B [SEP], RoBERTa's <s> A </s></s> B </s>), pair truncation and
padding to a static length. Batching lives with the loop's user, bertjax/finetuning (batches.py, predict.py)."""
from __future__ import annotations

import numpy as np

from bertjax.text.base import Tokenizer


def encode_many(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Ids for many texts; one batched call when the tokenizer offers encode_batch (the Rust
    WordPiece does, several times faster than a Python loop of encode)."""
    batch = getattr(tok, "encode_batch", None)
    if batch is not None and texts:
        return batch(list(texts))
    return [tok.encode(t) for t in texts]


def truncate_pair(tokens_a: list, tokens_b: list, max_total: int) -> None:
    """Trims the longer side first, one token at a time from its end (in place). Removing from the
    longer side keeps as much of a short hypothesis as possible; on a tie the second side loses,
    as in the original BERT code, so results match models fine-tuned there."""
    while len(tokens_a) + len(tokens_b) > max_total:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


def pack(tok: Tokenizer, ids_a: list[int], ids_b: list[int] | None, max_seq_length: int):
    """tok.build_inputs(A, B) padded to max_seq_length -> (input_ids, segment_ids, input_mask).

    Callers truncate first (to max_seq_length - tok.num_special(pair)); an over-long input here is
    a programming error, not a user one."""
    ids, segments = tok.build_inputs(ids_a, ids_b)
    if len(ids) > max_seq_length:
        raise ValueError(f"packed length {len(ids)} exceeds max_seq_length {max_seq_length}")
    return pad_row(ids, max_seq_length, tok.pad_id), pad_row(segments, max_seq_length, 0), \
        pad_row([1] * len(ids), max_seq_length, 0)


def second_offset(tok: Tokenizer, len_a: int) -> int:
    """Where B starts in build_inputs(A, B) when A has len_a pieces (a SQuAD passage's offset)."""
    ids, _ = tok.build_inputs([tok.pad_id] * len_a, [-1])
    return ids.index(-1)


def pad_row(values: list, length: int, fill) -> list:
    return list(values) + [fill] * (length - len(values))


def stack(rows: dict[str, list], dtypes: dict[str, type], max_seq_length: int,
          per_token: tuple[str, ...] = ()) -> dict:
    """Lists of per-feature rows -> numpy arrays (int32 unless dtypes says otherwise). Empty
    inputs still get their static width, [0, S] for per-token keys, so shape checks downstream
    see the same rank as for real data."""
    out = {}
    for key, values in rows.items():
        arr = np.asarray(values, dtype=dtypes.get(key, np.int32))
        if arr.size == 0 and (key in _PER_TOKEN or key in per_token):
            arr = arr.reshape(0, max_seq_length)
        out[key] = arr
    return out


_PER_TOKEN = frozenset({"input_ids", "segment_ids", "input_mask", "label_weights"})
