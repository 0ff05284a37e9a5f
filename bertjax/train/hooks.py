"""The loop's periodic actions, one small class each, called after every step in this order:
log, eval, checkpoint, profile, preemption. `close` runs on every exit path (the end, SIGTERM,
an error), so nothing they started outlives the run."""
from __future__ import annotations

import signal
import time
from typing import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from bertjax.train import flops as flops_lib
from bertjax.train import metrics as metrics_lib
from bertjax.train.step import model_arrays

from bertjax.train.run_state import Run


class Hook:
    def __call__(self, run: Run) -> None:
        raise NotImplementedError

    def close(self, run: Run) -> None:
        del run


class LogMetrics(Hook):
    """Train metrics, throughput and MFU to metrics.jsonl / TensorBoard, and one progress line."""

    def __init__(self, every: int, batch_size: int, flops_per_token: float,
                 metric_names: Sequence[str] = ("loss",)):
        self.every, self.batch_size, self.flops_per_token = every, batch_size, flops_per_token
        self.metric_names = tuple(metric_names)
        self.device_kind = jax.devices()[0].device_kind

    def __call__(self, run: Run) -> None:
        if not run.due(self.every):
            return
        run.train_metrics = run.fetch() if run.pending else run.train_metrics
        m = run.train_metrics
        elapsed = max(time.time() - run.mark_time, 1e-9)
        n = max(run.step - run.mark_step, 1)
        seqs = n * self.batch_size / elapsed
        m.update(learning_rate=float(run.schedule(run.step)), sequences_per_second=seqs,
                 tokens_per_second=seqs * run.inputs.seq_len,
                 data_wait_fraction=run.data_wait / elapsed, step_time=elapsed / n)
        mfu = flops_lib.mfu(seqs * run.inputs.seq_len, self.flops_per_token, jax.device_count(),
                            self.device_kind)
        if mfu is not None:
            m["mfu"] = mfu
        run.writer.write_scalars(run.step, {f"train/{k}": v for k, v in m.items()})
        eta = metrics_lib.format_duration((run.plan.num_steps - run.step) * elapsed / n)
        run.log(progress_line(run.step, run.plan.num_steps, m, eta, self.metric_names))
        run.restart_clock()


class Evaluate(Hook):
    """Dev metrics every `every` steps and at the end; then each of the caller's eval hooks."""

    def __init__(self, every: int, eval_hooks: Sequence[Callable[[Run, dict], None]] = ()):
        self.every, self.eval_hooks = every, list(eval_hooks)

    def __call__(self, run: Run) -> None:
        if not run.due(self.every):
            return
        run.drain()
        run.eval_metrics = run.inputs.evaluate(run.steps, model_arrays(run.state), run.mesh)
        run.writer.write_scalars(run.step, {f"eval/{k}": v for k, v in run.eval_metrics.items()})
        run.log(f"eval @ {run.step}: " +
                " ".join(f"{k}={v:.4f}" for k, v in run.eval_metrics.items()))
        for hook in self.eval_hooks:
            hook(run, run.eval_metrics)
        run.restart_clock()  # eval time is not training throughput


class Checkpoint(Hook):
    """A resume checkpoint every `every` steps (the last step is saved by the loop's end)."""

    def __init__(self, every: int):
        self.every = every

    def __call__(self, run: Run) -> None:
        if self.every > 0 and run.step % self.every == 0 and run.step < run.plan.num_steps:
            run.save()


class Profile(Hook):
    """A jax.profiler trace of steps [start, start + num); stopped on any exit inside it."""

    def __init__(self, start: int, num: int, directory: str):
        self.start, self.stop_at, self.directory = start, start + num, directory
        self.running = False

    def __call__(self, run: Run) -> None:
        if run.step == self.start and not self.running:
            jax.profiler.start_trace(self.directory)
            self.running = True
        elif run.step == self.stop_at and self.running:
            self.close(run)
            run.log(f"profile written to {self.directory}")

    def close(self, run: Run) -> None:
        if self.running:
            jax.block_until_ready(run.state["step"])
            jax.profiler.stop_trace()
            self.running = False


class Preemption(Hook):
    """SIGTERM (the preemption notice on Cloud VMs) sets a flag; the run saves and stops, exit 0.
    Used as a context manager around the steps, which installs the handler."""

    def __init__(self, every: int):
        self.every = every
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

    def requested(self, step: int) -> bool:
        if jax.process_count() == 1:
            return self.flag
        # Saving is collective, so every process must agree to stop at the same step; agreeing
        # costs a host round trip, paid only every `every` steps (the log interval).
        if step % self.every:
            return False
        return bool(np.any(multihost_utils.process_allgather(np.array(self.flag))))

    def __call__(self, run: Run) -> None:
        if self.requested(run.step):
            run.save(force=True)
            run.checkpointer.wait()
            run.log(f"SIGTERM: saved step {run.step} and stopping; rerun the same command to "
                    "resume")
            run.stopped = True


def progress_line(step: int, num_steps: int, m: dict, eta: str,
                  metric_names: Sequence[str] = ("loss",)) -> str:
    """The objective's metrics (its `metrics`, in order), then the run's."""
    parts = [f"{k}={m[k]:.4f}" for k in metric_names if k in m]
    parts.append(f"lr={m['learning_rate']:.2e}")
    parts.append(f"gnorm={m['grad_norm']:.3f}")
    parts.append(f"{m['sequences_per_second']:.0f} seq/s")
    if "mfu" in m:
        parts.append(f"mfu={100 * m['mfu']:.1f}%")
    parts.append(f"data {100 * m['data_wait_fraction']:.0f}%")
    width = len(str(num_steps))
    return f"step {step:>{width}}/{num_steps} | " + " ".join(parts) + f" | ETA {eta}"
