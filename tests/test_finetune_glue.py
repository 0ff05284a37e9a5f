"""GLUE fine-tuning end to end on toy data (MNLI with two seeds and both dev sets, STS-B as
regression), the training iterator's determinism, and one-line failures on bad input."""
import json
import os

import numpy as np
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

from bertjax.data.tasks import glue
from bertjax.errors import UserError
from bertjax.finetuning import run as ft_run
from bertjax.finetuning.batches import EpochBatches


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("pretrained")))


def _read_tsv(path):
    lines = open(path, encoding="utf-8").read().splitlines()
    return lines[0], [ln.split("\t") for ln in lines[1:]]


# ------------------------------------------------------------------ the training iterator

def _features(n=50):
    return {"input_ids": np.arange(n * 3, dtype=np.int32).reshape(n, 3),
            "labels": np.arange(n, dtype=np.int32)}


def test_batches_cover_each_epoch_once_and_reshuffle():
    it = EpochBatches(_features(), local_batch=8, shard=0, num_shards=1, seed=3)
    epoch0 = [next(it)["labels"] for _ in range(6)]  # 50 // 8 = 6 batches, 2 rows dropped
    epoch1 = [next(it)["labels"] for _ in range(6)]
    seen0 = np.concatenate(epoch0)
    assert len(set(seen0.tolist())) == 48
    assert not all((a == b).all() for a, b in zip(epoch0, epoch1))
    again = EpochBatches(_features(), local_batch=8, shard=0, num_shards=1, seed=3)
    assert all((next(again)["labels"] == b).all() for b in epoch0)
    other = EpochBatches(_features(), local_batch=8, shard=0, num_shards=1, seed=4)
    assert not all((next(other)["labels"] == b).all() for b in epoch0)


def test_batches_resume_exactly_and_shards_split_the_global_batch():
    full = EpochBatches(_features(), local_batch=8, shard=0, num_shards=1, seed=1)
    batches = [next(full) for _ in range(15)]  # crosses two epoch boundaries
    assert full.state() == {"batches": 15}
    resumed = EpochBatches(_features(), local_batch=8, shard=0, num_shards=1, seed=1,
                           start_batch=9)
    for b in batches[9:]:
        got = next(resumed)
        assert all((got[k] == b[k]).all() for k in b)
    # Two hosts feeding 4 rows each make the same global batches as one host feeding 8.
    hosts = [EpochBatches(_features(), local_batch=4, shard=s, num_shards=2, seed=1,
                          start_batch=5) for s in (0, 1)]
    for b in batches[5:]:
        parts = [next(h)["labels"] for h in hosts]
        assert not set(parts[0]) & set(parts[1])
        assert sorted(np.concatenate(parts)) == sorted(b["labels"])


def test_schedule_follows_data_size_epochs_and_batch():
    cfg = recipe("glue", "rte")
    cfg.task.epochs = 2.5
    before = cfg.to_json_best_effort()
    sched = ft_run.derive_schedule(cfg, num_examples=1000)  # batch 32: 31 steps per epoch
    assert sched == {"steps_per_epoch": 31, "num_steps": 78, "warmup_steps": 8, "eval_every": 31,
                     "checkpoint_every": 31}
    assert cfg.to_json_best_effort() == before  # derived values go to the run plan only
    with pytest.raises(UserError, match="fewer than one batch"):
        ft_run.derive_schedule(cfg, num_examples=20)


# ------------------------------------------------------------------ end to end

@pytest.mark.slow
def test_mnli_two_seeds_both_dev_sets_and_submissions(tmp_path, ckpt, capsys):
    path, _ = ckpt
    data = str(tmp_path / "glue")
    toy.make_toy_glue_dir(data, "mnli", n_train=64, n_dev=32, n_test=12)
    toy.make_toy_glue_dir(data, "ax", n_test=10)
    cfg = tiny(recipe("glue", "mnli"), path, epochs=10)
    cfg.task.data_dir = data
    cfg.task.predict_test = True
    cfg.task.eval_every = 20
    cfg.seeds = 2
    work = tmp_path / "work"
    summary = ft_run.finetune(cfg, str(work))

    on_disk = json.loads((work / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["best_metric"] == "matched/score" and summary["seeds"] == 2
    values = [r["best"] for r in summary["runs"]]
    assert [r["seed"] for r in summary["runs"]] == [0, 1]
    assert summary["values"] == values
    assert summary["mean"] == pytest.approx(np.mean(values))
    assert summary["std"] == pytest.approx(np.std(values, ddof=1))
    for run in summary["runs"]:
        for split in ("matched", "mismatched"):
            for m in ("accuracy", "score", "loss"):
                assert np.isfinite(run["dev"][f"{split}/{m}"])
        # The toy label sits in a signal word; a few dozen steps find it (chance is 1/3).
        assert run["dev"]["matched/accuracy"] > 0.5, run["dev"]
        assert run["best"] == run["dev"]["matched/score"]
        seed_dir = work / f"seed-{run['seed']}"
        assert (seed_dir / "COMPLETED").exists()
        best = seed_dir / "best"
        assert json.loads((best / "best.json").read_text())["step"] == run["best_step"]
        assert (best / "vocab.txt").exists() and (best / "tokenizer_identity.json").exists()
        assert json.loads((best / "model_config.json").read_text())["num_labels"] == 3
        sub = seed_dir / "predictions" / "submission"
        for name, n in (("MNLI-m.tsv", 12), ("MNLI-mm.tsv", 12), ("AX.tsv", 10)):
            header, rows = _read_tsv(sub / name)
            assert header == "index\tprediction"
            assert [r[0] for r in rows] == [str(i) for i in range(n)]
            assert {r[1] for r in rows} <= set(glue.get_task("mnli").labels)
    # Different seeds are different runs (initialisation of the head, data order, dropout).
    assert summary["runs"][0]["dev"]["matched/loss"] != summary["runs"][1]["dev"]["matched/loss"]
    plan = json.loads((work / "seed-0" / "run_plan.json").read_text())
    assert plan["num_steps"] == 40 and plan["eval_every"] == 20 and plan["warmup_steps"] == 4
    assert plan["model"]["num_labels"] == 3 and plan["seed"] == 0
    given = json.loads((work / "seed-0" / "config.json").read_text())
    assert given == json.loads(cfg.to_json_best_effort())  # the user's config, as given
    assert "mnli dev matched/score over 2 seed(s)" in capsys.readouterr().out

    # Rerunning the finished command trains nothing and reports the same results.
    again = ft_run.finetune(cfg, str(work))
    assert again["values"] == values


@pytest.mark.slow
def test_stsb_regression(tmp_path, ckpt):
    path, _ = ckpt
    data = str(tmp_path / "glue")
    toy.make_toy_glue_dir(data, "stsb", n_train=64, n_dev=32, n_test=8)
    cfg = tiny(recipe("glue", "stsb"), path, epochs=10)
    cfg.task.data_dir = data
    cfg.task.eval_every = 20
    cfg.task.predict_test = True
    summary = ft_run.finetune(cfg, str(tmp_path / "work"))
    dev = summary["runs"][0]["dev"]
    assert summary["best_metric"] == "score"
    assert dev["score"] == pytest.approx((dev["pearson"] + dev["spearman"]) / 2)
    # The toy score counts a word in the second sentence: learnable in a few dozen steps.
    assert dev["pearson"] > 0.5, dev
    header, rows = _read_tsv(tmp_path / "work" / "seed-0" / "predictions" / "submission"
                             / "STS-B.tsv")
    assert header == "index\tprediction" and len(rows) == 8
    assert all(0.0 <= float(r[1]) <= 5.0 for r in rows)
    cfg_json = json.loads((tmp_path / "work" / "seed-0" / "best" / "model_config.json").read_text())
    assert cfg_json["num_labels"] == 1


# ------------------------------------------------------------------ bad input

def test_bad_glue_input_is_refused_before_training(tmp_path, ckpt):
    path, _ = ckpt
    data = tmp_path / "glue"
    toy.make_toy_glue_dir(str(data), "rte", n_train=32, n_dev=8, n_test=4)
    cfg = tiny(recipe("glue", "rte"), path)
    cfg.task.data_dir = str(data)

    cfg.task.predict_test = True
    os.remove(data / "RTE" / "test.tsv")
    with pytest.raises(UserError, match=r"GLUE rte test file not found"):
        ft_run.finetune(cfg, str(tmp_path / "w1"))
    cfg.task.predict_test = False

    dev = data / "RTE" / "dev.tsv"
    lines = dev.read_text().splitlines()
    cols = lines[1].split("\t")
    lines[1] = "\t".join(cols[:-1] + ["maybe"])
    dev.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"dev.tsv:2: label 'maybe' is not one of"):
        ft_run.finetune(cfg, str(tmp_path / "w2"))

    cfg.task.best_metric = "f1"
    toy.make_toy_glue_dir(str(data), "rte", n_train=32, n_dev=8, n_test=4)
    with pytest.raises(UserError, match="best_metric 'f1' is not a dev metric"):
        ft_run.finetune(cfg, str(tmp_path / "w3"))
    assert not (tmp_path / "w3" / "seed-0").exists()


def test_cli_refuses_missing_data_and_a_vocabulary_the_checkpoint_was_not_trained_with(tmp_path,
                                                                                       ckpt):
    path, _ = ckpt
    r = run_cli("--config=configs/glue.py:cola", f"--config.init_from={path}",
                f"--workdir={tmp_path / 'w'}", f"--config.task.data_dir={tmp_path / 'nothing'}")
    assert_one_line_failure(r, "GLUE cola train file not found")

    other = toy.toy_tokenizer(str(tmp_path / "other"), extra_words=("zeta",))
    toy.make_toy_glue_dir(str(tmp_path / "glue"), "sst2", n_train=32, n_dev=8)
    r = run_cli("--config=configs/glue.py:sst2", f"--config.init_from={path}",
                f"--workdir={tmp_path / 'w'}", f"--config.task.data_dir={tmp_path / 'glue'}",
                f"--config.task.vocab={other.vocab_path}")
    assert_one_line_failure(r, "tokenizer mismatch", "vocab_size")
    assert not (tmp_path / "w" / "seed-0").exists()
