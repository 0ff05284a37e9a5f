"""Masked-LM selection, in numpy (static masks, written by prepare) and in TensorFlow (dynamic masks,
made inside tf.data). Both work on padded batches [N, S] and give the same result bit for bit.

Semantics (google-research/bert, with the whole-word fix of bert #910):
- candidates are the positions inside the sequence length whose token is not [CLS] or [SEP];
- with whole-word masking a word is a candidate that does not continue a candidate before it plus
  the continuation pieces after it; selection AND the 80/10/10 choice are made per word, each piece
  of a randomly replaced word getting its own random id; without it every candidate is a word;
- n = min(P, max(1, round(rate * len(tokens)))) tokens are chosen, where len(tokens) is the
  sequence length counting [CLS] and the [SEP]s, and round is Python 3's (half to even on the
  float64 product), exactly as the original computes it; the budget "candidates" takes the rate
  of the non-special tokens instead (bertjax's rule before issue 12, kept for old data). Either
  way n never exceeds the candidates. The words are walked in a random order, taking each word
  that still fits in n (so a long word may be skipped for shorter ones after it, as in the
  original);
- a chosen word becomes [MASK] with probability 0.8, stays with 0.1, and becomes random vocabulary
  ids (drawn from `replacement_ids`, the vocabulary less the special tokens) with 0.1;
- positions are sorted ascending and padded to P with position 0, id 0 and weight 0.

N-gram masking (`ngram` = N > 1, ALBERT's create_pretraining_data.py): the unit is a span of 1 to
N consecutive words (words as above, so whole words with whole-word masking, else tokens) with
p(n) proportional to 1/n. Each word draws its n and starts a span in the same random order as
above; a span never runs past the last word, shrinks (n-1, n-2, ...) until it fits in what is
left of the budget, and is skipped if nothing fits or if it overlaps a word already taken. Each
word of a span gets its own 80/10/10 choice. N = 1 is the selection above, unchanged.

Randomness is a counter-based hash (the splitmix64 finaliser) of (seed, epoch, example id,
position, stream) in uint64 arithmetic. tf.random's stateless ops take one seed per call, so a
per-example seed would need one op per example; the hash gives every row its own stream inside one
vectorised batch op, keeps a mask the same whatever the batch size or host count, and lets the numpy
twin reproduce TF's masks exactly (the tests use that as a cross-check). Decisions compare integers,
never floats, so both sides agree to the bit.
"""
from __future__ import annotations

import dataclasses

import numpy as np

_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_U64 = np.uint64

# A 24-bit draw below KEEP_FROM masks, below RANDOM_FROM keeps, otherwise replaces: 80/10/10.
_DRAW_BITS = 24
KEEP_FROM = int(0.8 * (1 << _DRAW_BITS))
RANDOM_FROM = int(0.9 * (1 << _DRAW_BITS))
# Scores: 40 random bits above 20 position bits, so scores in a row are unique and ties impossible.
_POS_BITS = 20
MAX_SEQ_LENGTH = 1 << _POS_BITS
# Streams of the hash: which word goes first, what a chosen word becomes, the random id, and
# (n-gram masking) how many words its span covers.
_ORDER, _ACTION, _REPLACE, _SPAN = 1, 2, 3, 4
MAX_NGRAM = 8
# What the masking rate is a share of: the whole sequence with its specials (the original's
# create_pretraining_data.py) or only the maskable candidates.
BUDGETS = ("sequence", "candidates")
# static: chosen once by prepare and stored in the records; dynamic: drawn anew every epoch.
MODES = ("static", "dynamic")


@dataclasses.dataclass(frozen=True, eq=False)
class MaskSpec:
    max_predictions: int
    rate: float
    whole_word: bool
    cls_id: int
    sep_id: int
    mask_id: int
    replacement_ids: np.ndarray  # int32 ids a "random" token is drawn from
    is_continuation: np.ndarray | None = None  # bool [vocab_size]; needed for whole_word
    budget: str = "sequence"  # one of BUDGETS
    ngram: int = 1  # spans of 1..ngram words, p(n) proportional to 1/n (ALBERT); 1 = single words

    def __post_init__(self):
        if not 1 <= self.ngram <= MAX_NGRAM:
            raise ValueError(f"masking n-gram {self.ngram} must be between 1 and {MAX_NGRAM}")
        if self.max_predictions < 1:
            raise ValueError("max_predictions must be at least 1")
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"masked_lm_prob must be in (0, 1], not {self.rate}")
        if self.whole_word and self.is_continuation is None:
            raise ValueError("whole-word masking needs the tokenizer's continuation table")
        if len(self.replacement_ids) == 0:
            raise ValueError("replacement_ids is empty")
        if self.budget not in BUDGETS:
            raise ValueError(f"mask budget {self.budget!r}; use one of {', '.join(BUDGETS)}")


def special_ids(tokenizer) -> list[int]:
    return sorted({tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id,
                   tokenizer.mask_id})


def continuation_table(tokenizer) -> np.ndarray:
    table = getattr(tokenizer, "continuation_mask", None)
    if table is None:
        table = [tokenizer.is_continuation(i) for i in range(tokenizer.vocab_size)]
    return np.asarray(table, dtype=bool)


def replacement_ids(vocab_size: int, specials) -> np.ndarray:
    keep = np.ones(vocab_size, dtype=bool)
    keep[list(specials)] = False
    return np.flatnonzero(keep).astype(np.int32)


def spec_from_tokenizer(tokenizer, *, max_predictions: int, rate: float = 0.15,
                        whole_word: bool = False, budget: str = "sequence",
                        ngram: int = 1) -> MaskSpec:
    return MaskSpec(
        max_predictions=max_predictions, rate=rate, whole_word=whole_word, budget=budget,
        ngram=ngram,
        cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, mask_id=tokenizer.mask_id,
        replacement_ids=replacement_ids(tokenizer.vocab_size, special_ids(tokenizer)),
        is_continuation=continuation_table(tokenizer) if whole_word else None)


# ----------------------------------------------------------------------------------------- numpy


def budget_np(lengths, num_candidates, spec: MaskSpec) -> np.ndarray:
    """Tokens to mask per row. np.rint rounds half to even on the float64 product, the same value
    Python 3's round gives in the original, so the counts agree on every length."""
    base = lengths if spec.budget == "sequence" else num_candidates
    n = np.rint(np.asarray(base).astype(np.float64) * spec.rate).astype(np.int64)
    return np.minimum(np.minimum(np.maximum(n, 1), spec.max_predictions), num_candidates)


def _mix_np(x):
    x = x ^ (x >> _U64(30))
    x = x * _U64(_M1)
    x = x ^ (x >> _U64(27))
    x = x * _U64(_M2)
    return x ^ (x >> _U64(31))


def _row_keys_np(seed: int, epochs, example_ids) -> np.ndarray:
    with np.errstate(over="ignore"):
        k = _mix_np(np.asarray(seed, dtype=np.int64).astype(_U64) * _U64(_M1) + _U64(_GOLDEN))
        k = _mix_np(k ^ (np.asarray(epochs, dtype=np.int64).astype(_U64) * _U64(_M2) + _U64(_GOLDEN)))
        return _mix_np(k ^ (np.asarray(example_ids, dtype=np.int64).astype(_U64) * _U64(_GOLDEN)
                            + _U64(_M1)))


def _hash_np(keys, stream: int, length: int) -> np.ndarray:
    """uint64 [N, length] draws for positions 0..length-1 of each row's key."""
    with np.errstate(over="ignore"):
        k = _mix_np(keys + _U64(stream) * _U64(_M2))
        pos = np.arange(1, length + 1, dtype=_U64) * _U64(_GOLDEN)
        return _mix_np(k[:, None] + pos[None, :])


def _desc_topk_np(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Like tf.math.top_k: the k largest per row, ties in index order."""
    idx = np.argsort(-x, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=1), idx


def span_thresholds(ngram: int) -> list[int]:
    """24-bit draw thresholds t_1 < ... < t_{N-1}: a draw d gives n = 1 + #{t_i <= d}, so
    p(n) = 1/n / sum_k 1/k (ALBERT's favor_shorter_ngram), up to the 2**-24 grid."""
    weights = [1.0 / n for n in range(1, ngram + 1)]
    total = sum(weights)
    out, acc = [], 0.0
    for w in weights[:-1]:
        acc += w
        out.append(int(acc / total * (1 << _DRAW_BITS)))
    return out


def _ngram_np(word_len, num_words, sorted_word, valid, span, n, ngram):
    """Which words n-gram spans take (mask_batch_np's n-gram selection, see the module doc).
    word_len [R,S] tokens of word w at column w; sorted_word/valid [R,S] the words in random
    order; span [R,S] the drawn n of word w; n [R] the token budget. Returns taken [R,S] by word."""
    rows_n, seq = word_len.shape
    cum = np.concatenate([np.zeros((rows_n, 1), np.int64), np.cumsum(word_len, axis=1)], axis=1)
    taken = np.zeros((rows_n, seq), bool)
    room = n.astype(np.int64).copy()
    col = np.arange(seq)[None, :]
    for k in range(seq):
        w = sorted_word[:, k]
        live = valid[:, k] & (room > 0)
        if not live.any():
            break
        most = np.minimum(np.take_along_axis(span, w[:, None], axis=1)[:, 0], num_words - w)
        start = np.take_along_axis(cum, w[:, None], axis=1)[:, 0]
        size = np.zeros_like(room)
        length = np.zeros_like(room)
        for m in range(1, ngram + 1):
            end = np.take_along_axis(cum, np.minimum(w + m, seq)[:, None], axis=1)[:, 0]
            fits = (m <= most) & (end - start <= room)
            size = np.where(fits, m, size)
            length = np.where(fits, end - start, length)
        in_span = (col >= w[:, None]) & (col < (w + size)[:, None])
        take = live & (size > 0) & ~(taken & in_span).any(axis=1)
        taken |= in_span & take[:, None]
        room -= np.where(take, length, 0)
    return taken


def _greedy_np(lengths, valid, n):
    """Which words (in their random order) are taken: each word that still fits in n.

    Same result as the sequential walk, in few vectorised steps: the words before the first one
    that does not fit are all taken (a cumulative sum); after that the room left only shrinks, so
    each further step takes the next word that fits, at most `room` steps."""
    seq = lengths.shape[1]
    taken = valid & (np.cumsum(np.where(valid, lengths, 0), axis=1) <= n[:, None])
    # Valid words come first in the order, so the prefix ends at the first word not taken.
    last = np.argmin(np.concatenate([taken, np.zeros_like(taken[:, :1])], axis=1), axis=1) - 1
    room = n - np.where(taken, lengths, 0).sum(axis=1)
    col = np.arange(seq)[None, :]
    while True:
        fits = valid & (col > last[:, None]) & (lengths <= room[:, None]) & (room[:, None] > 0)
        any_fit = fits.any(axis=1)
        if not any_fit.any():
            return taken
        nxt = np.argmax(fits, axis=1)
        rows = np.flatnonzero(any_fit)
        taken[rows, nxt[rows]] = True
        room[rows] -= lengths[rows, nxt[rows]]
        last[rows] = nxt[rows]


def mask_batch_np(tokens: np.ndarray, lengths: np.ndarray, example_ids: np.ndarray, epochs,
                  seed: int, spec: MaskSpec) -> dict[str, np.ndarray]:
    """tokens [N, S] (padded), lengths [N], example_ids [N] int64, epochs scalar or [N].
    Returns input_ids (masked), masked_lm_positions, masked_lm_ids, masked_lm_weights."""
    tokens = np.asarray(tokens, dtype=np.int32)
    n_rows, seq = tokens.shape
    if seq >= MAX_SEQ_LENGTH:
        raise ValueError(f"sequences of {seq} tokens are longer than masking supports")
    pmax = spec.max_predictions
    lengths = np.asarray(lengths, dtype=np.int32)
    epochs = np.broadcast_to(np.asarray(epochs, dtype=np.int64), (n_rows,))
    keys = _row_keys_np(seed, epochs, example_ids)
    pos = np.arange(seq, dtype=np.int64)[None, :]
    cand = (pos < lengths[:, None]) & (tokens != spec.cls_id) & (tokens != spec.sep_id)
    n = budget_np(lengths, cand.sum(axis=1), spec)

    order = ((_hash_np(keys, _ORDER, seq) >> _U64(24)).astype(np.int64) << _POS_BITS) | (
        (MAX_SEQ_LENGTH - 1) - pos)
    action = (_hash_np(keys, _ACTION, seq) >> _U64(64 - _DRAW_BITS)).astype(np.int64)
    pick = ((_hash_np(keys, _REPLACE, seq) >> _U64(1)).astype(np.int64)
            % len(spec.replacement_ids))
    rows = np.arange(n_rows)[:, None]

    if spec.whole_word or spec.ngram > 1:
        cont = spec.is_continuation[tokens] & cand if spec.whole_word else np.zeros_like(cand)
        prev_cand = np.concatenate([np.zeros((n_rows, 1), bool), cand[:, :-1]], axis=1)
        start = cand & ~(cont & prev_cand)
        word = np.cumsum(start, axis=1) - 1  # word index of each position (valid on candidates)
        start_key = np.where(start, seq - pos, 0)
        start_pos = seq - _desc_topk_np(start_key, seq)[0]  # start of word w at column w (if any)
        has_word = start_pos < seq
        start_pos = np.where(has_word, start_pos, 0)
        flat = (rows * seq + np.where(cand, word, 0)).ravel()
        word_len = np.bincount(flat, weights=cand.ravel(), minlength=n_rows * seq)
        word_len = word_len.reshape(n_rows, seq).astype(np.int64)
        word_score = np.where(has_word, np.take_along_axis(order, start_pos, axis=1), -1)
        sorted_score, sorted_word = _desc_topk_np(word_score, seq)
        if spec.ngram > 1:
            draw = (_hash_np(keys, _SPAN, seq) >> _U64(64 - _DRAW_BITS)).astype(np.int64)
            span = 1 + sum((draw >= t).astype(np.int64) for t in span_thresholds(spec.ngram))
            span = np.take_along_axis(span, start_pos, axis=1)  # word w's draw, at column w
            word_taken = _ngram_np(word_len, has_word.sum(axis=1), sorted_word,
                                   sorted_score >= 0, span, n, spec.ngram)
        else:
            sorted_len = np.take_along_axis(word_len, sorted_word, axis=1)
            taken = _greedy_np(sorted_len, sorted_score >= 0, n)
            word_taken = np.zeros((n_rows, seq), bool)
            np.put_along_axis(word_taken, sorted_word, taken, axis=1)
        selected = cand & np.take_along_axis(word_taken, np.where(cand, word, 0), axis=1)
        word_start = np.take_along_axis(start_pos, np.where(cand, word, 0), axis=1)
        action = np.take_along_axis(action, word_start, axis=1)
    else:
        score = np.where(cand, order, -1)
        top = _desc_topk_np(score, pmax)[0]
        threshold = np.take_along_axis(top, np.maximum(n - 1, 0)[:, None], axis=1)
        selected = cand & (score >= threshold) & (n[:, None] > 0)

    replaced = spec.replacement_ids[pick]
    out = np.where(selected & (action < KEEP_FROM), spec.mask_id, tokens)
    out = np.where(selected & (action >= RANDOM_FROM), replaced, out).astype(np.int32)
    key = np.where(selected, seq - pos, 0)
    top = _desc_topk_np(key, pmax)[0]
    weight = top > 0
    positions = np.where(weight, seq - top, 0).astype(np.int32)
    ids = np.where(weight, np.take_along_axis(tokens, positions, axis=1), 0).astype(np.int32)
    return {"input_ids": out, "masked_lm_positions": positions, "masked_lm_ids": ids,
            "masked_lm_weights": weight.astype(np.float32)}


# ------------------------------------------------------------------------------------ tensorflow


def _mix_tf(tf, x):
    u = tf.uint64
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(30, u)))
    x = x * tf.constant(_M1, u)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(27, u)))
    x = x * tf.constant(_M2, u)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(31, u)))


def _u64_tf(tf, x):
    return tf.bitcast(tf.cast(x, tf.int64), tf.uint64)


def _row_keys_tf(tf, seed: int, epochs, example_ids):
    u = tf.uint64
    seed_u = np.asarray(seed, dtype=np.int64).astype(_U64)
    with np.errstate(over="ignore"):
        k0 = _mix_np(seed_u * _U64(_M1) + _U64(_GOLDEN))
    k = tf.constant(int(k0), u)
    k = _mix_tf(tf, tf.bitwise.bitwise_xor(
        k, _u64_tf(tf, epochs) * tf.constant(_M2, u) + tf.constant(_GOLDEN, u)))
    return _mix_tf(tf, tf.bitwise.bitwise_xor(
        k, _u64_tf(tf, example_ids) * tf.constant(_GOLDEN, u) + tf.constant(_M1, u)))


def _hash_tf(tf, keys, stream: int, length: int):
    u = tf.uint64
    k = _mix_tf(tf, keys + tf.constant(stream, u) * tf.constant(_M2, u))
    pos = tf.range(1, length + 1, dtype=tf.int64)
    pos = _u64_tf(tf, pos) * tf.constant(_GOLDEN, u)
    return _mix_tf(tf, k[:, None] + pos[None, :])


def _shift_to_i64(tf, x, bits: int):
    return tf.cast(tf.bitwise.right_shift(x, tf.constant(bits, tf.uint64)), tf.int64)


def _greedy_tf(tf, lengths, valid, n):
    """The TensorFlow twin of _greedy_np."""
    seq = int(lengths.shape[1])
    zero = tf.zeros_like(lengths)
    taken = valid & (tf.cumsum(tf.where(valid, lengths, zero), axis=1) <= n[:, None])
    padded = tf.concat([tf.cast(taken, tf.int32), tf.zeros_like(taken[:, :1], tf.int32)], axis=1)
    last = tf.argmin(padded, axis=1, output_type=tf.int64) - 1
    room = n - tf.reduce_sum(tf.where(taken, lengths, zero), axis=1)
    col = tf.range(seq, dtype=tf.int64)[None, :]

    def fits_of(last, room):
        return valid & (col > last[:, None]) & (lengths <= room[:, None]) & (room[:, None] > 0)

    def cond(taken, last, room):
        return tf.reduce_any(fits_of(last, room))

    def body(taken, last, room):
        fits = fits_of(last, room)
        any_fit = tf.reduce_any(fits, axis=1)
        nxt = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int64)
        hit = fits & tf.equal(col, nxt[:, None]) & any_fit[:, None]
        taken = taken | hit
        room = room - tf.reduce_sum(tf.where(hit, lengths, zero), axis=1)
        last = tf.where(any_fit, nxt, last)
        return taken, last, room

    taken, _, _ = tf.while_loop(cond, body, (taken, last, room))
    return taken


def _ngram_tf(tf, word_len, num_words, sorted_word, valid, span, n, ngram):
    """The TensorFlow twin of _ngram_np."""
    seq = int(word_len.shape[1])
    rows_n = tf.shape(word_len)[0]
    cum = tf.concat([tf.zeros([rows_n, 1], tf.int64), tf.cumsum(word_len, axis=1)], axis=1)
    col = tf.range(seq, dtype=tf.int64)[None, :]
    zero = tf.zeros([rows_n], tf.int64)

    def cond(k, taken, room):
        return (k < seq) & tf.reduce_any(tf.gather(valid, tf.minimum(k, seq - 1), axis=1)
                                         & (room > 0))

    def body(k, taken, room):
        w = tf.cast(sorted_word[:, k], tf.int64)
        live = valid[:, k] & (room > 0)
        most = tf.minimum(tf.gather(span, w, batch_dims=1), num_words - w)
        start = tf.gather(cum, w, batch_dims=1)
        size, length = zero, zero
        for m in range(1, ngram + 1):
            end = tf.gather(cum, tf.minimum(w + m, seq), batch_dims=1)
            fits = (m <= most) & (end - start <= room)
            size = tf.where(fits, tf.cast(m, tf.int64) + zero, size)
            length = tf.where(fits, end - start, length)
        in_span = (col >= w[:, None]) & (col < (w + size)[:, None])
        take = live & (size > 0) & ~tf.reduce_any(taken & in_span, axis=1)
        taken = taken | (in_span & take[:, None])
        room = room - tf.where(take, length, zero)
        return k + 1, taken, room

    taken = tf.zeros([rows_n, seq], tf.bool)
    # The walk stops where _ngram_np's does; later words could take nothing either way.
    _, taken, _ = tf.while_loop(cond, body, (tf.constant(0), taken, tf.cast(n, tf.int64)))
    return taken


def mask_batch_tf(tokens, lengths, example_ids, epochs, seed: int, spec: MaskSpec):
    """The TensorFlow twin of mask_batch_np, for tf.data maps over batches. tokens [N, S] int32
    with a static S; lengths [N]; example_ids, epochs [N] int64."""
    from bertjax.data.tf_runtime import tf  # prepare masks with NumPy: no TensorFlow import

    tokens = tf.convert_to_tensor(tokens, tf.int32)
    seq = int(tokens.shape[1])
    pmax = spec.max_predictions
    n_rows = tf.shape(tokens)[0]
    keys = _row_keys_tf(tf, seed, epochs, example_ids)
    pos = tf.range(seq, dtype=tf.int64)[None, :]
    lengths = tf.cast(lengths, tf.int64)
    cand = (pos < lengths[:, None]) & tf.not_equal(tokens, spec.cls_id) & tf.not_equal(
        tokens, spec.sep_id)
    num_cand = tf.reduce_sum(tf.cast(cand, tf.int64), axis=1)
    base = lengths if spec.budget == "sequence" else num_cand
    # tf.round is half to even, like budget_np and Python 3's round.
    n = tf.cast(tf.round(tf.cast(base, tf.float64) * spec.rate), tf.int64)
    n = tf.minimum(tf.minimum(tf.maximum(n, 1), pmax), num_cand)

    order = tf.bitwise.bitwise_or(
        tf.bitwise.left_shift(_shift_to_i64(tf, _hash_tf(tf, keys, _ORDER, seq), 24),
                              tf.constant(_POS_BITS, tf.int64)),
        (MAX_SEQ_LENGTH - 1) - pos)
    action = _shift_to_i64(tf, _hash_tf(tf, keys, _ACTION, seq), 64 - _DRAW_BITS)
    pick = tf.math.floormod(_shift_to_i64(tf, _hash_tf(tf, keys, _REPLACE, seq), 1),
                            len(spec.replacement_ids))

    if spec.whole_word or spec.ngram > 1:
        if spec.whole_word:
            cont = tf.gather(tf.constant(spec.is_continuation, tf.bool), tokens) & cand
        else:
            cont = tf.zeros_like(cand)
        prev_cand = tf.concat([tf.zeros_like(cand[:, :1]), cand[:, :-1]], axis=1)
        start = cand & ~(cont & prev_cand)
        word = tf.cumsum(tf.cast(start, tf.int64), axis=1) - 1
        safe_word = tf.where(cand, word, 0)
        start_key = tf.where(start, seq - pos, 0)
        start_pos = seq - tf.math.top_k(start_key, seq).values
        has_word = start_pos < seq
        start_pos = tf.where(has_word, start_pos, 0)
        flat = tf.reshape(tf.range(tf.cast(n_rows, tf.int64))[:, None] * seq + safe_word, [-1])
        word_len = tf.math.unsorted_segment_sum(
            tf.reshape(tf.cast(cand, tf.int64), [-1]), flat, n_rows * seq)
        word_len = tf.reshape(word_len, [-1, seq])
        word_score = tf.where(has_word, tf.gather(order, start_pos, batch_dims=1), -1)
        top = tf.math.top_k(word_score, seq)
        sorted_score, sorted_word = top.values, top.indices
        if spec.ngram > 1:
            draw = _shift_to_i64(tf, _hash_tf(tf, keys, _SPAN, seq), 64 - _DRAW_BITS)
            span = 1 + sum(tf.cast(draw >= t, tf.int64) for t in span_thresholds(spec.ngram))
            span = tf.gather(span, start_pos, batch_dims=1)
            num_words = tf.reduce_sum(tf.cast(has_word, tf.int64), axis=1)
            word_taken = _ngram_tf(tf, word_len, num_words, sorted_word, sorted_score >= 0, span,
                                   n, spec.ngram)
        else:
            sorted_len = tf.gather(word_len, sorted_word, batch_dims=1)
            taken = _greedy_tf(tf, sorted_len, sorted_score >= 0, n)
            # Back from "k-th word in random order" to "word w": invert the permutation.
            inverse = tf.math.top_k(-sorted_word, seq).indices
            word_taken = tf.gather(taken, inverse, batch_dims=1)
        selected = cand & tf.gather(word_taken, safe_word, batch_dims=1)
        word_start = tf.gather(start_pos, safe_word, batch_dims=1)
        action = tf.gather(action, word_start, batch_dims=1)
    else:
        score = tf.where(cand, order, -1)
        top = tf.math.top_k(score, pmax).values
        threshold = tf.gather(top, tf.maximum(n - 1, 0), batch_dims=1)
        selected = cand & (score >= threshold[:, None]) & (n[:, None] > 0)

    replaced = tf.gather(tf.constant(spec.replacement_ids, tf.int32), pick)
    out = tf.where(selected & (action < KEEP_FROM), spec.mask_id, tokens)
    out = tf.where(selected & (action >= RANDOM_FROM), replaced, out)
    key = tf.where(selected, seq - pos, 0)
    top = tf.math.top_k(key, pmax).values
    weight = top > 0
    positions = tf.cast(tf.where(weight, seq - top, 0), tf.int32)
    ids = tf.where(weight, tf.gather(tokens, positions, batch_dims=1), 0)
    return {"input_ids": out, "masked_lm_positions": positions, "masked_lm_ids": ids,
            "masked_lm_weights": tf.cast(weight, tf.float32)}
