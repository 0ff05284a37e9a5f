"""Will it fit? Compiles a run's train step for a TPU slice on any machine, with no TPU.

bertjax plan --config=configs/tpu.py:v5e-4:large --topology=v5e:2x2 \
    [--num_slices=N] [--sweep=batch,remat [--batch_step=8] [--sweep_guess=N]] [--config.a.b=v ...]

The step is the one `bertjax.pretrain` (or `bertjax.finetune`, for a fine-tuning config) would run:
the same model, objective, optimizer, mesh and shardings (train/aot.py builds it the loop's way).
Per chip it prints XLA's compiled memory (arguments, temporaries, total) against the chip's HBM,
the collectives per step, XLA's FLOPs next to the model-FLOPs formula, and the compile time; one
JSON line per configuration, then a table. The numbers are compiled memory, not a TPU run.
--sweep=batch finds the largest per-chip batch that fits (proved by compiling it and the next size
up); --sweep=batch,remat does so for every remat policy. Each probe is a whole compile (minutes for
BERT-Large), so --sweep_guess, e.g. the answer for another slice with the same HBM and mesh, saves
most of them: a right guess is proved in two. A config that does not fit, without
--sweep, ends in one line and exit 2.
"""
from __future__ import annotations

import json
import math

import jax
from absl import flags

from bertjax import cli
from bertjax.config import lora_fields
from bertjax.errors import UserError
from bertjax.store.files import write_atomic
from bertjax.model import BertConfig
from bertjax.model.attention import describe
from bertjax.train import adapters, aot, objectives
from bertjax.train import mesh as mesh_lib
from bertjax.train.run_plan import RunPlan


def define_flags() -> None:
    """Called by the command only (see cli.run)."""
    cli.define_config()
    flags.DEFINE_string("topology", None, "TPU slice to compile for: FAMILY:SHAPE, e.g. v5e:2x2, "
                        "v5e:4x4 (4 hosts), v4:2x2x1, v5p:2x2x2, v6e:2x2.")
    flags.DEFINE_integer("num_slices", 1, "Slices joined over the data-center network (multi-slice).")
    flags.DEFINE_list("sweep", [], "batch: the largest per-chip batch that fits; remat: for each "
                      "remat policy (none, dots, full).")
    flags.DEFINE_string("records", "", "Also write the compiles' JSON rows to this file (replaced "
                        "whole once the plan is done), as docs/plan/ keeps them.")
    flags.DEFINE_integer("batch_step", 8, "Per-chip batch granularity of --sweep=batch.")
    flags.DEFINE_integer("sweep_guess", 0, "Where --sweep=batch starts looking, e.g. the answer "
                         "for a slice with the same HBM and mesh; 0: predict it from two compiles.")


FLAGS = flags.FLAGS

REMAT_POLICIES = ("none", "dots", "full")
# HBM bandwidth per chip (GB/s, Cloud TPU system-architecture pages), for the roofline estimate.
HBM_GBPS = {"v4": 1228.0, "v5e": 819.0, "v5p": 2765.0, "v6e": 1640.0}


def objective_and_task(cfg):
    """What the entrypoint of this config trains: (objective, task model name)."""
    objective = objectives.from_config(cfg)
    return objective, objective.model_task


class Planner:
    """Compiles one config's step for one topology at any per-chip batch and remat policy."""

    def __init__(self, cfg, topology: str, num_slices: int, effort: float | None = None):
        self.cfg, self.topology, self.num_slices = cfg, topology, num_slices
        self.effort = effort
        self.family = aot.chip_family(topology)
        self.hbm_gib, self.peak_tflops = aot.CHIPS[self.family]
        self.devices = aot.topology_devices(topology, num_slices)
        self.mesh = mesh_lib.make_mesh(cfg.mesh, self.devices)
        self.rows = math.prod(self.mesh.shape[a] for a in mesh_lib.BATCH_AXES)
        self.objective, self.task = objective_and_task(cfg)
        self._cache: dict[tuple[int, str], dict] = {}

    def run(self, per_chip: int, remat: str) -> dict:
        key = (per_chip, remat)
        if key not in self._cache:
            self._cache[key] = self._compile(per_chip, remat)
        return self._cache[key]

    def _compile(self, per_chip: int, remat: str) -> dict:
        cfg = self.cfg
        # A LoRA fine-tune (lora.enabled) compiles the step it runs: adapters on the model, the
        # base frozen with no optimizer state (train/adapters.py).
        model_dict = {**cfg.model.to_dict(), **lora_fields(cfg), "remat": remat}
        model_cfg = BertConfig.from_dict(model_dict)
        objective = adapters.wrap(self.objective, model_dict)
        batch = per_chip * self.rows
        seq, preds = int(cfg.data.max_seq_length), int(cfg.data.max_predictions_per_seq)
        accum = int(cfg.train.grad_accum_steps)
        if batch % accum:
            raise UserError(f"batch {batch} is not divisible by train.grad_accum_steps {accum}")
        steps, _, _ = aot.build_steps(cfg, RunPlan.from_config(cfg, task_model=self.task),
                                      objective,
                                      lambda: objective.build(self.task, model_cfg, seed=0),
                                      self.mesh)
        trained = sum(x.size for x in jax.tree.leaves(steps.abstract_state["params"]))
        # What the step holds but does not train (a distillation teacher, LoRA's base): in the
        # compiled arguments with no optimizer state.
        frozen = sum(x.size for x in jax.tree.leaves(steps.abstract_state.get("frozen", {})))
        opt_bytes = sum(x.size * x.dtype.itemsize
                        for x in jax.tree.leaves(steps.abstract_state["opt_state"]))
        # Per top-level part of the model (ELECTRA: bert + discriminator, generator + mlm): its
        # parameters, and its share of the state, weights plus optimizer moments (Adam's mirror
        # the weights, so the moments split as the weights do).
        param_bytes = {part: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
                       for part, tree in steps.abstract_state["params"].items()}
        per_byte = 1 + opt_bytes / max(sum(param_bytes.values()), 1)
        by_part = {part: {"params": int(sum(x.size for x in jax.tree.leaves(tree))),
                          "state_gib": round(param_bytes[part] * per_byte / aot.GIB, 3)}
                   for part, tree in steps.abstract_state["params"].items()}
        row = {
            "topology": self.topology, "num_slices": self.num_slices, "chips": len(self.devices),
            "hosts": len({(getattr(d, "slice_index", 0), d.process_index) for d in self.devices}),
            "device_kind": self.devices[0].device_kind, "task": self.task,
            "model": f"L{model_cfg.num_layers}-H{model_cfg.hidden_size}", "seq_len": seq,
            "batch": batch, "per_chip_batch": per_chip, "grad_accum_steps": accum,
            "remat": remat, "dtype": model_cfg.dtype, "mesh": dict(self.mesh.shape),
            "attention": describe(model_cfg.attention_backend, model_cfg.attention_dropout, seq,
                                  "tpu", relative=model_cfg.relative_attention),
            "hbm_gib": self.hbm_gib, "memory": "compiled (XLA memory_analysis), not a TPU run",
            "lora": ({k.removeprefix("lora_"): model_dict[k] for k in lora_fields(cfg)} or None),
            "trained_params": int(trained), "frozen_params": int(frozen),
            "optimizer_state_gib": round(opt_bytes / aot.GIB, 3),
            "params_by_part": by_part,
        }
        try:
            c = aot.compile_train_step(steps, self.objective, self.mesh, batch, seq, preds,
                                        self.effort)
        except Exception as e:  # XLA reports an HBM overflow as a compile error
            text = str(e)
            if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
                raise
            row.update(compiled=False, fits=False, error=text.strip().splitlines()[0][:300])
            return row
        gib = lambda b: round(b / aot.GIB, 3)  # noqa: E731
        tokens = batch * seq
        preds_for_flops = preds if "masked_lm_positions" in self.objective.batch_spec(1, 1, 1) else None
        model_flops = self.objective.flops_per_token(model_dict, seq, preds_for_flops) * tokens
        per_chip_flops = model_flops / len(self.devices)
        roofline = None
        if c.xla_flops and c.xla_bytes_accessed:
            roofline = max(c.xla_flops / (self.peak_tflops * 1e12),
                           c.xla_bytes_accessed / (HBM_GBPS[self.family] * 1e9))
        row.update(
            compiled=True, compile_seconds=round(c.compile_seconds, 1),
            argument_gib=gib(c.argument_bytes), temp_gib=gib(c.temp_bytes),
            output_gib=gib(c.output_bytes), code_gib=gib(c.code_bytes),
            total_gib=gib(c.total_bytes), fits=c.total_bytes <= self.hbm_gib * aot.GIB,
            collectives=[{"kind": x.kind, "count": x.count, "bytes": x.bytes}
                         for x in c.collectives],
            xla_flops_per_chip=c.xla_flops, model_flops_per_chip=per_chip_flops,
            uses_splash_kernel=c.uses_splash,
            roofline_step_seconds_estimate=roofline,
        )
        return row

    def largest_batch(self, remat: str, start: int, step: int,
                      guess: int | None = None) -> tuple[int, list[dict]]:
        """The largest per-chip batch (a multiple of `step`) that fits, and the compiles that prove
        it: it fits and one `step` more does not. Without a `guess`, two compiles predict it
        (memory grows about linearly with the batch); a bracket around the guess, then
        bisection, proves it. A good guess (a sibling slice's answer) costs two compiles."""
        fits = lambda b: self.run(b, remat)["fits"]  # noqa: E731
        snap = lambda b: max(step, b - b % step)  # noqa: E731
        if guess is None:
            start = snap(start)
            first = self.run(start, remat)
            other = start * 2 if first["fits"] else snap(start // 2)
            guess = start
            if other != start:
                second = self.run(other, remat)
                if first.get("compiled") and second.get("compiled"):
                    slope = (second["total_gib"] - first["total_gib"]) / (other - start)
                    if slope > 0:
                        guess = snap(int((self.hbm_gib - (first["total_gib"] - slope * start))
                                         / slope))
        guess = snap(guess)
        # Bracket: lo fits, hi does not (0 and None when not yet known). The first probe after
        # the guess is its neighbour, so an exact guess is proved by two compiles.
        known = {b: r["fits"] for (b, m), r in self._cache.items() if m == remat}
        lo = max([b for b, f in known.items() if f], default=0)
        hi = min([b for b, f in known.items() if not f], default=None)
        probe, width = guess, step
        while hi is None or (lo == 0 and hi > step):
            moved = True
            if hi is not None and probe >= hi:
                probe = max(step, hi - width)
            elif probe <= lo:
                probe = lo + width
            else:
                moved = False
            if fits(probe):
                lo = max(lo, probe)
            else:
                hi = probe if hi is None else min(hi, probe)
            if moved:
                width *= 2
            if hi is not None and hi <= step and lo == 0:
                return 0, self._rows(remat)
        while hi - lo > step:
            mid = lo + ((hi - lo) // 2) // step * step
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo, self._rows(remat)

    def _rows(self, remat: str) -> list[dict]:
        return [r for (b, m), r in sorted(self._cache.items()) if m == remat]


def _table(rows: list[dict]) -> str:
    head = ("topology", "model", "seq", "remat", "batch/chip", "args GiB", "temp GiB", "total GiB",
            "HBM", "fits", "collectives", "compile s")
    lines = [" | ".join(head)]
    for r in rows:
        coll = ", ".join(f"{c['kind']}x{c['count']}" for c in r.get("collectives", []))
        lines.append(" | ".join(str(x) for x in (
            f"{r['topology']}x{r['num_slices']}" if r["num_slices"] > 1 else r["topology"],
            r["model"], r["seq_len"], r["remat"], r["per_chip_batch"], r.get("argument_gib", "-"),
            r.get("temp_gib", "-"), r.get("total_gib", "-"), r["hbm_gib"],
            "yes" if r["fits"] else "NO", coll or "-", r.get("compile_seconds", "-"))))
    return "\n".join(lines)


def _emit(line: str) -> None:
    print(line, flush=True)  # a sweep of large models takes many minutes: show each compile


def plan(cfg, topology: str, num_slices: int = 1, sweep: tuple[str, ...] = (),
         batch_step: int = 8, emit=_emit, sweep_guess: int = 0) -> list[dict]:
    bad = set(sweep) - {"batch", "remat"}
    if bad:
        raise UserError(f"--sweep takes batch and/or remat, not {sorted(bad)}")
    planner = Planner(cfg, topology, num_slices)
    if cfg.train.batch_size % planner.rows:
        raise UserError(f"train.batch_size {cfg.train.batch_size} does not split over the "
                        f"{planner.rows} batch shards (data*fsdp) of this mesh")
    per_chip = int(cfg.train.batch_size) // planner.rows
    policies = REMAT_POLICIES if "remat" in sweep else (str(cfg.model.remat),)
    rows = []
    for remat in policies:
        if "batch" in sweep:
            best, tried = planner.largest_batch(remat, per_chip, batch_step, sweep_guess or None)
            for r in tried:
                emit(json.dumps(r, sort_keys=True))
            summary = {"topology": topology, "num_slices": num_slices, "remat": remat,
                       "model": tried[0]["model"], "seq_len": tried[0]["seq_len"],
                       "largest_per_chip_batch": best, "batch_step": batch_step,
                       "guess": sweep_guess or None, "compiles": len(tried),
                       "hbm_gib": planner.hbm_gib}
            emit(json.dumps(summary, sort_keys=True))
            rows.extend(tried)
        else:
            row = planner.run(per_chip, remat)
            emit(json.dumps(row, sort_keys=True))
            rows.append(row)
    emit(_table(rows))
    if not sweep and not rows[0]["fits"]:
        r = rows[0]
        need = f"{r['total_gib']:.2f} GiB" if r.get("compiled") else "more than the HBM"
        raise UserError(
            f"{r['model']} at {r['per_chip_batch']} x {r['seq_len']} per chip needs {need} of HBM "
            f"per chip on {topology} but a {planner.family} chip has {planner.hbm_gib} GiB; lower "
            "train.batch_size, raise mesh.fsdp, or set model.remat=dots (--sweep=batch,remat "
            "finds what fits)")
    return rows


def main(argv):
    del argv
    cfg = cli.get_config()
    if not FLAGS.topology:
        raise UserError("--topology is required, e.g. --topology=v5e:2x2")
    if FLAGS.num_slices < 1:
        raise UserError(f"--num_slices must be at least 1, got {FLAGS.num_slices}")
    if FLAGS.batch_step < 1 or FLAGS.sweep_guess < 0:
        raise UserError(f"--batch_step must be at least 1 and --sweep_guess at least 0, got "
                        f"{FLAGS.batch_step} and {FLAGS.sweep_guess}")
    records: list[str] = []

    def emit(line: str) -> None:
        _emit(line)
        if line.startswith("{"):
            records.append(line)

    try:
        plan(cfg, FLAGS.topology, FLAGS.num_slices, tuple(FLAGS.sweep), FLAGS.batch_step,
             emit=emit, sweep_guess=FLAGS.sweep_guess)
    finally:
        # A plan that does not fit is a record too; a compile that crashed leaves what came before.
        if FLAGS.records and records:
            write_atomic(FLAGS.records, "\n".join(records) + "\n")


if __name__ == "__main__":
    cli.run(main, define_flags)
