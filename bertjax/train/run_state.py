"""What the training loop shares with its hooks and callers: the run being trained (`Run`), how it
gets data (`Inputs`) and what it hands back (`Result`). Kept apart from loop.py so the hooks can
read a Run without importing the loop that calls them."""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable, Protocol

import jax
import numpy as np

from bertjax.errors import UserError
from bertjax.train import checkpoint as ckpt_lib
from bertjax.train import objectives
from bertjax.train.run_plan import RunPlan
from bertjax.train.step import StepFns


class DataIterator(Protocol):
    def __next__(self) -> dict[str, np.ndarray]: ...

    def state(self) -> dict: ...


@dataclasses.dataclass
class Inputs:
    """How the loop gets data. `make_train(shard_index, num_shards, local_batch, state)` returns an
    iterator that resumes from `state` (None = from the start); `evaluate(steps, params, mesh)` returns
    dev metrics (None = no eval)."""

    make_train: Callable[[int, int, int, dict | None], DataIterator]
    evaluate: Callable[[StepFns, Any, Any], dict[str, float]] | None = None
    seq_len: int = 128
    predictions_per_seq: int = 20


@dataclasses.dataclass
class Result:
    step: int
    train_metrics: dict
    eval_metrics: dict
    steps: StepFns
    mesh: Any
    state: Any
    plan: RunPlan
    stopped_by_signal: bool = False
    train_compilations: int = -1  # distinct compiled train steps (1 = never recompiled)


@dataclasses.dataclass
class Run:
    """What setup built and the hooks share. Only the loop and its hooks change it."""

    cfg: Any
    plan: RunPlan
    objective: Any  # a registered objective (train/objectives.py)
    workdir: str
    inputs: Inputs
    log: Callable[[str], None]
    mesh: Any
    steps: StepFns
    schedule: Callable
    checkpointer: ckpt_lib.Checkpointer
    state: Any
    it: DataIterator
    writer: Any
    start: int
    step: int = 0
    pending: list = dataclasses.field(default_factory=list)
    train_metrics: dict = dataclasses.field(default_factory=dict)
    eval_metrics: dict = dataclasses.field(default_factory=dict)
    stopped: bool = False
    # Throughput is measured from this mark: moved after the compile, each log line and each eval.
    mark_time: float = 0.0
    mark_step: int = 0
    data_wait: float = 0.0
    _saved: set = dataclasses.field(default_factory=set)

    def restart_clock(self) -> None:
        self.mark_time, self.mark_step, self.data_wait = time.time(), self.step, 0.0

    def due(self, every: int) -> bool:
        """Every `every` steps, and at the last step."""
        return self.step == self.plan.num_steps or (every > 0 and self.step % every == 0)

    def drain(self) -> None:
        """Fetches the metrics of the steps since the last fetch (raising on a non-finite one)."""
        if self.pending:
            self.train_metrics = {**self.train_metrics, **self.fetch()}

    def fetch(self) -> dict:
        fetched, self.pending = jax.device_get(self.pending), []
        bad = [m for m in fetched if m["nonfinite"]]
        if bad:
            self.checkpointer.wait()  # the newest good save may still be committing
            raise UserError(
                f"non-finite loss or gradient norm at step {bad[0]['step']} (loss={bad[0]['loss']}, "
                f"grad_norm={bad[0]['grad_norm']}); stopped without saving. The last good "
                f"checkpoint is step {self.checkpointer.latest_step()} in {self.workdir}; lower "
                "optim.learning_rate or set train.debug_nans=true to find the first bad op")
        sums = None
        for m in fetched:
            sums = objectives.add_sums(sums, m["sums"])
        out = objectives.finalize(sums)
        out["grad_norm"] = float(np.mean([m["grad_norm"] for m in fetched]))
        return out

    def save(self, force: bool = False) -> None:
        # A preemption or the end can land on a step the periodic save already wrote; a save
        # never follows an unchecked step.
        if self.step in self._saved:
            return
        self.drain()
        self.checkpointer.save(self.step, saved_state(self.objective, self.state), self.it.state(),
                               checkpoint_meta(self),
                               force=force)
        self._saved.add(self.step)


def checkpoint_meta(run: Run) -> dict:
    """Saved with every step: the user's config and the plan (what model the state is)."""
    return {"config": json.loads(run.cfg.to_json_best_effort()), "plan": run.plan.to_dict()}


def saved_state(objective, state):
    """The part of a train state a checkpoint holds: all of it, unless the objective's frozen part
    is rebuilt from its source on resume (`save_frozen` false)."""
    if objective.save_frozen:
        return state
    return {k: v for k, v in state.items() if k != "frozen"}
