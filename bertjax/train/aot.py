"""Ahead-of-time compilation of the train step for a TPU slice that is not here.

libtpu compiles for a TPU topology on any host: `topology_devices("v5p:2x2x2")` returns the slice's
devices, a mesh over them takes the run's config, and `compile_train_step` lowers the same jitted
step the training loop runs (train/step.py) with abstract inputs. What comes back is the real TPU
program: whether it compiles, XLA's memory analysis per chip, its collectives and its FLOPs.
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Any

import jax
from jax.experimental import topologies
from jax.sharding import NamedSharding, PartitionSpec

from bertjax.errors import UserError
from bertjax.train import mesh as mesh_lib
from bertjax.train import optim
from bertjax.train.step import StepFns, make_steps

GIB = 1024 ** 3

# HBM per chip (GiB) and dense bf16 peak (TFLOP/s), from Cloud TPU's system-architecture pages.
CHIPS: dict[str, tuple[int, float]] = {
    "v4": (32, 275.0),
    "v5e": (16, 197.0),
    "v5p": (95, 459.0),
    "v6e": (32, 918.0),
}
# Generations whose chips have two TensorCores: one JAX device per chip needs "megacore".
_MEGACORE = ("v4", "v5p")


def chip_family(topology: str) -> str:
    family = topology.split(":", 1)[0].strip().lower()
    family = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}.get(family, family)
    if family not in CHIPS or ":" not in topology:
        raise UserError(f"unknown TPU topology {topology!r}; use FAMILY:SHAPE with FAMILY one of "
                        f"{sorted(CHIPS)}, e.g. v5e:2x2, v5e:4x4, v4:2x2x1, v5p:2x2x2, v6e:2x2")
    return family


def topology_devices(topology: str, num_slices: int = 1) -> list:
    """The devices of `num_slices` slices of `topology`, without the hardware (libtpu's compiler)."""
    family = chip_family(topology)
    name = f"{family}:{topology.split(':', 1)[1]}"
    kwargs = {"chip_config_name": "megacore"} if family in _MEGACORE else {}
    if num_slices > 1:
        kwargs["num_slices"] = num_slices
    try:
        desc = topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)
    except Exception as e:  # libtpu says "invalid topology" in many ways
        raise UserError(f"libtpu cannot describe TPU topology {topology!r} "
                        f"(num_slices={num_slices}): {str(e).splitlines()[0]}") from None
    return list(desc.devices)


def abstract_batch(objective: Any, batch: int, seq: int, preds: int, mesh) -> dict:
    """ShapeDtypeStructs of one global training batch for `objective`, split over data*fsdp."""
    sharding = mesh_lib.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding)
            for k, (s, d) in objective.batch_spec(batch, seq, preds).items()}


def build_steps(cfg, plan, objective, model_fn, mesh) -> tuple[StepFns, Any, Any]:
    """The optimizer and jitted steps for a run's config and plan: what the training loop runs,
    and what `compile_train_step` compiles. Returns (steps, optimizer, learning-rate schedule)."""
    t_cfg = cfg.train
    if t_cfg.batch_size % t_cfg.grad_accum_steps:
        raise UserError(f"train.batch_size {t_cfg.batch_size} is not divisible by "
                        f"train.grad_accum_steps {t_cfg.grad_accum_steps}")
    if int(t_cfg.grad_accum_steps) > 1 and not objective.summable:
        raise UserError(f"objective {objective.name!r} cannot be summed over micro-batches (its "
                        "loss couples every example of the batch); set "
                        "--config.train.grad_accum_steps=1")
    if plan.task_model != objective.model_task:
        raise UserError(f"objective {objective.name!r} trains a {objective.model_task} model but "
                        f"the run builds a {plan.task_model} model; choose an objective for "
                        f"{plan.task_model} or the model it needs")
    tx, schedule = optim.make_optimizer(cfg.optim, plan.num_steps, plan.warmup_steps,
                                        model_cfg=plan.model)
    steps = make_steps(model_fn, objective, tx, mesh, grad_accum_steps=int(t_cfg.grad_accum_steps))
    return steps, tx, schedule


@dataclasses.dataclass
class Collective:
    kind: str
    count: int
    bytes: int  # summed result sizes, per chip


@dataclasses.dataclass
class Compiled:
    compile_seconds: float
    argument_bytes: int
    output_bytes: int  # outputs not aliased to (donated) arguments
    temp_bytes: int
    code_bytes: int
    xla_flops: float | None  # XLA's cost analysis, per chip
    xla_bytes_accessed: float | None
    collectives: list[Collective]
    uses_splash: bool

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes + self.code_bytes


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
# One instruction per line: "%name = SHAPE all-reduce(" where SHAPE is an array or a tuple of
# them (tuples carry /*index=N*/ comments and tiled layouts such as {1,0:T(8,128)(2,1)}).
_OP = re.compile(r"^\s*(?:ROOT )?%\S+ = (.*?) (" + "|".join(_COLLECTIVES) + r")(-start)?\(",
                 re.MULTILINE)
_SHAPE = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")


def collectives(hlo_text: str) -> list[Collective]:
    """Counts the collectives in an optimized HLO module and the bytes of their results."""
    found: dict[str, Collective] = {}
    for m in _OP.finditer(hlo_text):
        size = 0
        for dtype, dims in _SHAPE.findall(m.group(1)):
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            size += n * _DTYPE_BYTES.get(dtype, 4)
        c = found.setdefault(m.group(2), Collective(m.group(2), 0, 0))
        c.count += 1
        c.bytes += size
    return [found[k] for k in _COLLECTIVES if k in found]


def compile_train_step(steps: StepFns, objective, mesh, batch: int, seq: int,
                       preds: int, effort: float | None = None) -> Compiled:
    """Lowers and compiles `steps.train` for `mesh` with abstract inputs; nothing runs.

    `effort` (-1 to 1) is XLA's execution-time optimization effort. At -1 a TPU compile on this
    CPU box is about 5x faster (Base, one layer, v5e:4x4: 10 s against 52 s) and schedules less
    tightly, so its memory figure comes out higher (0.765 against 0.629 GiB): a check that it
    fits stays on the safe side. `plan` keeps XLA's default so its tables are what a TPU runs."""
    state = mesh_lib.with_shardings(steps.abstract_state, steps.state_shardings)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                               sharding=NamedSharding(mesh, PartitionSpec()))
    # A TPU executable compiled with no TPU client cannot be read back from JAX's persistent
    # compilation cache (it warns and compiles again), so the cache is left out of these compiles.
    cache_was = jax.config.jax_enable_compilation_cache
    effort_was = jax.config.jax_exec_time_optimization_effort
    jax.config.update("jax_enable_compilation_cache", False)
    if effort is not None:
        jax.config.update("jax_exec_time_optimization_effort", float(effort))
    try:
        t0 = time.perf_counter()
        compiled = steps.train.lower(state, abstract_batch(objective, batch, seq, preds, mesh),
                                     key).compile()
        seconds = time.perf_counter() - t0
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_was)
        jax.config.update("jax_exec_time_optimization_effort", effort_was)
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    text = compiled.as_text()
    return Compiled(
        compile_seconds=seconds,
        argument_bytes=int(mem.argument_size_in_bytes),
        output_bytes=int(mem.output_size_in_bytes - mem.alias_size_in_bytes),
        temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes),
        xla_flops=float(cost["flops"]) if "flops" in cost else None,
        xla_bytes_accessed=float(cost["bytes accessed"]) if "bytes accessed" in cost else None,
        collectives=collectives(text),
        uses_splash="splash" in text or "tpu_custom_call" in text,
    )
