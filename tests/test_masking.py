"""Masked-LM selection: numpy and TensorFlow agree bit for bit; counts, rates, whole words, specials,
padding, and determinism from (seed, epoch, example id)."""
import numpy as np
import pytest

from bertjax.data import masking

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 500
CONT = np.zeros(VOCAB, bool)
CONT[400:] = True  # ids 400.. are "##" continuation pieces


def spec(whole_word=False, p=20, rate=0.15, budget="sequence"):
    return masking.MaskSpec(
        max_predictions=p, rate=rate, whole_word=whole_word, cls_id=CLS, sep_id=SEP, mask_id=MASK,
        replacement_ids=masking.replacement_ids(VOCAB, [PAD, UNK, CLS, SEP, MASK]),
        is_continuation=CONT, budget=budget)


def original_count(length, rate, p):
    """google-research/bert create_pretraining_data.py, written out: `tokens` is the whole
    [CLS] A [SEP] B [SEP] list, Python 3's round, and the walk stops when candidates run out."""
    return min(p, max(1, int(round(length * rate))))


def batch(n=512, s=128, seed=0):
    """[CLS] A [SEP] B [SEP] rows of random length with multi-piece words, padded."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, s), np.int32)
    lengths = rng.integers(8, s + 1, n)
    for i, length in enumerate(lengths):
        body = rng.integers(5, 400, length)
        cont = rng.random(length) < 0.35
        body = np.where(cont, rng.integers(400, VOCAB, length), body)
        tokens[i, :length] = body
        tokens[i, 0] = CLS
        tokens[i, length // 2] = SEP
        tokens[i, length - 1] = SEP
    return tokens, lengths.astype(np.int32), np.arange(n, dtype=np.int64) * 977 + 5


def candidates(tokens, lengths):
    pos = np.arange(tokens.shape[1])[None, :]
    return (pos < lengths[:, None]) & (tokens != CLS) & (tokens != SEP)


def words_of(tokens, cand):
    """Lists of positions per word, as whole-word masking groups them."""
    out = []
    for row, c in zip(tokens, cand):
        words, current = [], None
        for j, (t, ok) in enumerate(zip(row, c)):
            if not ok:
                current = None
                continue
            if CONT[t] and current is not None:
                current.append(j)
            else:
                current = [j]
                words.append(current)
        out.append(words)
    return out


@pytest.mark.parametrize("whole_word,budget", [(False, "sequence"), (True, "sequence"),
                                               (False, "candidates")])
def test_numpy_and_tensorflow_agree(whole_word, budget):
    import tensorflow as tf

    tokens, lengths, ids = batch(256)
    epochs = np.full(256, 3, np.int64)
    sp = spec(whole_word, budget=budget)
    a = masking.mask_batch_np(tokens, lengths, ids, epochs, 11, sp)
    b = masking.mask_batch_tf(tf.constant(tokens), tf.constant(lengths), tf.constant(ids),
                              tf.constant(epochs), 11, sp)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key].numpy(), err_msg=key)
        assert b[key].dtype == (tf.float32 if key == "masked_lm_weights" else tf.int32)


def test_counts_rates_and_padding():
    tokens, lengths, ids = batch(2000)
    sp = spec(p=20)
    m = masking.mask_batch_np(tokens, lengths, ids, 0, 1, sp)
    cand = candidates(tokens, lengths)
    n_cand = cand.sum(1)
    want = [min(original_count(int(n), 0.15, 20), int(c)) for n, c in zip(lengths, n_cand)]
    got = m["masked_lm_weights"].sum(1)
    np.testing.assert_array_equal(got, want)
    assert abs(got.sum() / np.minimum(lengths * 0.15, 20).sum() - 1) < 0.01
    pos, w = m["masked_lm_positions"], m["masked_lm_weights"] > 0
    for row in range(len(tokens)):
        k = int(w[row].sum())
        assert w[row, :k].all() and not w[row, k:].any()  # real entries first, then padding
        assert np.all(np.diff(pos[row, :k]) > 0)  # sorted, distinct
        assert cand[row, pos[row, :k]].all()  # never [CLS], [SEP] or padding
        assert (pos[row, k:] == 0).all() and (m["masked_lm_ids"][row, k:] == 0).all()
    np.testing.assert_array_equal(np.where(w, np.take_along_axis(tokens, pos, 1), 0),
                                  m["masked_lm_ids"])
    chosen = np.take_along_axis(m["input_ids"], pos, 1)[w]
    original = m["masked_lm_ids"][w]
    as_mask = (chosen == MASK).mean()
    kept = (chosen == original).mean()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02
    assert abs((1 - as_mask - kept) - 0.1) < 0.02
    assert not np.isin(chosen, [PAD, UNK, CLS, SEP]).any()
    # Outside the chosen positions nothing changes.
    changed = m["input_ids"] != tokens
    in_chosen = np.zeros_like(changed)
    np.put_along_axis(in_chosen, pos, w, axis=1)
    assert not (changed & ~in_chosen).any()


def test_whole_words_are_chosen_and_decided_together():
    tokens, lengths, ids = batch(1000, seed=1)
    m = masking.mask_batch_np(tokens, lengths, ids, 2, 5, spec(whole_word=True))
    cand = candidates(tokens, lengths)
    n = [original_count(int(length), 0.15, 20) for length in lengths]
    w = m["masked_lm_weights"] > 0
    decisions = {"mask": 0, "other": 0}
    for row, words in enumerate(words_of(tokens, cand)):
        chosen = set(m["masked_lm_positions"][row][w[row]].tolist())
        assert len(chosen) <= n[row]
        # Every word that would still fit was taken: greedy fill up to n.
        room = n[row] - len(chosen)
        assert all(len(wd) > room for wd in words if not set(wd) & chosen)
        for wd in words:
            hit = [j in chosen for j in wd]
            assert all(hit) or not any(hit), "a word was split"
            if all(hit):
                is_mask = [m["input_ids"][row, j] == MASK for j in wd]
                assert all(is_mask) or not any(is_mask), "80/10/10 decided per piece"
                decisions["mask" if is_mask[0] else "other"] += 1
    share = decisions["mask"] / sum(decisions.values())
    assert abs(share - 0.8) < 0.03


def test_greedy_matches_a_sequential_walk():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 6, (300, 40))
    valid = np.arange(40)[None, :] < rng.integers(0, 41, 300)[:, None]
    n = rng.integers(1, 25, 300)
    got = masking._greedy_np(lengths, valid, n)
    for r in range(300):
        count, want = 0, []
        for k in range(40):
            take = bool(valid[r, k]) and count + lengths[r, k] <= n[r]
            count += lengths[r, k] if take else 0
            want.append(take)
        assert got[r].tolist() == want


def test_masks_depend_only_on_seed_epoch_and_example_id():
    tokens, lengths, ids = batch(64, seed=2)
    sp = spec(whole_word=True)
    a = masking.mask_batch_np(tokens, lengths, ids, 1, 9, sp)
    perm = np.random.default_rng(0).permutation(64)
    b = masking.mask_batch_np(tokens[perm], lengths[perm], ids[perm], 1, 9, sp)
    for key in a:
        np.testing.assert_array_equal(a[key][perm], b[key])  # batch order does not matter
    c = masking.mask_batch_np(tokens, lengths, ids, 2, 9, sp)
    d = masking.mask_batch_np(tokens, lengths, ids, 1, 10, sp)
    assert (a["masked_lm_positions"] != c["masked_lm_positions"]).any(axis=1).mean() > 0.9
    assert (a["masked_lm_positions"] != d["masked_lm_positions"]).any(axis=1).mean() > 0.9


def test_cap_by_max_predictions_and_high_rate():
    tokens, lengths, ids = batch(200, seed=4)
    m = masking.mask_batch_np(tokens, lengths, ids, 0, 0, spec(p=5, rate=0.4))
    want = [original_count(int(length), 0.4, 5) for length in lengths]
    np.testing.assert_array_equal(m["masked_lm_weights"].sum(1), want)
    assert m["masked_lm_positions"].shape == (200, 5)


@pytest.mark.parametrize("whole_word", [False, True])
def test_budget_rounds_half_to_even_on_the_whole_sequence(whole_word):
    """Lengths whose 15% share lands on .5 (10 -> 1.5, 30 -> 4.5, 50 -> 7.5) are where the
    original's Python 3 round differs from rounding half up; every length 4..128 is checked."""
    import tensorflow as tf

    s = 128
    lengths = np.arange(4, s + 1, dtype=np.int32)
    tokens = np.zeros((len(lengths), s), np.int32)
    for i, length in enumerate(lengths):
        tokens[i, :length] = 7  # one-piece words, so whole-word masking can fill the budget
        tokens[i, 0], tokens[i, length // 2], tokens[i, length - 1] = CLS, SEP, SEP
    ids = np.arange(len(lengths), dtype=np.int64)
    want = [original_count(int(n), 0.15, 20) for n in lengths]
    assert [want[n - 4] for n in (10, 30, 50)] == [2, 4, 8]  # 1.5 -> 2, 4.5 -> 4, 7.5 -> 8
    sp = spec(whole_word)
    got_np = masking.mask_batch_np(tokens, lengths, ids, 0, 3, sp)["masked_lm_weights"].sum(1)
    got_tf = masking.mask_batch_tf(tf.constant(tokens), tf.constant(lengths), tf.constant(ids),
                                   tf.constant(np.zeros_like(ids)), 3, sp)["masked_lm_weights"]
    np.testing.assert_array_equal(got_np, want)
    np.testing.assert_array_equal(got_tf.numpy().sum(1), want)
    # The candidates-only rule stays available and counts on the non-special tokens.
    old = masking.mask_batch_np(tokens, lengths, ids, 0, 3, spec(whole_word, budget="candidates"))
    want_old = [min(20, max(1, int(round((n - 3) * 0.15)))) for n in lengths]
    np.testing.assert_array_equal(old["masked_lm_weights"].sum(1), want_old)
