"""SQuAD reading, answer offset mapping over sliding windows, max-context bookkeeping, span
decoding back to passage text, and the decode-then-score path end to end."""
import json

import numpy as np
import pytest
import toy_tasks as toy

from bertjax.data.tasks import squad
from bertjax.errors import UserError
from bertjax.evaluate import squad_metrics as M



@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return toy.toy_tokenizer(str(tmp_path_factory.mktemp("vocab")))


def _squad_file(path, context, qas, version="1.1"):
    payload = {"version": version,
               "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}
    path.write_text(json.dumps(payload), encoding="utf-8")
    return str(path)


def _qa(qid, question, context, answer, occurrence=0):
    start = -1
    for _ in range(occurrence + 1):
        start = context.index(answer, start + 1)
    return {"id": qid, "question": question, "answers": [{"text": answer, "answer_start": start}]}


WORDS = ("alpha beta gamma the cat sits on the mat near the big red house and then the dog "
         "runs quickly to the green tree .")


def test_answer_cut_by_a_window_is_whole_in_another(tmp_path, tok):
    # 25 one-piece words; a 6-piece question leaves 20 - 6 - 3 = 11 passage pieces per window,
    # and a stride of 8 gives windows over pieces 0-10, 8-18 and 16-24. "the big red" (pieces
    # 10-12) is cut by the first window and whole in the second.
    path = _squad_file(tmp_path / "s.json", WORDS,
                       [_qa("q1", "where does the dog live ?", WORDS, "the big red")])
    (ex,) = squad.read_squad(path, is_training=True)
    assert (ex.start_word, ex.end_word) == (10, 12)
    f = squad.featurize([ex], tok, max_seq_length=20, doc_stride=8, max_query_length=64,
                        is_training=True)
    offset = 6 + 2
    assert len(f) == 3
    assert f.arrays["start_positions"].tolist() == [0, 10 - 8 + offset, 0]
    assert f.arrays["end_positions"].tolist() == [0, 12 - 8 + offset, 0]
    s, e = f.arrays["start_positions"][1], f.arrays["end_positions"][1]
    assert tok.convert_ids_to_tokens(f.arrays["input_ids"][1, s:e + 1]) == ["the", "big", "red"]
    # The first window holds "the" (piece 10) at its last position: that is the cut.
    assert f.token_to_piece[0, offset + 10] == 10 and f.token_to_piece[0, offset + 11] == -1
    assert f.token_to_word[1, s] == 10
    assert (f.arrays["segment_ids"][1, :offset] == 0).all()
    assert (f.arrays["segment_ids"][1, offset:offset + 12] == 1).all()


def test_max_context_marks_each_piece_once(tmp_path, tok):
    path = _squad_file(tmp_path / "s.json", WORDS, [_qa("q1", "where ?", WORDS, "cat")])
    ex = squad.read_squad(path, is_training=True)
    f = squad.featurize(ex, tok, max_seq_length=16, doc_stride=3, max_query_length=64,
                        is_training=True)
    counts = np.zeros(len(f.pieces[0]), int)
    for row in range(len(f)):
        pieces = f.token_to_piece[row][f.max_context[row]]
        np.add.at(counts, pieces, 1)
    assert (counts == 1).all()
    # Windows hold 16 - 2 - 3 = 11 pieces and start at 0, 3, 6, ...; piece 3 has
    # min(3, 7) = 3 pieces of context on its shorter side in the first, min(0, 10) = 0 in the
    # second.
    offset = 1 + 2 + 1
    assert f.max_context[0, offset + 3] and not f.max_context[1, offset + 0]


def test_answer_inside_a_word_is_tightened_and_decoded_verbatim(tmp_path, tok):
    context = "Tesla (1856-1943) was born in Smiljan."
    path = _squad_file(tmp_path / "s.json", context,
                       [_qa("q1", "who ?", context, "1856"), _qa("q2", "where ?", context,
                                                               "Smiljan")])
    examples = squad.read_squad(path, is_training=True)
    f = squad.featurize(examples, tok, max_seq_length=64, doc_stride=32, is_training=True)
    s, e = f.arrays["start_positions"][0], f.arrays["end_positions"][0]
    assert tok.convert_ids_to_tokens(f.arrays["input_ids"][0, s:e + 1]) == \
        ["1", "##8", "##5", "##6"]
    # Oracle logits at the training positions decode to the original text, without "(" or ".".
    start = np.full(f.token_to_piece.shape, -5.0)
    end = np.full(f.token_to_piece.shape, -5.0)
    for row in range(len(f)):
        start[row, f.arrays["start_positions"][row]] = 5.0
        end[row, f.arrays["end_positions"][row]] = 5.0
    out = M.postprocess(examples, f, start, end)
    assert out.predictions == {"q1": "1856", "q2": "Smiljan"}


def _pieces(tok, context):
    """(example, word pieces of its words, the word index of every piece)."""
    ex = squad.SquadExample("q", "?", context, *squad.split_words(context), answers=[])
    pieces, p2w = [], []
    for w, word in enumerate(ex.words):
        for p in tok.tokenize(word):
            pieces.append(p)
            p2w.append(w)
    return ex, pieces, p2w


def test_span_text_keeps_original_case_accents_and_cuts_inside_words(tok):
    ex, pieces, p2w = _pieces(tok, "Café Zürich was unbelievable, said Paris™ critics.")
    def piece_index(word, k=0):
        return p2w.index(word) + k
    zurich = piece_index(1)
    assert pieces[zurich] == "z"  # accents stripped and lower-cased by the tokenizer
    assert M.span_text(ex, pieces, p2w, zurich, zurich + 5) == "Zürich"
    unbel = piece_index(3)
    assert pieces[unbel + 2:unbel + 5] == ["##b", "##e", "##l"]
    assert M.span_text(ex, pieces, p2w, unbel + 2, unbel + 4) == "bel"
    # "unbelievable," -> the comma is its own piece and is left out of a span ending before it.
    last = max(i for i, w in enumerate(p2w) if w == 3) - 1
    assert M.span_text(ex, pieces, p2w, unbel, last) == "unbelievable"
    # An [UNK] word cannot be aligned piece by piece; the whole original word comes back.
    unk = piece_index(5)
    assert pieces[unk] == "[UNK]"
    assert M.span_text(ex, pieces, p2w, unk, unk) == "Paris™"
    # "was" is not a toy word: w ##a ##s; a span ending on ##a ends inside it.
    assert M.span_text(ex, pieces, p2w, zurich, zurich + 7) == "Zürich wa"


def _windows_for(tok, context, question="where ?", **kw):
    ex = squad.SquadExample("q1", question, context, *squad.split_words(context),
                            answers=["x"])
    return [ex], squad.featurize([ex], tok, **kw)


def test_postprocess_respects_max_answer_length_and_n_best(tok):
    context = "the cat sits on the mat near the big red house"
    examples, f = _windows_for(tok, context, max_seq_length=32, doc_stride=16)
    off = 1 + 2 + 1  # [CLS] where ? [SEP]
    rng = np.random.default_rng(0)
    start = rng.normal(0, 0.1, (1, 32))
    end = rng.normal(0, 0.1, (1, 32))
    start[0, off + 1], end[0, off + 10] = 9.0, 9.0   # "cat ... house": 10 pieces
    end[0, off + 2] = 5.0                            # "cat sits"
    out = M.postprocess(examples, f, start, end, max_answer_length=5, n_best=4)
    assert out.predictions["q1"] == "cat sits"
    out = M.postprocess(examples, f, start, end, max_answer_length=30, n_best=4)
    assert out.predictions["q1"] == "cat sits on the mat near the big red house"
    nbest = out.nbest["q1"]
    assert len(nbest) == 4 and len({x["text"] for x in nbest}) == 4
    assert sum(x["probability"] for x in nbest) == pytest.approx(1.0)
    assert [x["score"] for x in nbest] == sorted((x["score"] for x in nbest), reverse=True)
    # Spans outside the passage (question, [CLS], padding) are never answers.
    start[0, 1], end[0, 1] = 50.0, 50.0
    assert M.postprocess(examples, f, start, end).predictions["q1"] == \
        "cat sits on the mat near the big red house"


def test_v2_null_score_and_threshold(tok):
    context = "the cat sits on the mat"
    examples, f = _windows_for(tok, context, max_seq_length=32, doc_stride=16)
    off = 4
    start = np.zeros((1, 32))
    end = np.zeros((1, 32))
    start[0, 0], end[0, 0] = 3.0, 3.0                # null score 6
    start[0, off + 1], end[0, off + 1] = 2.5, 2.5    # "cat": 5
    out = M.postprocess(examples, f, start, end, version_2=True, null_threshold=0.0)
    assert out.null_odds["q1"] == pytest.approx(1.0)
    assert out.predictions["q1"] == "" and out.best_non_null["q1"] == "cat"
    assert any(x["text"] == "" for x in out.nbest["q1"])
    out = M.postprocess(examples, f, start, end, version_2=True, null_threshold=1.5)
    assert out.predictions["q1"] == "cat"
    # The default is the official script's 1.0, and "no answer" needs odds strictly above it.
    out = M.postprocess(examples, f, start, end, version_2=True)
    assert out.predictions["q1"] == "cat"
    assert M.apply_null_threshold(out.best_non_null, out.null_odds, 0.5) == {"q1": ""}


@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_toy_squad_round_trip_scores_perfectly_with_oracle_logits(tmp_path, version, tok):
    path = toy.make_toy_squad(str(tmp_path / "toy.json"), version, n_paragraphs=3)
    train = squad.read_squad(path, is_training=True)
    dev = squad.read_squad(path, is_training=False)
    ft = squad.featurize(train, tok, 48, doc_stride=16, max_query_length=12, is_training=True)
    fe = squad.featurize(dev, tok, 48, doc_stride=16, max_query_length=12)
    assert "start_positions" not in fe.arrays and len(ft) == len(fe) > len(dev)
    start = np.where(np.arange(48) == ft.arrays["start_positions"][:, None], 8.0, -8.0)
    end = np.where(np.arange(48) == ft.arrays["end_positions"][:, None], 8.0, -8.0)
    v2 = version == "2.0"
    out = M.postprocess(dev, fe, start, end, version_2=v2)
    res = M.evaluate(M.gold_answers(dev), out.predictions, out.null_odds if v2 else None)
    assert res["exact"] == 100.0 and res["f1"] == 100.0
    if v2:
        assert res["NoAns_total"] > 0 and res["best_f1"] == 100.0


def test_bad_input(tmp_path, tok):
    context = "Anna lives in Paris."
    bad = {"id": "q-bad", "question": "where ?", "answers": [{"text": "Paris",
                                                              "answer_start": 3}]}
    path = _squad_file(tmp_path / "bad.json", context, [bad])
    with pytest.raises(UserError, match="question q-bad: answer 'Paris' is not at answer_start 3"):
        squad.read_squad(path, is_training=True)
    # Evaluation only needs the gold texts.
    assert squad.read_squad(path, is_training=False)[0].answers == ["Paris"]
    no_answer = {"id": "q-none", "question": "where ?", "answers": []}
    path = _squad_file(tmp_path / "none.json", context, [no_answer])
    with pytest.raises(UserError, match="q-none has no answer"):
        squad.read_squad(path, is_training=True)
    with pytest.raises(UserError, match="SQuAD file not found"):
        squad.read_squad(str(tmp_path / "missing.json"), is_training=False)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        squad.read_squad(str(tmp_path / "junk.json"), is_training=False)
    ex, _ = _windows_for(tok, context, max_seq_length=32, doc_stride=8)
    with pytest.raises(UserError, match="leaves no room"):
        squad.featurize(ex, tok, max_seq_length=5, doc_stride=8)


def test_span_text_skips_characters_the_tokenizer_drops(tok):
    ex, pieces, p2w = _pieces(tok, "a co\u00adop\u200b run")
    assert pieces[1:5] == ["c", "##o", "##o", "##p"]
    assert M.span_text(ex, pieces, p2w, 2, 3) == "o\u00ado"
    assert M.span_text(ex, pieces, p2w, 1, 4) == "co\u00adop"
