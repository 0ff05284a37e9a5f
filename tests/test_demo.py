"""Pieces of `make demo` that decide what it claims: the pay-off verdict, the unlabelled gloss
corpus (no dev definition and no label order in it), and the whole-demo progress line."""
import io

from bertjax.demo import run as demo
from bertjax.demo import wordnet as demo_wordnet

# Three synsets in data.noun's layout: offset, lex file number, ..., "| gloss".
DATA_NOUN = """  1 This software and database is being provided to you, the LICENSEE, by
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived to exist; "the unit was whole"; "an entity"
00002137 05 n 01 animal 0 000 | a living organism that moves about; "the cat is an animal of sorts"
00003553 06 n 01 tool 0 000 | an implement used to do a piece of work
"""


def test_gloss_documents_leave_out_dev_and_keep_examples_with_their_definition(tmp_path):
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    docs = demo_wordnet.gloss_documents(str(tmp_path), exclude={"an implement used to do a piece of work"},
                                        per_document=6)
    assert len(docs) == 1
    (doc,) = docs
    assert "an implement used to do a piece of work" not in doc
    # Each definition is followed by its own example sentences (two words or fewer are dropped).
    i = doc.index("that which is perceived to exist")
    assert doc[i + 1] == "the unit was whole"
    j = doc.index("a living organism that moves about")
    assert doc[j + 1] == "the cat is an animal of sorts"
    assert sorted(doc) == sorted(["that which is perceived to exist", "the unit was whole",
                                  "a living organism that moves about",
                                  "the cat is an animal of sorts"])


def test_payoff_needs_the_worst_pretrained_seed_above_the_best_random_one():
    def runs(*vals):
        return {"runs": [{"best": v} for v in vals]}

    met = demo.payoff({"pretrained": runs(0.30, 0.28, 0.33), "random_init": runs(0.20, 0.27)})
    assert met["met"] and abs(met["margin"] - 0.01) < 1e-12
    tie = demo.payoff({"pretrained": runs(0.30, 0.27), "random_init": runs(0.27, 0.1)})
    assert not tie["met"]
    assert demo.payoff({}) == {}


def test_progress_follows_the_loop_lines_across_fine_tuning_runs(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(demo.sys, "stdout", out)
    p = demo.Progress(seeds=2)
    p.begin("finetune")
    # The loop pads the step number; a run's steps start again from the beginning.
    for line in ("step    10/100 | loss 1", "step   100/100 | loss 1", "step    10/100 | loss 1"):
        p.line(line)
    assert p.run == 1 and abs(p.frac - (1 + 0.1) / 4) < 1e-9
    p.show(force=True)
    assert "run 2/4 step 10/100" in out.getvalue().splitlines()[-1]
