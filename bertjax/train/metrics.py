"""The metric writers: a stdout progress line, a JSONL file,
TensorBoard event files, and a PNG of the curves at the end.

Only process 0 writes (several writers on one log directory confuse TensorBoard). The event files
are written with TensorBoard's pure-Python record writer and protos: its EventFileWriter goes
through `tensorboard.compat.tf`, which imports TensorFlow whenever it is installed, and the
training side must not load TensorFlow.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath
# TensorBoard's own protos and record writer, without TensorFlow (0.06 s to import).
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

Scalars = Mapping[str, float]


def _fmt(v: float) -> str:
    if isinstance(v, float) and (v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5)):
        return f"{v:.3e}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class StdoutWriter:
    """One line per write: step, metrics, and the ETA from the rate since the first write (so the
    first step's compile time does not inflate it)."""

    def __init__(self, num_steps: int, out=None) -> None:
        self.num_steps = num_steps
        self._out = out
        self._first: tuple[float, int] | None = None

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        now = time.monotonic()
        parts = [f"step {step}/{self.num_steps}"]
        parts += [f"{k} {_fmt(v)}" for k, v in scalars.items()]
        if self._first is None:
            self._first = (now, step)
        elif step > self._first[1]:
            rate = (step - self._first[1]) / (now - self._first[0])
            parts.append(f"{rate:.3g} steps/s")
            parts.append(f"eta {format_duration((self.num_steps - step) / rate)}")
        print(" | ".join(parts), file=self._out, flush=True)

    def write_text(self, tag: str, text: str) -> None:
        print(f"{tag}: {text}", file=self._out, flush=True)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _open_kept(path: epath.Path, mode: str, stack: contextlib.ExitStack):
    """Opens a file that stays open across calls. For URLs (gs://, ...) epath's TensorFlow backend
    returns a context manager, not a file, so it must be entered; the stack closes it."""
    return stack.enter_context(path.open(mode))


class JsonlWriter:
    """Appends {"step", "time", metrics...} lines; after a resume the replayed steps appear again
    and readers keep the last line per step."""

    def __init__(self, path: str | epath.PathLike) -> None:
        self.path = epath.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack()
        self._f = _open_kept(self.path, "a", self._stack)

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        row = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in scalars.items()}}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()

    def write_text(self, tag: str, text: str) -> None:
        pass

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._stack.close()


class TensorBoardWriter:
    """Scalars and text into an events.out.tfevents.* file that TensorBoard reads."""

    def __init__(self, logdir: str | epath.PathLike) -> None:
        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self.logdir = epath.Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}.bertjax"
        self.path = self.logdir / name
        self._stack = contextlib.ExitStack()
        self._records = RecordWriter(_open_kept(self.path, "wb", self._stack))
        self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _add(self, event) -> None:
        self._records.write(event.SerializeToString())

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        values = [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._add(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                        summary=self._summary_pb2.Summary(value=values)))
        self._records.flush()

    def write_text(self, tag: str, text: str, step: int = 0) -> None:
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[text.encode()],
            tensor_shape=tensor_shape_pb2.TensorShapeProto())
        meta = self._summary_pb2.SummaryMetadata(
            plugin_data=self._summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        value = self._summary_pb2.Summary.Value(tag=tag, tensor=tensor, metadata=meta)
        self._add(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                        summary=self._summary_pb2.Summary(value=[value])))
        self._records.flush()

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()
        self._stack.close()


class MultiWriter:
    """Fans out to several writers; with none it is the no-op writer of processes other than 0."""

    def __init__(self, writers: Sequence[Any] = ()) -> None:
        self.writers = list(writers)

    def write_scalars(self, step: int, scalars: Scalars) -> None:
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_text(self, tag: str, text: str) -> None:
        for w in self.writers:
            w.write_text(tag, text)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()

    def close(self) -> None:
        for w in self.writers:
            w.close()

    def __enter__(self) -> MultiWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_writers(workdir: str | epath.PathLike, num_steps: int, *, process_index: int | None = None,
                 stdout: bool = True, jsonl: bool = True, tensorboard: bool = True) -> MultiWriter:
    """The run's writers: <workdir>/metrics.jsonl and <workdir>/tensorboard/ on process 0, nothing
    on the others."""
    index = jax.process_index() if process_index is None else process_index
    if index != 0:
        return MultiWriter()
    workdir = epath.Path(workdir)
    writers: list[Any] = []
    if stdout:
        writers.append(StdoutWriter(num_steps))
    if jsonl:
        writers.append(JsonlWriter(workdir / "metrics.jsonl"))
    if tensorboard:
        writers.append(TensorBoardWriter(workdir / "tensorboard"))
    return MultiWriter(writers)


def read_jsonl(path: str | epath.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric: (steps, values), sorted by step, the last line winning for a repeated step."""
    latest: dict[str, dict[int, float]] = {}
    for line in epath.Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        step = int(row.pop("step"))
        row.pop("time", None)
        for k, v in row.items():
            if isinstance(v, (int, float)):
                latest.setdefault(k, {})[step] = float(v)
    out = {}
    for k, by_step in latest.items():
        steps = np.array(sorted(by_step))
        out[k] = (steps, np.array([by_step[s] for s in steps]))
    return out


def plot_curves(jsonl_path: str | epath.PathLike, png_path: str | epath.PathLike,
                keys: Sequence[str] | None = None) -> epath.Path | None:
    """Draws every metric (or `keys`) against step into one PNG; None if there is nothing to draw."""
    series = read_jsonl(jsonl_path)
    names = [k for k in (keys or sorted(series)) if k in series]
    if not names:
        return None
    # matplotlib takes a second to import and only the plot needs it.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps, values = series[name]
        ax.plot(steps, values, lw=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    png_path = epath.Path(png_path)
    tmp = png_path.parent / f"{png_path.name}.tmp"
    with tmp.open("wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(png_path)  # a rerun overwrites; epath's rename refuses to on gs:// and friends
    return png_path
