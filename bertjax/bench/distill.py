"""The distillation benchmark (issue 29, DistilBERT's Table 2-4 questions at CPU scale): what a
student distilled from the demo's pretrained model keeps, against the same student pretrained
from scratch and the same student distilled from a random start, at equal student steps.

    python -m bertjax.bench.distill --workdir=DIR [--demo=DEMO_WORKDIR]

Stages (each a bertjax command, its output in DIR/logs/<stage>.log; a stage whose result is
already in DIR is kept, so a rerun after an interruption goes on where it stopped):
1. the teacher: DEMO_WORKDIR/pretrained, the model of a finished `bertjax demo` (without
   --demo, `bertjax demo --skip_finetune --workdir=DIR/demo` is run first). Its corpus,
   vocabulary and labelled WordNet set are the benchmark's too.
2. prepared data without NSP pairs (the demo's corpus in its roberta style: packed sentences,
   dynamic masks), which distillation needs and the scratch student shares;
3. three students of half the teacher's depth, each --steps steps of configs/demo.py's batch,
   optimizer and schedule (configs/distill.py:demo): `distilled` (the distill loss, embeddings,
   MLM head and layers spread over the teacher's from the teacher), `distilled_random_init` (the
   same loss from a random start: DistilBERT's ablation) and `scratch_mlm` (`bertjax pretrain
   --config=configs/demo.py`, MLM only);
4. the demo's WordNet-topic fine-tuning (bertjax.demo.run.finetune_args) of the teacher and each
   student, --seeds seeds each; the score is each seed's final dev accuracy;
5. encoder inference throughput on this CPU: every model as a sequence classifier, the same
   batch and length, jitted, timed in one process in interleaved rounds (the median round).
DIR/results.json holds all of it and is rewritten after every stage.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import jax
import numpy as np
from absl import flags
from flax import nnx

from bertjax import cli
from bertjax.demo import run as demo
from bertjax.errors import UserError

STUDENTS = ("distilled", "distilled_random_init", "scratch_mlm")
# Fine-tuned in this order: the teacher first, since every score is a share of its.
FINETUNED = ("teacher",) + STUDENTS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Where everything goes.")
    flags.DEFINE_string("demo", "", "A finished `bertjax demo` workdir: its pretrained/ is the "
                        "teacher. Empty: the demo is run (without fine-tuning) in DIR/demo.")
    flags.DEFINE_integer("steps", 600, "Pretraining steps of every student (the demo's).")
    flags.DEFINE_integer("student_layers", 0, "Student depth (0: half the teacher's).")
    flags.DEFINE_integer("seeds", 5, "Fine-tuning seeds per model.")
    flags.DEFINE_float("finetune_epochs", 10.0, "Fine-tuning epochs (the demo's).")
    flags.DEFINE_float("finetune_lr", 1e-4, "Fine-tuning learning rate (the demo's).")
    flags.DEFINE_list("students", list(STUDENTS), "Which students to pretrain (a later run "
                      "with more adds them).")
    flags.DEFINE_list("finetune", list(FINETUNED), "Which models to fine-tune (pretrained "
                      "students only).")
    flags.DEFINE_integer("throughput_batch", 64, "Sequences per inference batch.")
    flags.DEFINE_integer("throughput_seq", 32, "Tokens per sequence (the fine-tuning length).")
    flags.DEFINE_integer("throughput_rounds", 7, "Interleaved timing rounds.")
    flags.DEFINE_integer("throughput_calls", 10, "Batches per model per round.")


def _save(w: str, results: dict) -> None:
    tmp = os.path.join(w, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(w, "results.json"))


def _model_cfg(ckpt: str) -> dict:
    return json.load(open(os.path.join(ckpt, "model_config.json")))


def student_commands(name: str, workdir: str, data: str, teacher: str, steps: int,
                     layers: int, vocab_size: int) -> list[str]:
    """The `python -m` arguments that pretrain student `name`."""
    common = [f"--workdir={workdir}", f"--config.data.train_dir={data}/train",
              f"--config.data.eval_dir={data}/heldout", f"--config.train.num_steps={steps}",
              f"--config.model.num_layers={layers}",
              # the teacher's (the demo's vocabulary), so the KL compares like tokens
              f"--config.model.vocab_size={vocab_size}",
              # the demo's 10% warmup at any budget
              f"--config.optim.warmup_steps={max(1, steps // 10)}",
              # one held-out evaluation, at the end: the budget goes to training
              f"--config.train.eval_every={steps}", f"--config.train.checkpoint_every={steps}"]
    if name == "scratch_mlm":
        return ["bertjax.pretrain", "--config=configs/demo.py", *common]
    init = "teacher" if name == "distilled" else "random"
    return ["bertjax.distill", "--config=configs/distill.py:demo", *common,
            f"--config.distill.teacher={teacher}", f"--config.distill.init={init}"]


def throughput(models: dict, batch: int, seq: int, rounds: int, calls: int,
               inputs: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """Sequences per second (wall, and per CPU-second of this process) of each model's classifier
    forward pass (float32, no dropout) on the same token ids (random, or `inputs`: [batch, seq]
    ids and mask, e.g. tokenized texts), jitted, compiled before timing. Rounds interleave the
    models so that a load spike from other processes falls on all of them; each model's figure
    is its median round."""
    from bertjax.load import model_files

    rng = np.random.default_rng(0)
    fns = {}
    for name, path in models.items():
        model, cfg, _, _, _ = model_files.load_model(path, task="sequence_classification",
                                                     allow_missing=True)
        ids, mask = inputs or (rng.integers(1000, cfg.vocab_size, (batch, seq), dtype=np.int32),
                               np.ones((batch, seq), np.int32))
        graphdef, state = nnx.split(model)

        @jax.jit
        def fwd(state, ids, seg, mask, graphdef=graphdef):
            return nnx.merge(graphdef, state)(ids, seg, mask)["logits"]

        args = (state, ids, np.zeros_like(ids), mask)
        fwd(*args).block_until_ready()
        fns[name] = (fwd, args)
    per = {name: [] for name in models}
    cpu = {name: [] for name in models}
    for _ in range(rounds):
        for name, (fwd, args) in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(calls):
                out = fwd(*args)
            out.block_until_ready()
            n = len(args[1]) * calls
            per[name].append(n / (time.perf_counter() - t0))
            cpu[name].append(n / (time.process_time() - c0))
    return {name: {"seq_per_s": statistics.median(v), "rounds": v,
                   "seq_per_cpu_s": statistics.median(cpu[name]), "cpu_rounds": cpu[name]}
            for name, v in per.items()}


def main(argv):
    del argv
    F = flags.FLAGS
    if not F.workdir:
        raise UserError("--workdir is required")
    w = os.path.abspath(F.workdir)
    logs = os.path.join(w, "logs")
    os.makedirs(logs, exist_ok=True)
    for flag, allowed in (("students", STUDENTS), ("finetune", FINETUNED)):
        unknown = sorted(set(getattr(F, flag)) - set(allowed))
        if unknown:
            raise UserError(f"--{flag} names {unknown}; choose from {list(allowed)}")
    missing = sorted(set(F.finetune) - {"teacher", *F.students})
    if missing:
        raise UserError(f"--finetune names {missing}, which --students leaves out")
    progress = demo.Progress(F.seeds, 1)
    path = os.path.join(w, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    if F.steps != results.get("flags", {}).get("steps", F.steps):
        raise UserError(f"{w} holds students of {results['flags']['steps']} steps; equal steps "
                        "is the point, so give that --steps or another --workdir")
    results["flags"] = {k: getattr(F, k) for k in (
        "demo", "steps", "student_layers", "seeds", "finetune_epochs", "finetune_lr",
        "throughput_batch", "throughput_seq", "throughput_rounds", "throughput_calls")}

    dw = os.path.abspath(F.demo) if F.demo else os.path.join(w, "demo")
    teacher = os.path.join(dw, "pretrained")
    if not os.path.exists(os.path.join(teacher, "model_config.json")):
        if F.demo:
            raise UserError(f"--demo={F.demo} has no pretrained/model_config.json; give a "
                            "workdir where `bertjax demo` finished pretraining")
        demo._run(progress, logs, "demo", "bertjax.demo", f"--workdir={dw}", "--skip_finetune")
    corpus, vocab, labelled = (os.path.join(dw, d) for d in ("corpus", "vocab", "wordnet"))
    teacher_cfg = _model_cfg(teacher)
    layers = F.student_layers or teacher_cfg["num_layers"] // 2
    results["teacher"] = {"checkpoint": teacher, "model": teacher_cfg}

    data = os.path.join(w, "data")
    if not os.path.exists(os.path.join(data, "heldout", "metadata.json")):
        demo.prepare_stage(progress, logs, f"{corpus}/wiki-*.txt,{corpus}/gloss/gloss-*.txt",
                           f"{corpus}/heldout/*.txt", vocab, data, "roberta")
    results["prepared"] = {k: demo.prepared_summary(os.path.join(data, k))
                           for k in ("train", "heldout")}
    _save(w, results)

    ckpts = {"teacher": teacher}
    arms = results.setdefault("students", {})
    for name in F.students:
        ckpt = ckpts[name] = os.path.join(w, "students", name)
        if os.path.exists(os.path.join(ckpt, "model_config.json")) and name in arms:
            continue
        run_dir = os.path.join(w, "pretrain", name)
        t0 = time.time()
        out = demo._run(progress, logs, f"pretrain_{name}",
                        *student_commands(name, run_dir, data, teacher, F.steps, layers,
                                         teacher_cfg["vocab_size"]))
        summary = demo._last_json(out)
        demo._save_pretrained(run_dir, vocab, ckpt)
        arms[name] = {"wall_s": round(time.time() - t0, 1), "step": summary.get("step"),
                      "heldout": summary.get("eval", {}), "train_last": summary.get("train", {}),
                      "model": _model_cfg(ckpt)}
        _save(w, results)

    for name in STUDENTS:  # students of an earlier run are timed too
        if name in arms:
            ckpts[name] = os.path.join(w, "students", name)
    ft = results.setdefault("finetune", {})
    for name in F.finetune:
        if name in ft:
            continue
        out = demo._run(progress, logs, f"finetune_{name}", *demo.finetune_args(
            labelled, vocab, os.path.join(w, "finetune", name), ckpts[name],
            _model_cfg(ckpts[name]), F.seeds, F.finetune_epochs, F.finetune_lr))
        res = demo.final_accuracies(demo._last_json(out))
        for r in res["runs"]:
            r.pop("curve", None)  # the per-epoch curves stay in each seed's metrics.jsonl
        ft[name] = res
        _save(w, results)

    results["throughput"] = throughput(ckpts, F.throughput_batch, F.throughput_seq,
                                       F.throughput_rounds, F.throughput_calls)
    results["summary"] = summarize(results)
    _save(w, results)
    progress.say(json.dumps(results["summary"], indent=1))


def summarize(results: dict) -> dict:
    """Each model's final dev accuracies, their mean as a share of the teacher's, and its
    throughput as a multiple of the teacher's."""
    ft, tp = results.get("finetune", {}), results.get("throughput", {})
    out = {}
    base = ft.get("teacher", {}).get("final_mean")
    base_tp = tp.get("teacher", {}).get("seq_per_s")
    for name in FINETUNED:
        row = {}
        if name in ft:
            row["final"] = [r["final"] for r in ft[name]["runs"]]
            row["final_mean"], row["final_std"] = ft[name]["final_mean"], ft[name]["final_std"]
            if base:
                row["pct_of_teacher"] = 100 * ft[name]["final_mean"] / base
        if name in tp:
            row["seq_per_s"] = tp[name]["seq_per_s"]
            if base_tp:
                row["speed_vs_teacher"] = tp[name]["seq_per_s"] / base_tp
        out[name] = row
    return out


if __name__ == "__main__":
    cli.run(main, define_flags)
