"""The fine-tuning driver behind `bertjax finetune`: resolve the checkpoint and
vocabulary, prepare the task's data, derive the schedule from the data size, then train one run
per seed with the shared training loop and report the spread of their best dev metric.

Layout of <workdir>:
    tokenizer_identity.json, vocab/   the vocabulary every seed used (checked on rerun)
    init/                             an HF init_from converted to a bertjax checkpoint
    seed-<S>/                         one training-loop workdir per seed (resumable), holding
        best/                         the best dev checkpoint, with vocab files (and labels.json)
        predictions/                  files written with the best checkpoint
    summary.json                      per-seed results, mean and standard deviation
Rerunning the same command resumes unfinished seeds and re-reports finished ones.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import jax
import numpy as np
from etils import epath

from bertjax.config import lora_fields
from bertjax.errors import UserError
from bertjax.evaluate import writers
from bertjax.finetuning import embedding_task, glue_task, init_source, ner_task, squad_task
from bertjax.finetuning.best import BestCheckpoint
from bertjax.finetuning.batches import EpochBatches, num_rows, steps_per_epoch
from bertjax.finetuning.family import Prepared
from bertjax.finetuning.predict import make_predict_fn
from bertjax.model import build_model
from bertjax.store import lock as workdir_lock
from bertjax.store import workdir as wd
from bertjax.train import adapters
from bertjax.train import checkpoint as ckpt_lib
from bertjax.train import loop
from bertjax.train import mesh as mesh_lib
from bertjax.train.run_plan import RunPlan
from bertjax.train.step import model_arrays

FAMILIES = {"glue": glue_task.prepare, "squad": squad_task.prepare, "ner": ner_task.prepare,
            "embeddings": embedding_task.prepare}
SUMMARY_FILE = "summary.json"


def derive_schedule(cfg, num_examples: int) -> dict:
    """num_steps from epochs over the training rows, warmup as a fraction of it, eval once per
    epoch unless task.eval_every says otherwise, a checkpoint at least as often. Returned as run
    plan fields (the config is left as the user gave it), with steps_per_epoch."""
    t = cfg.task
    if not t.epochs > 0:
        raise UserError(f"task.epochs must be positive, got {t.epochs}")
    if not 0.0 <= t.warmup_fraction < 1.0:
        raise UserError(f"task.warmup_fraction must be in [0, 1), got {t.warmup_fraction}")
    per_epoch = steps_per_epoch(num_examples, int(cfg.train.batch_size))
    num_steps = max(1, math.ceil(float(t.epochs) * per_epoch))
    eval_every = int(t.eval_every) if t.eval_every > 0 else per_epoch
    # Saved at least at every eval, so a resumed run repeats at most one eval interval.
    return {"steps_per_epoch": per_epoch, "num_steps": num_steps,
            "warmup_steps": int(round(float(t.warmup_fraction) * num_steps)),
            "eval_every": eval_every,
            "checkpoint_every": min(int(cfg.train.checkpoint_every), eval_every)}


def mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, np.float64)
    # Sample standard deviation: the seeds are a sample of the runs one could have made.
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarize(task: str, metric: str, runs: list[dict]) -> dict:
    best = [r["best"] for r in runs]
    mean, std = mean_std(best)
    dev = {}
    for name in runs[0]["dev"]:
        values = [r["dev"][name] for r in runs if name in r["dev"]]
        if len(values) == len(runs):
            m, s = mean_std(values)
            dev[name] = {"mean": m, "std": s}
    return {"task": task, "best_metric": metric, "seeds": len(runs), "mean": mean, "std": std,
            "values": best, "dev": dev, "runs": runs}


def _copy_tokenizer_files(dst: str, vocab_dir: str, identity: dict, extra: dict) -> None:
    """Makes a best checkpoint self-contained: usable by convert/export without the workdir."""
    for p in sorted(epath.Path(vocab_dir).iterdir()):
        wd.write_atomic(epath.Path(dst) / p.name, p.read_bytes())
    wd.write_identity(dst, identity)
    for name, data in extra.items():
        wd.write_atomic(epath.Path(dst) / name, data)


def _run_seed(cfg, plan, prepared: Prepared, workdir: str, *, best_metric: str,
              eval_batch: int, vocab_dir: str, identity: dict, log: Callable[[str], None],
              on_ready: Callable[[], None] | None = None) -> dict | None:
    model_cfg = plan.model_config()
    model_fn = lambda: build_model(plan.task_model, model_cfg, seed=plan.seed)  # noqa: E731

    def make_train(shard, num_shards, local_batch, state):
        return EpochBatches(prepared.train, local_batch=local_batch, shard=shard,
                            num_shards=num_shards, seed=plan.seed,
                            start_batch=int(state["batches"]) if state else 0)

    def evaluate(steps, params, mesh):
        return prepared.evaluate(make_predict_fn(steps.predict, params, mesh, eval_batch))

    inputs = loop.Inputs(make_train=make_train, evaluate=evaluate,
                         seq_len=int(cfg.data.max_seq_length), predictions_per_seq=0)
    best = BestCheckpoint(workdir, best_metric, "min" if best_metric.endswith("loss") else "max")
    # With LoRA the same objective trains only the adapters and the head (train/adapters.py).
    objective = adapters.wrap(prepared.objective, plan.model)
    # A finished seed runs no step: the loop restores it and hands back its compiled steps.
    result = loop.train(cfg, plan, objective, model_fn, inputs, workdir,
                        eval_hooks=[best], log=log, on_ready=on_ready)
    if result.stopped_by_signal:
        return None
    if best.best is None:
        raise UserError(f"{workdir} finished training but has no best checkpoint "
                        f"({best.directory / wd.BEST_FILE}); remove the seed directory and rerun")
    steps, mesh = result.steps, result.mesh
    target = mesh_lib.with_shardings(steps.abstract_state, steps.state_shardings)["params"]
    params, _ = ckpt_lib.load_params(str(best.directory), target)
    params = {**model_arrays(result.state), "params": params}
    write = jax.process_index() == 0
    out = prepared.write_outputs(make_predict_fn(steps.predict, params, mesh, eval_batch),
                                 os.path.join(workdir, "predictions"), write)
    extra = dict(prepared.extra_files)
    lora = None
    if "frozen" in result.state and plan.model.get("lora_rank"):
        # The adapters hold no base: they name it, and the fingerprint of its weights is checked
        # wherever they are loaded (load/model_files.py).
        lora = adapters.base_reference(plan.init_from, result.state["frozen"], result.state)
        # What the user named, when the base was converted from it (an HF directory): the same
        # weights, so the same fingerprint, should <workdir>/init be gone.
        lora["init_from"] = str(cfg.init_from)
        extra[adapters.BASE_FILE] = adapters.reference_json(lora)
    if write:
        _copy_tokenizer_files(str(best.directory), vocab_dir, identity, extra)
    value = out["metrics"].get(best_metric, best.best["value"])
    size = adapters.dir_bytes(best.directory) if write else 0
    log(f"seed {plan.seed}: best {best_metric}={value:.4f} at step {best.best['step']}; "
        f"{best.directory} holds {size / 1e6:.3g} MB"
        + (f" (adapters and head: {lora['trained_params']:,} parameters, on a base of "
           f"{lora['base_params']:,})" if lora else ""))
    return {"seed": plan.seed, "workdir": workdir, "best_step": int(best.best["step"]),
            "best_checkpoint_bytes": size, **({"lora": lora} if lora else {}),
            "best": float(value), "dev": out["metrics"], "files": [str(f) for f in out["files"]],
            # distinct compiled train steps: 1 = one static shape, never recompiled
            "train_step_compilations": int(result.train_compilations)}


def finetune(cfg, workdir: str, log: Callable[[str], None] = print) -> dict:
    """Runs every seed; returns the summary (also written to <workdir>/summary.json). On SIGTERM
    the current seed saves and this returns {"stopped_by_signal": True}."""
    family = str(cfg.task.family)
    if family not in FAMILIES:
        raise UserError(f"unknown task.family {family!r}; choose one of {', '.join(FAMILIES)}")
    if cfg.seeds < 1:
        raise UserError(f"seeds must be at least 1, got {cfg.seeds}")
    if not workdir:
        raise UserError("--workdir is required (a local path)")

    source = init_source.resolve(cfg, workdir, log)
    prepared = FAMILIES[family](cfg, source.tokenizer, log)
    model = init_source.model_for(cfg, source, prepared.num_labels, log)
    model.update(lora_fields(cfg))
    if model.get("lora_rank") and not source.init_from:
        raise UserError("lora.enabled=true adapts a pretrained model, but no --config.init_from "
                        "is set; pass the base checkpoint to adapt")
    best_metric = str(cfg.task.best_metric) or prepared.default_best
    if best_metric not in prepared.metric_names:
        raise UserError(f"task.best_metric {best_metric!r} is not a dev metric of "
                        f"{prepared.name}; choose one of {', '.join(prepared.metric_names)}")
    sched = derive_schedule(cfg, num_rows(prepared.train))
    plan = RunPlan.from_config(
        cfg, model=model, init_from=source.init_from,
        **{k: sched[k] for k in ("num_steps", "warmup_steps", "eval_every", "checkpoint_every")},
        derived={"steps_per_epoch": sched["steps_per_epoch"], "train_rows":
                 num_rows(prepared.train), "best_metric": best_metric})
    eval_batch = int(cfg.task.eval_batch_size) or int(cfg.train.batch_size)
    log(f"{prepared.name}: {num_rows(prepared.train)} training rows, batch {cfg.train.batch_size}, "
        f"{cfg.task.epochs:g} epochs = {sched['num_steps']} steps "
        f"({sched['steps_per_epoch']}/epoch, warmup {sched['warmup_steps']}, eval every "
        f"{sched['eval_every']}); best checkpoint by dev {best_metric}")

    vocab_dir = os.path.join(workdir, "vocab")

    def write_workdir_files():
        # Called by the loop once state and input are set up (process 0), so a run refused for
        # a bad checkpoint or input writes nothing a rerun would take for its own.
        os.makedirs(workdir, exist_ok=True)
        source.tokenizer.save(vocab_dir)
        wd.write_identity(workdir, source.identity)

    hold = workdir_lock.acquire(workdir)  # the seeds' loops lock their own directories too
    try:
        return _run_seeds(cfg, plan, prepared, workdir, best_metric, eval_batch, vocab_dir,
                          source, sched, write_workdir_files, log)
    finally:
        workdir_lock.release(hold)


def _run_seeds(cfg, plan, prepared, workdir, best_metric, eval_batch, vocab_dir, source, sched,
               on_ready, log) -> dict:
    runs = []
    for k in range(int(cfg.seeds)):
        seed_plan = plan.replace(seed=plan.seed + k)
        seed_dir = os.path.join(workdir, f"seed-{seed_plan.seed}")
        log(f"--- seed {seed_plan.seed} ({k + 1}/{cfg.seeds}) in {seed_dir}")
        run = _run_seed(cfg, seed_plan, prepared, seed_dir, best_metric=best_metric,
                        eval_batch=eval_batch, vocab_dir=vocab_dir, identity=source.identity,
                        log=log, on_ready=on_ready)
        if run is None:
            log("stopped by SIGTERM; rerun the same command to resume")
            return {"stopped_by_signal": True}
        runs.append(run)
    summary = summarize(prepared.name, best_metric, runs)
    summary["schedule"] = sched
    if jax.process_index() == 0:
        writers.atomic_write_json(os.path.join(workdir, SUMMARY_FILE), summary)
    spread = f" +- {summary['std']:.4f} (sample std)" if len(runs) > 1 else ""
    log(f"{prepared.name} dev {best_metric} over {len(runs)} seed(s): "
        f"{summary['mean']:.4f}{spread}; summary in {os.path.join(workdir, SUMMARY_FILE)}")
    return summary
