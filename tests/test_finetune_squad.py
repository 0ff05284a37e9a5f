"""SQuAD fine-tuning end to end on toy data (v1.1 and v2.0), and one-line failures on bad input."""
import json

import pytest
from finetune_support import (  # noqa: F401  (compile_cache is an autouse fixture)
    assert_one_line_failure,
    compile_cache,
    make_checkpoint,
    recipe,
    run_cli,
    tiny,
)

import toy_tasks as toy
from bertjax.errors import UserError
from bertjax.evaluate import squad_metrics
from bertjax.finetuning import run as ft_run


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("pretrained")))


def _squad_cfg(version, ckpt_path, data_dir, **kw):
    cfg = tiny(recipe("squad", version), ckpt_path, seq=64, **kw)
    cfg.task.data_dir = str(data_dir)
    cfg.task.train_file = "train.json"
    cfg.task.predict_file = "dev.json"
    cfg.task.doc_stride = 24
    cfg.task.max_query_length = 16
    return cfg


def _questions(path):
    payload = json.load(open(path))
    return {qa["id"]: qa for art in payload["data"] for p in art["paragraphs"] for qa in p["qas"]}


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_squad_trains_scores_and_writes_predictions(tmp_path, ckpt, version):
    v2 = version == "v2"
    toy.make_toy_squad(str(tmp_path / "train.json"), "2.0" if v2 else "1.1", n_paragraphs=6, seed=1)
    toy.make_toy_squad(str(tmp_path / "dev.json"), "2.0" if v2 else "1.1", n_paragraphs=3, seed=2)
    cfg = _squad_cfg(version, ckpt[0], tmp_path, epochs=3)
    summary = ft_run.finetune(cfg, str(tmp_path / "work"))
    run = summary["runs"][0]
    dev = run["dev"]
    assert summary["best_metric"] == ("best_f1" if v2 else "f1")
    for k in ("exact", "f1", "HasAns_exact", "HasAns_f1"):
        assert 0.0 <= dev[k] <= 100.0
    out = tmp_path / "work" / "seed-0" / "predictions"
    predictions = json.loads((out / "predictions.json").read_text())
    questions = _questions(tmp_path / "dev.json")
    assert set(predictions) == set(questions)
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    # n-best spans, plus the no-answer entry on v2.
    assert set(nbest) == set(questions)
    assert all(len(v) <= 20 + v2 for v in nbest.values())
    # The written file scores to the reported numbers with the official scoring.
    golds = {q: ([] if qa.get("is_impossible") else [a["text"] for a in qa["answers"]])
             for q, qa in questions.items()}
    rescored = squad_metrics.evaluate(golds, predictions)
    assert rescored["exact"] == pytest.approx(dev["exact"])
    assert rescored["f1"] == pytest.approx(dev["f1"])
    if v2:
        odds = json.loads((out / "null_odds.json").read_text())
        assert set(odds) == set(questions)
        # The predictions use the threshold tuned on dev, so they score its best F1.
        assert dev["f1"] == pytest.approx(dev["best_f1"])
        assert dev["null_threshold"] == pytest.approx(dev["best_f1_thresh"])
        for q, text in predictions.items():
            assert (text == "") == (odds[q] > dev["null_threshold"])
        assert "NoAns_f1" in dev
    else:
        assert not (out / "null_odds.json").exists()
        assert all(text for text in predictions.values())
    assert run["best"] == pytest.approx(dev[summary["best_metric"]])


def test_squad_bad_input(tmp_path, ckpt):
    toy.make_toy_squad(str(tmp_path / "train.json"), "1.1", n_paragraphs=2)
    toy.make_toy_squad(str(tmp_path / "dev.json"), "2.0", n_paragraphs=1)
    cfg = _squad_cfg("v1", ckpt[0], tmp_path)
    with pytest.raises(UserError, match="unanswerable .* use --config=configs/squad.py:v2"):
        ft_run.finetune(cfg, str(tmp_path / "w1"))

    bad = json.load(open(tmp_path / "train.json"))
    qa = bad["data"][0]["paragraphs"][0]["qas"][0]
    qa["answers"][0]["text"] = "Atlantis"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = run_cli("--config=configs/squad.py:v1", f"--config.init_from={ckpt[0]}",
                f"--workdir={tmp_path / 'w2'}", f"--config.task.data_dir={tmp_path}",
                "--config.task.train_file=bad.json", "--config.task.predict_file=train.json")
    assert_one_line_failure(r, f"question {qa['id']}: answer 'Atlantis' is not at answer_start")
    r = run_cli("--config=configs/squad.py:v2", f"--config.init_from={ckpt[0]}",
                f"--workdir={tmp_path / 'w3'}", "--config.task.predict_file=dev.json")
    assert_one_line_failure(r, "set --config.task.train_file=PATH")
