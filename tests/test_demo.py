"""Pieces of `make demo` that decide what it claims: the pay-off verdict, the unlabelled gloss
corpus (no dev definition and no label order in it), and the whole-demo progress line."""
import io

from bertjax.demo import run as demo
from bertjax.demo import wordnet as demo_wordnet

# Synsets in data.noun's layout (wndb(5)): offset, lex file, type, word count (hex), words with
# their lex ids, pointer count, pointers (symbol, offset, pos, source/target), "| gloss".
DATA_NOUN = """  1 This software and database is being provided to you, the LICENSEE, by
00001740 03 n 01 entity 0 002 ~ 00002137 n 0000 ~ 00003553 n 0000 | that which is perceived to exist; "the unit was whole"; "an entity"
00002137 05 n 02 animal 0 animate_being 0 002 @ 00001740 n 0000 ~ 00004000 n 0000 | a living organism that moves about; "the cat is an animal of sorts"
00003553 06 n 01 tool 0 001 @ 00001740 n 0000 | an implement used to do a piece of work
00004000 05 n 01 dog 0 001 @ 00002137 n 0000 | a domesticated carnivorous mammal kept as a pet
00005000 06 n 01 hammer 0 001 @i 00003553 n 0000 | a hand tool with a heavy head on a handle
"""


def test_gloss_documents_are_a_dictionary_in_hypernym_order_without_the_dev_set(tmp_path):
    (tmp_path / "data.noun").write_text(DATA_NOUN)
    synsets = {s.offset: s for s in demo_wordnet.noun_synsets(str(tmp_path))}
    assert synsets[2137].words == ("animal", "animate being") and synsets[2137].hypernym == 1740
    assert synsets[5000].hypernym == 3553  # an instance hypernym counts
    assert synsets[1740].hypernym is None
    docs = demo_wordnet.gloss_documents(
        str(tmp_path), exclude={"an implement used to do a piece of work"}, per_document=2)
    # The root first, then the hyponyms of each synset side by side (entity's, animal's, tool's);
    # the dev definition is gone with its words, and each definition keeps its examples.
    assert docs == [
        ["entity: that which is perceived to exist", "the unit was whole",
         "animal, animate being: a living organism that moves about",
         "the cat is an animal of sorts"],
        ["dog: a domesticated carnivorous mammal kept as a pet",
         "hammer: a hand tool with a heavy head on a handle"]]
    assert not any("tool:" in s for doc in docs for s in doc)


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
