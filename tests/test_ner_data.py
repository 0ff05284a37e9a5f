"""CoNLL reading, first-sub-token labelling with words split into many pieces, long sentences
over several rows, and decoding back to word-level tags."""
import numpy as np
import pytest
import toy_tasks as toy

from bertjax.data.tasks import ner
from bertjax.errors import UserError
from bertjax.evaluate import conll_metrics as C



@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return toy.toy_tokenizer(str(tmp_path_factory.mktemp("vocab")))


def _file(tmp_path, text, name="train.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


CONLL = """-DOCSTART- -X- -X- O

Anna NNP B-NP B-PER
visited VBD B-VP O
Zyxwvu NNP B-NP B-LOC
Quorx NNP I-NP I-LOC
. . O O

-DOCSTART- -X- -X- O

Acme NNP B-NP B-ORG
rocks VBZ B-VP O
"""


def test_read_conll_skips_docstart_and_splits_sentences(tmp_path):
    sents = ner.read_conll(_file(tmp_path, CONLL))
    assert [s.tokens for s in sents] == [["Anna", "visited", "Zyxwvu", "Quorx", "."],
                                         ["Acme", "rocks"]]
    assert sents[0].tags == ["B-PER", "O", "B-LOC", "I-LOC", "O"]
    assert sents[0].lines == [3, 4, 5, 6, 7] and sents[1].lines == [11, 12]
    assert ner.label_list(sents) == ["O", "B-LOC", "B-ORG", "B-PER", "I-LOC"]


def test_first_sub_token_labelling_with_many_pieces(tmp_path, tok):
    sents = ner.read_conll(_file(tmp_path, CONLL))
    labels = ner.label_list(sents)
    f = ner.featurize(sents, tok, labels, max_seq_length=24)
    pieces = tok.convert_ids_to_tokens(f.arrays["input_ids"][0])
    # "visited", "Zyxwvu" and "Quorx" are not toy words: one piece per letter.
    n = int(f.arrays["input_mask"][0].sum())
    assert pieces[:n] == ["[CLS]", "anna", "v", "##i", "##s", "##i", "##t", "##e", "##d",
                          "z", "##y", "##x", "##w", "##v", "##u", "q", "##u", "##o", "##r",
                          "##x", ".", "[SEP]"]
    words = f.word_ids[0, :n].tolist()
    assert words == [-1, 0] + [1] * 7 + [2] * 6 + [3] * 5 + [4, -1]
    weights = f.arrays["label_weights"][0]
    first = [1, 2, 9, 15, 20]
    assert np.flatnonzero(weights).tolist() == first and weights.dtype == np.float32
    assert [labels[i] for i in f.arrays["labels"][0, first]] == sents[0].tags
    others = np.setdiff1d(np.arange(24), first)
    assert (f.arrays["labels"][0, others] == 0).all()
    assert (f.arrays["segment_ids"] == 0).all()
    assert f.sentence_index.tolist() == [0, 1]


def test_long_sentences_split_at_word_boundaries_and_decode_back(tok):
    words = ["Anna", "unbelievably", "lives", "in", "Paris", "near", "Chen"] * 3
    tags = ["B-PER", "O", "O", "O", "B-LOC", "O", "B-PER"] * 3
    sent = ner.NerSentence(words, tags, list(range(1, 22)), "mem")
    labels = ["O", "B-LOC", "B-PER"]
    f = ner.featurize([sent], tok, labels, max_seq_length=16)
    assert len(f) > 1 and (f.sentence_index == 0).all()
    # Every word is labelled exactly once across the rows, and no word is split between rows.
    seen = f.word_ids[f.arrays["label_weights"] > 0]
    assert sorted(seen.tolist()) == list(range(len(words)))
    for row in range(len(f)):
        ws = f.word_ids[row][f.word_ids[row] >= 0]
        for w in np.unique(ws):
            assert (ws == w).sum() == len(tok.tokenize(words[w]))
    # Oracle predictions (the labels themselves, and as one-hot logits) decode to the gold tags.
    assert ner.decode(f.arrays["labels"], f, labels, [sent]) == [tags]
    logits = np.eye(len(labels))[f.arrays["labels"]]
    assert ner.decode(logits, f, labels, [sent]) == [tags]


def test_words_without_pieces_and_overlong_words_still_get_a_prediction(tok):
    sent = ner.NerSentence(["Anna", "\ufffd", "x" * 40], ["B-PER", "O", "O"], [1, 2, 3], "m")
    labels = ["O", "B-PER"]
    f = ner.featurize([sent], tok, labels, max_seq_length=12)
    assert len(f) == 2  # the 40-piece word gets its own row, cut to 10 pieces
    assert sorted(f.word_ids[f.arrays["label_weights"] > 0].tolist()) == [0, 1, 2]
    pred = np.ones_like(f.arrays["labels"])  # predict B-PER everywhere
    assert ner.decode(pred, f, labels, [sent]) == [["B-PER"] * 3]


def test_toy_conll_end_to_end_scores_perfectly(tmp_path, tok):
    for scheme in ("iob1", "iob2"):
        paths = toy.make_toy_conll(str(tmp_path / scheme), n_train=20, n_dev=10, n_test=4,
                                   scheme=scheme)
        train, dev = ner.read_conll(paths["train"]), ner.read_conll(paths["dev"])
        labels = ner.label_list(train + dev)
        f = ner.featurize(dev, tok, labels, max_seq_length=32)
        pred = ner.decode(f.arrays["labels"], f, labels, dev)
        res = C.evaluate([s.tags for s in dev], pred)
        assert res.overall.f1 == 100.0 and res.overall.found_gold > len(dev)


def test_bad_input_names_file_line_and_tag(tmp_path, tok):
    path = _file(tmp_path, CONLL, "dev.txt")
    sents = ner.read_conll(path)
    with pytest.raises(UserError, match=r"dev\.txt:11: tag 'B-ORG' is not in the label list"):
        ner.featurize(sents, tok, ["O", "B-PER", "B-LOC", "I-LOC"], 32)
    with pytest.raises(UserError, match="NER file not found"):
        ner.read_conll(str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match=r"bad\.txt:2: expected 'token \.\.\. tag'"):
        ner.read_conll(_file(tmp_path, "Anna B-PER\nlonely\n", "bad.txt"))
