"""The one training loop. pretraining and every fine-tuning task call `train()`.

Two parts, as in big_vision's and MaxText's trainers:
- setup (`_setup`): mesh and compiled steps, state (resume > init_from > fresh), input, and the
  run's files;
- the step loop (`_steps`): one step, then the periodic hooks in order: log, eval, checkpoint,
  profile, preemption. A caller adds its own eval hooks (fine-tuning's best checkpoint).
`train()` returns what callers need after it (the compiled steps, the mesh, the final state), so
nothing is rebuilt to predict.
"""
from __future__ import annotations

import json
import time
from typing import Callable, Iterator, Sequence

import jax
from etils import epath

from bertjax.errors import UserError
from bertjax.model.attention import describe as describe_attention
from bertjax.store import lock as workdir_lock
from bertjax.store import workdir as wd
from bertjax.train import aot, objectives
from bertjax.train import checkpoint as ckpt_lib
from bertjax.train import mesh as mesh_lib
from bertjax.train import metrics as metrics_lib
from bertjax.train.hooks import Checkpoint, Evaluate, LogMetrics, Preemption, Profile
from bertjax.train.run_plan import RunPlan
from bertjax.train.run_state import Inputs, Result, Run, saved_state  # noqa: F401
from bertjax.train.step import StepFns, model_arrays


def train(cfg, plan: RunPlan, objective, model_fn: Callable, inputs: Inputs, workdir: str, *,
          eval_hooks: Sequence[Callable[[Run, dict], None]] = (),
          log: Callable[[str], None] = print,
          on_ready: Callable[[], None] | None = None,
          init_parts: Callable | None = None) -> Result:
    """Trains (or resumes) in `workdir` for `plan`. `eval_hooks` run after each eval with its
    metrics. `on_ready` runs on process 0 once the state and the input are set up, before the
    first step: the caller's workdir files go there, so a run refused for bad input leaves
    nothing that a later run could take for its state. `init_parts(abstract, fresh)` ->
    (parts, LoadReport) reads `plan.init_from` into the model's parts ({"params"[, "frozen"]})
    where matching a bertjax checkpoint by path is not how (a distillation teacher)."""
    hold = workdir_lock.acquire(workdir)
    try:
        if cfg.train.debug_nans:
            jax.config.update("jax_debug_nans", True)
        run = _setup(cfg, plan, objective, model_fn, inputs, workdir, log, on_ready, init_parts)
        _steps(run, _hooks(run, eval_hooks))
        return _result(run)
    finally:
        workdir_lock.release(hold)


# --------------------------------------------------------------------------- setup


def _setup(cfg, plan, objective, model_fn, inputs, workdir, log, on_ready, init_parts) -> Run:
    mesh = mesh_lib.make_mesh(cfg.mesh)
    # What the attention really is on this platform (never a silent change of BERT's recipe):
    # printed, and saved in the run plan.
    attention = describe_attention(plan.model["attention_backend"],
                                   float(plan.model["attention_dropout"]), inputs.seq_len,
                                   mesh.devices.flat[0].platform)
    log(f"attention: {attention['train']} while training (attention dropout "
        f"{attention['attention_dropout']}), {attention['eval']} in eval")
    # The same construction `bertjax plan` compiles for TPU slices ahead of time.
    steps, tx, schedule = aot.build_steps(cfg, plan, objective, model_fn, mesh)
    checkpointer = ckpt_lib.Checkpointer(workdir, keep=int(cfg.train.keep_checkpoints),
                                         async_=bool(cfg.train.async_checkpointing))
    state, data_state = _initial_state(plan, objective, steps, tx, checkpointer, workdir, log,
                                       init_parts)
    start = int(jax.device_get(state["step"]))
    if start >= plan.num_steps:
        log(f"already at step {start} >= {plan.num_steps} steps; nothing to do")
    elif jax.process_index() == 0:
        wd.clear_completed(workdir)  # continuing past an old last step: not complete any more
    shard, num_shards, local_batch = mesh_lib.host_batch_slice(mesh, int(cfg.train.batch_size))
    it = inputs.make_train(shard, num_shards, local_batch, data_state)
    if jax.process_index() == 0:
        _write_run_files(cfg, plan, attention, mesh, workdir, log)
        if on_ready is not None:
            on_ready()
    # Process 0 alone writes metrics.jsonl and TensorBoard events; the progress line is ours.
    writer = metrics_lib.make_writers(workdir, plan.num_steps, stdout=False)
    return Run(cfg=cfg, plan=plan, objective=objective, workdir=workdir, inputs=inputs, log=log,
               mesh=mesh,
               steps=steps, schedule=schedule, checkpointer=checkpointer, state=state, it=it,
               writer=writer, start=start, step=start, mark_time=time.time(), mark_step=start)


def _initial_state(plan, objective, steps, tx, checkpointer, workdir, log, init_parts=None):
    """Resume (everything) > init_from (params only, a fresh optimizer) > a fresh init. A frozen
    part the objective does not save comes back from init_from on resume, as it first came."""
    target = mesh_lib.with_shardings(steps.abstract_state, steps.state_shardings)
    latest = checkpointer.latest_step()
    if latest is not None:
        saved = saved_state(objective, target)
        state, data_state, _ = checkpointer.restore(latest, saved)
        if "frozen" in target and "frozen" not in saved:
            fresh = _fresh(plan, steps, tx, target, None, init_parts)
            state = {**state, "frozen": fresh["frozen"]}
        log(f"resumed from step {latest} in {workdir}")
        return state, data_state
    return _fresh(plan, steps, tx, target, log, init_parts), None


def _fresh(plan, steps, tx, target, log, init_parts=None):
    state = steps.init()
    if plan.init_from:
        model = model_arrays(state)
        if init_parts is not None:
            loaded, report = init_parts(model_arrays(target), model)
        else:
            loaded, report = ckpt_lib.load_parts(plan.init_from, model_arrays(target), model)
        opt_state = jax.jit(tx.init, out_shardings=steps.state_shardings["opt_state"])(
            loaded["params"])
        state = {**state, **loaded, "opt_state": opt_state}
        if log is not None:
            log(f"init_from {plan.init_from}: " + report.summary().replace("\n", "; "))
    return state


def _write_run_files(cfg, plan, attention, mesh, workdir, log) -> None:
    run_plan = {**plan.to_dict(), "attention": attention, "mesh": dict(mesh.shape),
                "devices": jax.device_count(), "processes": jax.process_count()}
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    wd.write_atomic(epath.Path(workdir) / wd.CONFIG_FILE, cfg.to_json_best_effort(indent=2))
    wd.write_atomic(epath.Path(workdir) / wd.RUN_PLAN_FILE, json.dumps(run_plan, indent=2))
    derived = {k: v for k, v in plan.to_dict().items() if k not in ("model", "derived")}
    log(f"run plan: {json.dumps(derived, sort_keys=True)} (all of it in "
        f"{epath.Path(workdir) / wd.RUN_PLAN_FILE})")


def _hooks(run: Run, eval_hooks) -> list:
    t = run.cfg.train
    flops_per_token = run.objective.flops_per_token(run.plan.model, run.inputs.seq_len,
                                                    run.inputs.predictions_per_seq)
    hooks = [LogMetrics(int(t.log_every), int(t.batch_size), flops_per_token,
                        run.objective.metrics)]
    if run.inputs.evaluate is not None:
        hooks.append(Evaluate(run.plan.eval_every, eval_hooks))
    hooks.append(Checkpoint(run.plan.checkpoint_every))
    if int(t.profile_start_step) >= 0:
        hooks.append(Profile(int(t.profile_start_step), int(t.profile_num_steps),
                             str(epath.Path(run.workdir) / "profile")))
    hooks.append(Preemption(int(t.log_every)))
    return hooks


# --------------------------------------------------------------------------- the step loop


def _steps(run: Run, hooks: list) -> None:
    base_key = jax.random.key(run.plan.seed)
    preemption = next(h for h in hooks if isinstance(h, Preemption))
    try:
        with preemption:  # the SIGTERM handler is installed for the steps only
            t_start = time.time()
            while run.step < run.plan.num_steps and not run.stopped:
                t0 = time.time()
                local = next(run.it)
                run.data_wait += time.time() - t0
                batch = mesh_lib.make_global_batch(local, run.mesh)
                run.state, m = run.steps.train(run.state, batch, base_key)
                run.step += 1
                m["step"] = run.step
                run.pending.append(m)
                if run.step == run.start + 1:
                    jax.block_until_ready(m["loss"])
                    run.log(f"compiled and ran the first step in {time.time() - t_start:.1f}s")
                    run.restart_clock()
                for hook in hooks:
                    hook(run)
        if not run.stopped:
            _finish(run)
    except BaseException as e:
        _abort(run, hooks, e)
        raise
    _close(run, hooks)


def _finish(run: Run) -> None:
    run.drain()
    if run.step > run.start or run.checkpointer.latest_step() is None:
        run.save(force=True)
    run.checkpointer.wait()
    if jax.process_index() != 0:
        return
    wd.write_completed(run.workdir, run.step)
    curves = epath.Path(run.workdir) / "metrics.jsonl"
    if run.cfg.train.plot and curves.exists():
        path = metrics_lib.plot_curves(curves, epath.Path(run.workdir) / "curves.png")
        if path:
            run.log(f"plot: {path}; TensorBoard: tensorboard --logdir "
                    f"{epath.Path(run.workdir) / 'tensorboard'}")


def _close(run: Run, hooks: list) -> None:
    for hook in hooks:
        hook.close(run)
    run.writer.close()
    run.checkpointer.close()
    if hasattr(run.it, "close"):
        run.it.close()


def _abort(run: Run, hooks: list, e: BaseException) -> None:
    """On any error: stop the profiler, let pending async saves finish (or fail) so the last good
    checkpoint is committed and no thread dies mid-write, then report storage errors in one line."""
    for hook in hooks:
        try:
            hook.close(run)
        except Exception:  # the original error is the one to report
            pass
    try:
        run.checkpointer.close()
    except Exception:
        pass
    try:
        run.writer.close()
    except OSError:
        pass
    if isinstance(e, OSError):
        # A full disk or a storage outage while writing metrics or events: as for a failed save,
        # the user fixes the storage and reruns.
        raise UserError(
            f"storage error in {run.workdir} at step {run.step} ({ckpt_lib.one_line(e)}); the "
            f"last committed step is {_latest_or_unknown(run.checkpointer)}. Check free space and "
            "write permission there, then rerun: training resumes from the last committed "
            "step") from e


def _latest_or_unknown(checkpointer) -> str:
    try:
        return str(checkpointer.latest_step())
    except Exception:  # the storage that just failed may fail again
        return "unknown"


def _result(run: Run) -> Result:
    cache_size = getattr(run.steps.train, "_cache_size", None)
    return Result(step=run.step, train_metrics=run.train_metrics, eval_metrics=run.eval_metrics,
                  steps=run.steps, mesh=run.mesh, state=run.state, plan=run.plan,
                  stopped_by_signal=run.stopped,
                  train_compilations=cache_size() if cache_size else -1)


def iterate_eval(make_iter: Callable[[], Iterator[dict]], steps: StepFns, arrays, mesh) -> dict:
    """Sums the eval objective over a finite iterator of (padded) batches."""
    sums = None
    for local in make_iter():
        sums = objectives.add_sums(sums, steps.eval(arrays, mesh_lib.make_global_batch(local, mesh)))
    return objectives.finalize(sums) if sums is not None else {}
