"""The run plan: what a run derives from the user's config, kept apart from it.

The config stays as parsed (and is saved as config.json); the numbers a run works out (steps
from epochs, warmup, eval interval, the model shape taken from a checkpoint, the resolved
init_from, each fine-tuning seed) live here, are printed at start and saved as run_plan.json and
with every checkpoint. The loop and the step builder read these fields from the plan only.
"""
from __future__ import annotations

import dataclasses
import json

from bertjax.model import BertConfig


@dataclasses.dataclass(frozen=True)
class RunPlan:
    num_steps: int
    warmup_steps: int
    eval_every: int
    checkpoint_every: int
    seed: int
    model: dict         # BertConfig fields, as the run builds the model
    task_model: str     # bertjax.model.TASK_MODELS key
    init_from: str      # "" = from scratch
    derived: dict = dataclasses.field(default_factory=dict)  # how the numbers were derived

    @classmethod
    def from_config(cls, cfg, **changes) -> "RunPlan":
        """The plan a config gives as it stands; `changes` are the derived values."""
        plan = cls(num_steps=int(cfg.train.num_steps), warmup_steps=int(cfg.optim.warmup_steps),
                   eval_every=int(cfg.train.eval_every),
                   checkpoint_every=int(cfg.train.checkpoint_every), seed=int(cfg.train.seed),
                   model=cfg.model.to_dict(),
                   task_model=str(cfg.task.model_task) if "task" in cfg else "pretraining",
                   init_from=str(cfg.init_from))
        return dataclasses.replace(plan, **changes)

    def replace(self, **changes) -> "RunPlan":
        return dataclasses.replace(self, **changes)

    def model_config(self):
        return BertConfig.from_dict(self.model)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))
