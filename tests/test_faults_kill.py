"""Random SIGKILLs (issue 14): a real pretraining run and a real fine-tuning run are killed once
right after their first checkpoint is committed (and the rerun must say it resumed from it), then
several times at random moments (start-up, restore, steps, async saves, best-checkpoint writes),
then run to the end. Every logged step's loss (the steps re-run after each resume included), the
final params and, for fine-tuning, the best checkpoint must equal those of an unbroken run. As
training is deterministic, a run that ignored its checkpoints would pass those comparisons; so
each trial set also asserts a kill after a commit and, for every start that found a committed
step, a logged `resumed from step N` with that N (> 0).

The moments come from BERTJAX_FAULT_SEED (printed in pytest's header); rerun with it to replay."""
import glob
import json
import os
import sys

import numpy as np
import pytest

import fault_support as fs
import finetune_support as fts
import pretrain_support as ps

pytestmark = pytest.mark.slow


def _env():
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=ps.xla_flags(8))


def _committed(ckpt_dir) -> int:
    steps = [int(p) for p in os.listdir(ckpt_dir) if p.isdigit()] if os.path.isdir(ckpt_dir) else []
    return max(steps, default=0)


def _params(path):
    from bertjax.load import model_files
    from bertjax.interop.params import flat_params

    return flat_params(model_files.load_model(path)[0])


def _max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))))
               for k in a)


def _compare_losses(got_rows, ref: dict, where: str) -> tuple[int, float]:
    assert sorted({s for s, _ in got_rows}) == sorted(ref), where
    diff = max(abs(v - ref[s]) for s, v in got_rows)
    for s, v in got_rows:
        np.testing.assert_allclose(v, ref[s], rtol=1e-6, err_msg=f"{where} step {s}")
    return len(got_rows), diff


def _kill_after_first_checkpoint(start, committed, tmp_path) -> dict:
    """The deterministic trial: a kill the moment the first checkpoint is committed; the rerun
    must log `resumed from step N` for that N before it trains (a run that retrained from step 0
    would still match the reference's losses, so this is what catches one)."""
    first = fs.kill_after_first_checkpoint(start, committed)
    where = f"{fs.tag()} {first}: {open(tmp_path / 'killed.stderr').read()[-2000:]}"
    assert first["killed"] and first["committed_at_kill"] > 0, where
    assert first["next_reached_training"], where
    assert first["next_resumed_from"] == first["committed_at_kill"], where
    return first


def _run_reference(cmd, tmp_path, name, steps):
    """Runs unbroken; returns (start-up seconds, training seconds up to the last step's line)."""
    w = fs.Watched(cmd, ps.ROOT, _env(), str(tmp_path / f"{name}.stderr"))
    rc = w.finish()
    assert rc == 0, open(tmp_path / f"{name}.stderr").read()[-3000:]
    began = w.seen(fs.TRAINING_LINE)
    ended = w.seen(f"step {steps}/{steps}")
    return began, max(ended - began, 0.2)


# BERT's run only: every member pretrains through the same loop, checkpointing and restore, and
# ELECTRA's own part (its step key and generator samples) has its exact resume pinned in-process
# by test_electra.py::test_gdes_resumes_exactly (about 100 s of the suite saved, 2026-12-05).
def test_pretraining_survives_random_sigkills(tmp_path):
    rng = fs.rng("kill-pretrain-bert")
    config = "configs/bert_tiny.py"
    data_dir, vocab = ps.prepare(str(tmp_path / "data"), nsp=True)
    steps = 24
    args = ps.overrides(data_dir, vocab, **{"train.num_steps": steps, "train.checkpoint_every": 2,
                                            "train.keep_checkpoints": 2})

    def cmd(wd):
        return [sys.executable, "-m", "bertjax.pretrain", f"--config={config}",
                f"--workdir={wd}", *args]

    ref_dir = str(tmp_path / "ref")
    start_s, train_s = _run_reference(cmd(ref_dir), tmp_path, "ref", steps)
    ref = dict(fs.logged_losses(os.path.join(ref_dir, "metrics.jsonl")))
    wd = str(tmp_path / "killed")
    ckpts = os.path.join(wd, "checkpoints")

    def start():
        return fs.Watched(cmd(wd), ps.ROOT, _env(), str(tmp_path / "killed.stderr"))

    first = _kill_after_first_checkpoint(start, lambda: _committed(ckpts), tmp_path)
    trials = fs.kill_at_random(start, 3, rng, start_s, train_s, wd,
                               lambda: 1 - _committed(ckpts) / steps, lambda: _committed(ckpts))
    before_final = _committed(ckpts)
    w = start()
    where = f"{fs.tag()} trials {trials}"
    assert w.finish() == 0, (where, open(tmp_path / "killed.stderr").read()[-3000:])
    resumes = fs.check_resumes(trials, w, before_final, where)
    rows, loss_diff = _compare_losses(fs.logged_losses(os.path.join(wd, "metrics.jsonl")), ref,
                                      where)
    params_diff = _max_diff(_params(wd), _params(ref_dir))
    assert params_diff <= 1e-6, where
    assert sorted(os.listdir(ckpts)) == sorted(os.listdir(os.path.join(ref_dir, "checkpoints")))
    assert json.load(open(os.path.join(wd, "COMPLETED")))["step"] == steps
    assert not os.path.exists(os.path.join(wd, "LOCK"))
    fs.record("sigkill_pretrain", trials=len(trials) + 1, kills=[first, *trials], steps=steps,
              resumes_checked=resumes + 1,
              loss_rows_compared=rows, max_loss_diff=loss_diff, max_param_diff=params_diff,
              reference_start_s=start_s, reference_train_s=train_s,
              injected="SIGKILL of `python -m bertjax.pretrain` (24 steps, async save every 2, "
              "keep 2) right after its first commit and once in the rerun's training, then 3 "
              "times at random moments, then the same command to the end",
              survived="every start that found a committed step logged `resumed from step N` "
              "with that N; every logged loss (repeats after resume included) and the final "
              "params equal the unbroken run's; same committed steps; COMPLETED; no lease left")


def test_finetuning_survives_random_sigkills_with_its_best(tmp_path):
    import toy_tasks as toy

    rng = fs.rng("kill-finetune")
    path, _ = fts.make_checkpoint(str(tmp_path / "pre"))
    toy.make_toy_glue_dir(str(tmp_path / "glue"), "sst2", n_train=64, n_dev=16, n_test=4)
    steps = 24  # 4 per epoch, 6 epochs; eval (and best) and a checkpoint every epoch

    def cmd(wd):
        return [sys.executable, "-m", "bertjax.finetune", "--config=configs/glue.py:sst2",
                f"--config.init_from={path}", f"--workdir={wd}",
                f"--config.task.data_dir={tmp_path / 'glue'}", "--config.data.max_seq_length=32",
                "--config.train.batch_size=16", "--config.task.epochs=6",
                "--config.optim.learning_rate=3e-3", "--config.train.log_every=1",
                "--config.train.plot=false"]

    ref_dir = str(tmp_path / "ref")
    start_s, train_s = _run_reference(cmd(ref_dir), tmp_path, "ref", steps)
    ref_seed = os.path.join(ref_dir, "seed-0")
    ref = dict(fs.logged_losses(os.path.join(ref_seed, "metrics.jsonl")))
    assert sorted(ref) == list(range(1, steps + 1))
    wd = str(tmp_path / "killed")
    seed_dir = os.path.join(wd, "seed-0")
    ckpts = os.path.join(seed_dir, "checkpoints")

    def start():
        return fs.Watched(cmd(wd), ps.ROOT, _env(), str(tmp_path / "killed.stderr"))

    first = _kill_after_first_checkpoint(start, lambda: _committed(ckpts), tmp_path)
    trials = fs.kill_at_random(start, 3, rng, start_s, train_s, wd,
                               lambda: 1 - _committed(ckpts) / steps, lambda: _committed(ckpts))
    before_final = _committed(ckpts)
    w = start()
    where = f"{fs.tag()} trials {trials}"
    assert w.finish() == 0, (where, open(tmp_path / "killed.stderr").read()[-3000:])
    resumes = fs.check_resumes(trials, w, before_final, where)
    rows, loss_diff = _compare_losses(fs.logged_losses(os.path.join(seed_dir, "metrics.jsonl")),
                                      ref, where)
    best = json.load(open(os.path.join(seed_dir, "best", "best.json")))
    ref_best = json.load(open(os.path.join(ref_seed, "best", "best.json")))
    assert best["step"] == ref_best["step"], (where, best, ref_best)
    np.testing.assert_allclose(best["value"], ref_best["value"], rtol=1e-6, err_msg=where)
    best_diff = _max_diff(_params(os.path.join(seed_dir, "best")),
                          _params(os.path.join(ref_seed, "best")))
    params_diff = _max_diff(_params(seed_dir), _params(ref_seed))
    assert best_diff <= 1e-6 and params_diff <= 1e-6, where
    summary = json.load(open(os.path.join(wd, "summary.json")))
    ref_summary = json.load(open(os.path.join(ref_dir, "summary.json")))
    assert summary["mean"] == pytest.approx(ref_summary["mean"], rel=1e-6), where
    assert not glob.glob(os.path.join(wd, "**", "LOCK"), recursive=True)
    fs.record("sigkill_finetune", trials=len(trials) + 1, kills=[first, *trials], steps=steps,
              resumes_checked=resumes + 1,
              loss_rows_compared=rows, max_loss_diff=loss_diff, max_param_diff=params_diff,
              max_best_param_diff=best_diff, best=best, reference_start_s=start_s,
              reference_train_s=train_s,
              injected="SIGKILL of `python -m bertjax.finetune` (GLUE SST-2 toy, 24 steps, eval "
              "and best every 4, async saves) right after its first commit and once in the "
              "rerun's training, then 3 times at random moments",
              survived="every start that found a committed step logged `resumed from step N` "
              "with that N; every logged loss, the final params, best.json (step, value), the "
              "best params and summary.json equal the unbroken run's")


def test_resumed_finetuning_keeps_the_better_of_old_and_new_best(tmp_path):
    """The issue-11 defect: after a resume the loop used to forget its best, so the first eval
    replaced best/ whatever its score. Scripted eval scores make the case certain."""
    from bertjax.config import base_config
    from bertjax.data import pipeline
    from bertjax.model import BertConfig, build_model
    from bertjax.finetuning.best import BestCheckpoint
    from bertjax.train import loop, objectives
    from bertjax.train.run_plan import RunPlan

    data_dir, vocab = ps.prepare(str(tmp_path / "data"))
    scores = {2: 0.9, 4: 0.5, 6: 0.6, 8: 0.95, 10: 0.7}  # step -> dev accuracy

    def run(num_steps):
        cfg = ps.apply(base_config("tiny"), ps.overrides(data_dir, vocab, **{
            "train.num_steps": num_steps, "train.eval_every": 2, "train.checkpoint_every": 2,
            "train.async_checkpointing": False}))
        model_cfg = BertConfig.from_dict(cfg.model.to_dict())
        inputs = loop.Inputs(
            make_train=lambda shard, n, batch, state: pipeline.make_pretrain_input(
                data_dir, batch_size=batch, process_index=shard, process_count=n, seed=0,
                shuffle_buffer=64, start_batch=int(state["batches"]) if state else 0),
            evaluate=lambda steps, params, mesh: {"accuracy": scores[int(seen.pop(0))]},
            seq_len=ps.SEQ, predictions_per_seq=ps.PREDS)
        seen = [s for s in sorted(scores) if s <= num_steps and s > done[0]]
        # A new hook per run, as a rerun of the command makes: it reads the old best back.
        best = BestCheckpoint(str(tmp_path / "run"), "accuracy", "max")
        loop.train(cfg, RunPlan.from_config(cfg), objectives.Pretraining(),
                   lambda: build_model("pretraining", model_cfg), inputs, str(tmp_path / "run"),
                   eval_hooks=[best], log=lambda _: None)
        done[0] = num_steps
        return best.best

    done = [0]
    assert run(4) == {"step": 2, "value": 0.9, "metric": "accuracy"}
    best = run(6)  # resumes at 4; its first eval (0.6) must not replace the 0.9 of step 2
    assert best["step"] == 2
    assert json.load(open(tmp_path / "run" / "best" / "best.json"))["step"] == 2
    best = run(10)  # and a better one after a resume does replace it
    assert best["step"] == 8 and best["value"] == 0.95
    assert json.load(open(tmp_path / "run" / "best" / "best.json"))["step"] == 8
    fs.record("best_after_resume", trials=2, injected="scripted dev scores 0.9, 0.5, a resume, then "
              "0.6, 0.95, 0.7", survived="best stays step 2 (0.9) across the resume, then step 8")
