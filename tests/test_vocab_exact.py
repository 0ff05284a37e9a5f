"""The exact WordPiece trainer (`train_vocab --exact`): the demo's vocabulary must come out the
same to the byte on every fresh clone, which the Rust trainer does not promise (its ties between
equally frequent pairs follow hash-map order)."""
import hashlib
import os
import subprocess
import sys

from bertjax.text.train_vocab import SPECIAL_TOKENS, train_vocab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vocab(tmp_path, text, size, name="v"):
    corpus = tmp_path / f"{name}.txt"
    corpus.write_text(text)
    out = tmp_path / name
    train_vocab(str(corpus), "wordpiece", size, str(out), fmt="text", exact=True, min_frequency=1)
    return (out / "vocab.txt").read_text().split("\n")[:-1]


def test_merges_by_hand(tmp_path):
    # "ab" x3 and "abc" x1 -> pieces a ##b ##c; pair (a, ##b) occurs 4 times, so "ab" comes first,
    # then (ab, ##c) once gives "abc". Words before "##" pieces, each group sorted.
    assert _vocab(tmp_path, "ab ab ab abc\n", 10) == [*SPECIAL_TOKENS, "a", "ab", "abc", "##b", "##c"]
    # One merge left in the budget: only the most frequent pair.
    assert _vocab(tmp_path, "ab ab ab abc\n", 9, "w") == [*SPECIAL_TOKENS, "a", "ab", "##b", "##c"]


def test_a_tie_goes_to_the_pair_that_sorts_first(tmp_path):
    # (c, ##d) and (a, ##b) both occur once; with room for one merge the text order decides.
    got = _vocab(tmp_path, "cd ab\n", 10)
    assert got == [*SPECIAL_TOKENS, "a", "ab", "c", "##b", "##d"]


def test_same_bytes_in_fresh_processes(tmp_path):
    """Two trainings in separate interpreters with different string-hash seeds write the same
    file: set and dict orders differ between them, so only a tie rule that ignores them passes."""
    from bertjax.bench.data import synthetic_corpus

    corpus_glob, _ = synthetic_corpus(str(tmp_path / "c"), files=2, docs_per_file=40,
                                      vocab_words=300, continuation_share=0.5, seed=3)
    digests = []
    for seed in ("1", "2"):
        out = tmp_path / f"v{seed}"
        r = subprocess.run([sys.executable, "-m", "bertjax.text.train_vocab", f"--input={corpus_glob}",
                            "--kind=wordpiece", "--vocab_size=420", "--exact", f"--out={out}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PYTHONHASHSEED=seed))
        assert r.returncode == 0, r.stderr
        digests.append(hashlib.sha256((out / "vocab.txt").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert len((tmp_path / "v1" / "vocab.txt").read_text().split("\n")) - 1 == 420
