"""Fine-tuning's best dev checkpoint, as an eval hook of the training loop.

The best params live in <seed workdir>/best/ (params only, with best.json), apart from the
rolling resume checkpoints, so keep-last-N never evicts them (orbax #526). The record is read
back when the hook is made: a resumed run keeps the better of its old best and every new eval.
"""
from __future__ import annotations

import json
import math

from etils import epath

from bertjax.errors import UserError
from bertjax.store import workdir as wd
from bertjax.train import checkpoint as ckpt_lib


class BestCheckpoint:
    def __init__(self, workdir: str, metric: str, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {mode!r}")
        self.directory = epath.Path(workdir) / wd.BEST_DIR
        self.metric, self.mode = metric, mode
        stored = wd.read_json(self.directory / wd.BEST_FILE)
        # A record of another metric (the user changed task.best_metric) does not count.
        self.best = stored if stored and stored.get("metric") == metric else None

    def better(self, value: float) -> bool:
        if self.best is None or math.isnan(self.best["value"]):
            return True
        return value > self.best["value"] if self.mode == "max" else value < self.best["value"]

    def __call__(self, run, metrics: dict) -> None:
        if self.metric not in metrics:
            raise UserError(f"best metric {self.metric!r} is not among the eval metrics "
                            f"{sorted(metrics)}")
        value = float(metrics[self.metric])
        if not self.better(value):
            return
        self.best = {"step": int(run.step), "value": value, "metric": self.metric}
        ckpt_lib.save_params(self.directory, run.state["params"],
                             {**run.plan.model, "task": run.plan.task_model},
                             extra_files={wd.BEST_FILE: json.dumps(self.best).encode()},
                             overwrite=True)
