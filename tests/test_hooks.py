"""The loop's hooks on their own: the profiler is stopped on every exit path, and fine-tuning's
best checkpoint keeps the better of a resumed run's old best and each new eval."""
import json
import types

import jax
import numpy as np
import pytest

from bertjax.errors import UserError
from bertjax.finetuning.best import BestCheckpoint
from bertjax.train.hooks import Checkpoint, Profile
from bertjax.train.run_plan import RunPlan


def _run(step, **kw):
    plan = RunPlan(num_steps=10, warmup_steps=0, eval_every=2, checkpoint_every=4, seed=0,
                   model={"hidden_size": 4}, task_model="sequence_classification", init_from="")
    return types.SimpleNamespace(step=step, plan=plan, state={"step": np.int32(step),
                                 "params": {"w": np.arange(3, dtype=np.float32) + step}},
                                 log=lambda _: None, **kw)


def test_profile_stops_when_the_run_ends_inside_its_window(tmp_path):
    hook = Profile(start=2, num=100, directory=str(tmp_path / "profile"))
    for step in (1, 2, 3):
        hook(_run(step))
    assert hook.running
    hook.close(_run(3))  # the loop calls close on the end, on SIGTERM and on an error
    assert not hook.running
    # A trace can start again: none is left running in this process.
    jax.profiler.start_trace(str(tmp_path / "again"))
    jax.profiler.stop_trace()
    hook.close(_run(3))  # closing twice is harmless


def test_checkpoint_hook_saves_on_its_interval_but_not_at_the_last_step():
    saved = []
    hook = Checkpoint(every=4)
    for step in range(1, 11):
        run = _run(step)
        run.save = lambda run=run: saved.append(run.step)
        hook(run)
    assert saved == [4, 8]  # step 10 is the loop's final save


def test_best_checkpoint_survives_a_resume_and_keeps_the_better(tmp_path):
    first = BestCheckpoint(str(tmp_path), "accuracy", "max")
    first(_run(2), {"accuracy": 0.9})
    first(_run(4), {"accuracy": 0.5})
    assert first.best == {"step": 2, "value": 0.9, "metric": "accuracy"}
    # A rerun of the command makes a new hook: it reads the record back.
    resumed = BestCheckpoint(str(tmp_path), "accuracy", "max")
    assert resumed.best["step"] == 2
    resumed(_run(6), {"accuracy": 0.6})  # worse than the old best: best/ is kept
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 2
    resumed(_run(8), {"accuracy": 0.95})
    record = json.loads((tmp_path / "best" / "best.json").read_text())
    assert record == {"step": 8, "value": 0.95, "metric": "accuracy"}
    config = json.loads((tmp_path / "best" / "model_config.json").read_text())
    assert config == {"hidden_size": 4, "task": "sequence_classification"}
    # Another metric's record does not count as a best for this one.
    assert BestCheckpoint(str(tmp_path), "f1", "max").best is None
    with pytest.raises(UserError, match="'f1' is not among the eval metrics"):
        BestCheckpoint(str(tmp_path), "f1")(_run(9), {"accuracy": 1.0})


def test_loss_metrics_keep_the_lowest(tmp_path):
    hook = BestCheckpoint(str(tmp_path), "loss", "min")
    for step, loss in ((2, 1.0), (4, 0.7), (6, 0.8)):
        hook(_run(step), {"loss": loss})
    assert hook.best["step"] == 4
