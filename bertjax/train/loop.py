"""The one training loop. Pretraining and every fine-tuning task call `train()`.

Sections: mesh -> state (init / resume / init_from) -> input -> compile -> steps with metrics,
eval, checkpoints and preemption handling -> final save, marker and plot.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from typing import Any, Callable, Iterator, Protocol

import jax
import numpy as np
from etils import epath

from bertjax.errors import UserError
from bertjax.model.attention import describe as describe_attention
from bertjax.train import aot
from bertjax.train import checkpoint as ckpt_lib
from bertjax.train import flops as flops_lib
from bertjax.train import mesh as mesh_lib
from bertjax.train import metrics as metrics_lib
from bertjax.train import objectives
from bertjax.store import lock as workdir_lock
from bertjax.train.step import StepFns

RUN_PLAN_FILE = "run_plan.json"


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
    best: dict | None
    stopped_by_signal: bool = False
    train_compilations: int = -1  # distinct compiled train steps (1 = never recompiled)


class _Preemption:
    """SIGTERM (the preemption notice on Cloud VMs) sets a flag; the loop saves and exits 0."""

    def __init__(self):
        self.flag = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            del signum, frame
            self.flag = True

        try:
            self._old = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread (e.g. a test harness): no handler
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

    def requested(self, step: int, every: int) -> bool:
        if jax.process_count() == 1:
            return self.flag
        # Saving is collective, so every process must agree to stop at the same step; agreeing
        # costs a host round trip, paid only every `every` steps (the log interval).
        if step % every:
            return False
        from jax.experimental import multihost_utils

        return bool(np.any(multihost_utils.process_allgather(np.array(self.flag))))


def train(cfg, objective, model_fn: Callable, inputs: Inputs, workdir: str, *,
          best_metric: str = "", best_mode: str = "max", log: Callable[[str], None] = print,
          on_ready: Callable[[], None] | None = None) -> Result:
    """Trains (or resumes) in `workdir`. `on_ready` runs on process 0 once the state and the input
    are set up, before the first step: the caller's workdir files go there, so a run refused for
    bad input leaves nothing that a later run could take for its state."""
    hold = workdir_lock.acquire(workdir)
    try:
        return _train(cfg, objective, model_fn, inputs, workdir, best_metric=best_metric,
                      best_mode=best_mode, log=log, on_ready=on_ready)
    finally:
        workdir_lock.release(hold)


def _train(cfg, objective, model_fn, inputs, workdir, *, best_metric, best_mode, log, on_ready):
    t_cfg = cfg.train
    if cfg.train.debug_nans:
        jax.config.update("jax_debug_nans", True)
    workdir_path = epath.Path(workdir)
    is_main = jax.process_index() == 0

    # --- mesh and steps
    mesh = mesh_lib.make_mesh(cfg.mesh)
    num_steps = int(t_cfg.num_steps)
    # What the attention really is on this platform (never a silent change of BERT's recipe):
    # printed, and saved beside config.json.
    attention = describe_attention(cfg.model.attention_backend, float(cfg.model.attention_dropout),
                                   inputs.seq_len, mesh.devices.flat[0].platform)
    log(f"attention: {attention['train']} while training (attention dropout "
        f"{attention['attention_dropout']}), {attention['eval']} in eval")
    # The same construction `bertjax.tools.plan` compiles for TPU slices ahead of time.
    steps, tx, schedule = aot.build_steps(cfg, objective, model_fn, mesh)

    # --- state: resume > init_from > fresh
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=int(t_cfg.keep_checkpoints),
                                         async_=bool(t_cfg.async_checkpointing))
    target = mesh_lib.with_shardings(steps.abstract_state, steps.state_shardings)
    latest = checkpointer.latest_step()
    data_state = None
    best: dict | None = None
    if latest is not None:
        state, data_state, _ = checkpointer.restore(latest, target)
        log(f"resumed from step {latest} in {workdir}")
        if best_metric:
            # Without it the first eval after a resume would replace best/ whatever its score.
            best = _read_best(workdir, best_metric)
    else:
        state = steps.init()
        if cfg.init_from:
            params, report = ckpt_lib.load_params(cfg.init_from, target["params"],
                                                  fallback=state["params"])
            state = {**state, "params": params}
            state["opt_state"] = jax.jit(tx.init, out_shardings=steps.state_shardings["opt_state"])(
                state["params"])
            log(f"init_from {cfg.init_from}: " + report.summary().replace("\n", "; "))
    start = int(jax.device_get(state["step"]))
    if start >= num_steps:
        log(f"already at step {start} >= train.num_steps {num_steps}; nothing to do")
    else:
        ckpt_lib.clear_completed_marker(workdir)

    # --- input
    shard, num_shards, local_batch = mesh_lib.host_batch_slice(mesh, int(t_cfg.batch_size))
    it = inputs.make_train(shard, num_shards, local_batch, data_state)
    if is_main:
        workdir_path.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(workdir_path / "config.json", cfg.to_json_best_effort(indent=2))
        _write_text_atomic(workdir_path / RUN_PLAN_FILE, json.dumps(
            {"attention": attention, "mesh": dict(mesh.shape), "num_steps": num_steps,
             "devices": jax.device_count(), "processes": jax.process_count()}, indent=2))
        if on_ready is not None:
            on_ready()

    # --- metrics, flops
    # Process 0 alone writes metrics.jsonl and TensorBoard events; the progress line is ours.
    writer = metrics_lib.make_writers(workdir, num_steps, stdout=False)
    # Fine-tuning passes predictions_per_seq=0: no MLM head, so the vocabulary term is zero.
    flops_per_token = flops_lib.model_flops_per_token(cfg.model.to_dict(), inputs.seq_len,
                                                      inputs.predictions_per_seq)
    device_kind = jax.devices()[0].device_kind

    base_key = jax.random.key(int(t_cfg.seed))
    pending: list[dict] = []
    last_log_time, last_log_step, data_wait = time.time(), start, 0.0
    train_metrics: dict = {}
    eval_metrics: dict = {}
    stopped = False
    compiled = False
    step = start

    saved_steps: set[int] = set()

    def save(step_now: int, force: bool = False):
        # A preemption or the end can land on a step the periodic save already wrote.
        if step_now in saved_steps:
            return
        checkpointer.save(step_now, state, it.state(), json.loads(cfg.to_json_best_effort()),
                          force=force)
        saved_steps.add(step_now)

    def flush() -> dict:
        nonlocal pending
        fetched = jax.device_get(pending)
        pending = []
        bad = [m for m in fetched if m["nonfinite"]]
        if bad:
            checkpointer.wait()  # the newest good save may still be committing
            last_good = checkpointer.latest_step()
            raise UserError(
                f"non-finite loss or gradient norm at step {bad[0]['step']} (loss={bad[0]['loss']}, "
                f"grad_norm={bad[0]['grad_norm']}); stopped without saving. The last good "
                f"checkpoint is step {last_good} in {workdir}; lower optim.learning_rate or set "
                "train.debug_nans=true to find the first bad op")
        sums = None
        for m in fetched:
            sums = objectives.add_sums(sums, m["sums"])
        out = objectives.finalize(sums)
        out["grad_norm"] = float(np.mean([m["grad_norm"] for m in fetched]))
        return out

    try:
        with _Preemption() as preempt:
            t_compile = time.time()
            while step < num_steps:
                t0 = time.time()
                local = next(it)
                data_wait += time.time() - t0
                batch = mesh_lib.make_global_batch(local, mesh)
                state, m = steps.train(state, batch, base_key)
                m["step"] = step + 1
                pending.append(m)
                step += 1
                if not compiled:
                    compiled = True
                    jax.block_until_ready(m["loss"])
                    log(f"compiled and ran the first step in {time.time() - t_compile:.1f}s")
                    last_log_time, last_log_step, data_wait = time.time(), step, 0.0

                if step % t_cfg.log_every == 0 or step == num_steps:
                    train_metrics = flush()
                    now = time.time()
                    elapsed = max(now - last_log_time, 1e-9)
                    n = max(step - last_log_step, 1)
                    seqs = n * t_cfg.batch_size / elapsed
                    train_metrics.update(
                        learning_rate=float(schedule(step)),
                        sequences_per_second=seqs,
                        tokens_per_second=seqs * inputs.seq_len,
                        data_wait_fraction=data_wait / elapsed,
                        step_time=elapsed / n)
                    mfu = flops_lib.mfu(seqs * inputs.seq_len, flops_per_token, jax.device_count(),
                                        device_kind)
                    if mfu is not None:
                        train_metrics["mfu"] = mfu
                    writer.write_scalars(step, {f"train/{k}": v for k, v in train_metrics.items()})
                    eta = metrics_lib.format_duration((num_steps - step) * elapsed / n)
                    log(_progress(step, num_steps, train_metrics, eta))
                    last_log_time, last_log_step, data_wait = time.time(), step, 0.0

                if inputs.evaluate is not None and (step % t_cfg.eval_every == 0 or step == num_steps):
                    if pending:
                        train_metrics = {**train_metrics, **flush()}
                    eval_metrics = inputs.evaluate(steps, state["params"], mesh)
                    writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                    log(f"eval @ {step}: " + " ".join(f"{k}={v:.4f}" for k, v in eval_metrics.items()))
                    if best_metric:
                        best = _track_best(best, eval_metrics, best_metric, best_mode, step, state,
                                           workdir, cfg)
                    last_log_time, last_log_step, data_wait = time.time(), step, 0.0

                if step % t_cfg.checkpoint_every == 0 and step < num_steps:
                    if pending:
                        train_metrics = {**train_metrics, **flush()}  # never save after a bad step
                    save(step)

                if t_cfg.profile_start_step >= 0:
                    if step == t_cfg.profile_start_step:
                        jax.profiler.start_trace(str(workdir_path / "profile"))
                    elif step == t_cfg.profile_start_step + t_cfg.profile_num_steps:
                        jax.block_until_ready(state["step"])
                        jax.profiler.stop_trace()
                        log(f"profile written to {workdir_path / 'profile'}")

                if preempt.requested(step, int(t_cfg.log_every)):
                    if pending:
                        train_metrics = {**train_metrics, **flush()}
                    save(step, force=True)
                    checkpointer.wait()
                    log(f"SIGTERM: saved step {step} and stopping; rerun the same command to resume")
                    stopped = True
                    break
    except BaseException as e:
        # Let pending async saves finish (or fail) before the error propagates, so the last good
        # checkpoint is committed and no background thread dies mid-write at interpreter exit.
        try:
            checkpointer.close()
        except Exception:  # the original error is the one to report
            pass
        try:
            writer.close()
        except OSError:
            pass
        if isinstance(e, OSError):
            # A full disk or a storage outage while writing metrics or events: as for a failed
            # save, the user fixes the storage and reruns.
            raise UserError(
                f"storage error in {workdir} at step {step} ({ckpt_lib.one_line(e)}); the last "
                f"committed step is {_latest_or_unknown(checkpointer)}. Check free space and "
                "write permission there, then rerun: training resumes from the last committed "
                "step") from e
        raise

    if not stopped:
        if pending:
            train_metrics = {**train_metrics, **flush()}
        if step > start or checkpointer.latest_step() is None:
            save(step, force=True)
        checkpointer.wait()
        if is_main:
            ckpt_lib.write_completed_marker(workdir, step)
            if t_cfg.plot and (workdir_path / "metrics.jsonl").exists():
                path = metrics_lib.plot_curves(workdir_path / "metrics.jsonl",
                                               workdir_path / "curves.png")
                if path:
                    log(f"plot: {path}; TensorBoard: tensorboard --logdir {workdir_path / 'tensorboard'}")
    writer.close()
    checkpointer.close()
    if hasattr(it, "close"):
        it.close()
    cache_size = getattr(steps.train, "_cache_size", None)
    return Result(step=step, train_metrics=train_metrics, eval_metrics=eval_metrics, best=best,
                  stopped_by_signal=stopped,
                  train_compilations=cache_size() if cache_size else -1)


def _write_text_atomic(path: epath.Path, text: str) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    tmp.replace(path)


def _latest_or_unknown(checkpointer) -> str:
    try:
        return str(checkpointer.latest_step())
    except Exception:  # the storage that just failed may fail again
        return "unknown"


def _read_best(workdir: str, name: str) -> dict | None:
    path = epath.Path(workdir) / "best" / "best.json"
    if not path.exists():
        return None
    best = json.loads(path.read_text())
    return best if best.get("metric") == name else None


def _progress(step: int, num_steps: int, m: dict, eta: str) -> str:
    keys = ["loss", "mlm_loss", "mlm_accuracy", "nsp_accuracy", "accuracy", "token_accuracy"]
    parts = [f"{k}={m[k]:.4f}" for k in keys if k in m]
    parts.append(f"lr={m['learning_rate']:.2e}")
    parts.append(f"gnorm={m['grad_norm']:.3f}")
    parts.append(f"{m['sequences_per_second']:.0f} seq/s")
    if "mfu" in m:
        parts.append(f"mfu={100 * m['mfu']:.1f}%")
    parts.append(f"data {100 * m['data_wait_fraction']:.0f}%")
    width = len(str(num_steps))
    return f"step {step:>{width}}/{num_steps} | " + " ".join(parts) + f" | ETA {eta}"


def _track_best(best, metrics, name, mode, step, state, workdir, cfg):
    if name not in metrics:
        raise UserError(f"best metric {name!r} is not among the eval metrics {sorted(metrics)}")
    value = metrics[name]
    better = best is None or (value > best["value"] if mode == "max" else value < best["value"])
    if better or math.isnan(best["value"] if best else 0.0):
        best = {"step": step, "value": value, "metric": name}
        # The best params live apart from the rolling resume checkpoints so keep-last-N never
        # evicts them (orbax #526).
        ckpt_lib.save_params(os.path.join(workdir, "best"), state["params"],
                             {**json.loads(cfg.model.to_json_best_effort()), "task": cfg_task(cfg)},
                             extra_files={"best.json": json.dumps(best).encode()}, overwrite=True)
    return best


def cfg_task(cfg) -> str:
    """The task model a run trains (fine-tuning configs carry task.model_task)."""
    return cfg.task.model_task if "task" in cfg else "pretraining"


def iterate_eval(make_iter: Callable[[], Iterator[dict]], steps: StepFns, params, mesh) -> dict:
    """Sums the eval objective over a finite iterator of (padded) batches."""
    sums = None
    for local in make_iter():
        sums = objectives.add_sums(sums, steps.eval(params, mesh_lib.make_global_batch(local, mesh)))
    return objectives.finalize(sums) if sums is not None else {}
