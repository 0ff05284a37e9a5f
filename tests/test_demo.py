"""Pieces of `make demo` that decide what it claims: the pay-off verdict, the unlabelled gloss
corpus (no dev definition and no label order in it), and the whole-demo progress line."""
import io
import json

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
        return {"runs": [{"final": v} for v in vals]}

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


def _seed_dir(tmp_path, name, accs):
    d = tmp_path / name
    d.mkdir()
    lines = [{"step": 10 * (k + 1), "time": 0, "eval/accuracy": a} for k, a in enumerate(accs)]
    lines.insert(1, {"step": 15, "time": 0, "train/loss": 1.0})  # train lines carry no eval
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(d)


def test_final_accuracy_is_the_last_evaluation_not_the_best(tmp_path):
    summary = {"seeds": 2, "runs": [
        {"seed": 0, "best": 0.30, "workdir": _seed_dir(tmp_path, "s0", [0.1, 0.30, 0.25])},
        {"seed": 1, "best": 0.40, "workdir": _seed_dir(tmp_path, "s1", [0.2, 0.40, 0.35])}]}
    out = demo.final_accuracies(summary)
    assert [r["final"] for r in out["runs"]] == [0.25, 0.35]
    assert out["runs"][0]["final_step"] == 30
    assert out["runs"][1]["curve"] == [[10, 0.2], [20, 0.4], [30, 0.35]]
    assert abs(out["final_mean"] - 0.30) < 1e-12
    assert abs(out["final_std"] - 0.0707106781) < 1e-9  # sample std of 0.25, 0.35


def test_report_picture_is_written(tmp_path):
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text(json.dumps({"step": 10, "eval/mlm_accuracy": 0.1, "eval/nsp_accuracy": 0.6,
                                 "train/mlm_accuracy": 0.09}) + "\n")
    run = {"final": 0.3, "curve": [[10, 0.2], [20, 0.3]]}
    report = {"most_frequent_token_baseline": {"accuracy": 0.05},
              "labelled": {"train": 500, "dev_majority_share": 0.14},
              "finetune": {"pretrained": {"runs": [run]}, "random_init": {"runs": [run]}}}
    png = tmp_path / "report.png"
    demo.draw_report(str(jsonl), report, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
