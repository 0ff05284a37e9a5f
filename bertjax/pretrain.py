"""Pretraining entrypoint.

bertjax pretrain --config=configs/bert_tiny.py --workdir=DIR \
    --config.data.train_dir=PREPARED [--config.data.eval_dir=PREPARED_HELDOUT] [--config.a.b=v ...]
bertjax pretrain --config=configs/bert_tiny.py --workdir=DIR --config.data.source=text \
    --config.data.text_files='corpus/*.txt' --config.data.vocab=vocab.txt

Starting in a workdir that holds a committed checkpoint resumes from it; --config.init_from loads
params only. SIGTERM saves and exits 0.
"""
from __future__ import annotations

import itertools
import json
import os
import tempfile

import jax
from absl import flags
from etils import epath

from bertjax import cli
from bertjax import config as config_lib
from bertjax.errors import UserError
from bertjax.load import teacher as teacher_lib
from bertjax.model import archs
from bertjax.store import workdir as wd
from bertjax.train import distributed, loop, objectives
from bertjax.train import mesh as mesh_lib
from bertjax.train.run_plan import RunPlan


def define_flags() -> None:
    """Called by the command only (see cli.run)."""
    cli.define_config()
    flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the plot go (local path or URL).")


def _copy_vocab(src: str, dst: str) -> None:
    """Keeps the vocabulary beside the checkpoints: export, embed and fine-tuning find it there."""
    src_p, dst_p = epath.Path(src), epath.Path(dst)
    if not src_p.exists():
        return
    dst_p.mkdir(parents=True, exist_ok=True)
    for f in src_p.iterdir():
        if not (dst_p / f.name).exists():
            tmp = dst_p / f".{f.name}.tmp"  # a kill mid-copy must not leave a torn vocab file
            f.copy(tmp, overwrite=True)
            tmp.replace(dst_p / f.name)


def main(argv):
    del argv
    cfg = cli.get_config()
    workdir = flags.FLAGS.workdir
    if not workdir:
        raise UserError("--workdir is required (a local path or a gs:// URL)")

    distributed.initialize(cfg.distributed)
    result = pretrain(cfg, workdir)

    if jax.process_index() == 0:
        summary = {"step": result.step, "train": result.train_metrics, "eval": result.eval_metrics,
                   "stopped_by_signal": result.stopped_by_signal,
                   "train_step_compilations": result.train_compilations}
        print(json.dumps(summary, sort_keys=True))


def pretrain(cfg, workdir: str):
    """Runs (or resumes) pretraining for a resolved config; returns the loop's Result."""
    config_lib.check_data_source(cfg.data)
    # TensorFlow (the input pipeline) writes C++ log lines when imported, whatever
    # TF_CPP_MIN_LOG_LEVEL says (TF 2.21): imported once the config has been checked, so that a
    # bad flag still ends in one line.
    from bertjax.data import pipeline

    text = None
    if cfg.data.source == "text":
        from bertjax.data import stream

        # The files, the vocabulary and prepare's option checks, then this process's share of
        # the text read once (prepare's refusals), all before anything compiles.
        text = stream.TextSource.from_config(cfg)
        text.validate(jax.process_index(), jax.process_count())
        meta = text.metadata
    elif not cfg.data.train_dir:
        raise UserError("set --config.data.train_dir to a directory made by bertjax.data.prepare, "
                        "or --config.data.source=text with data.text_files and data.vocab")
    else:
        meta = pipeline.read_metadata(cfg.data.train_dir)
    ident = meta["tokenizer"]
    if ident["vocab_size"] != cfg.model.vocab_size:
        raise UserError(
            f"the data was tokenized with a vocabulary of {ident['vocab_size']} entries but "
            f"model.vocab_size is {cfg.model.vocab_size}; pass "
            f"--config.model.vocab_size={ident['vocab_size']}")
    # A workdir (and so its checkpoints) belongs to one tokenizer; refuse data of another.
    wd.check_identity(workdir, ident, f"data vs checkpoints in {workdir}")
    if cfg.init_from:
        wd.check_identity(cfg.init_from, ident, f"data vs --config.init_from={cfg.init_from}")
    if cfg.data.eval_dir:
        pipeline.check_tokenizer(pipeline.read_metadata(cfg.data.eval_dir), ident)
    seq_len = int(meta["max_seq_length"])
    preds = int(meta["max_predictions_per_seq"])
    if cfg.data.max_seq_length != seq_len or cfg.data.max_predictions_per_seq != preds:
        raise UserError(
            f"the data has max_seq_length={seq_len}, max_predictions_per_seq={preds} but the config "
            f"says {cfg.data.max_seq_length}, {cfg.data.max_predictions_per_seq}; pass "
            f"--config.data.max_seq_length={seq_len} --config.data.max_predictions_per_seq={preds}")
    def write_workdir_files():
        # Only once the loop has checked the data, the state and init_from (on_ready): a refused
        # run must not leave an identity that makes the workdir refuse the right data later.
        wd.write_identity(workdir, ident)
        if text is None:
            _copy_vocab(os.path.join(cfg.data.train_dir, wd.VOCAB_DIR),
                        os.path.join(workdir, wd.VOCAB_DIR))
            return
        with tempfile.TemporaryDirectory(prefix="bertjax-vocab-") as local:
            text.tokenizer.save(local)
            _copy_vocab(local, os.path.join(workdir, wd.VOCAB_DIR))

    objective = objectives.from_config(cfg, nsp=bool(meta.get("nsp", True)),
                                       special_ids=meta.get("special_ids"),
                                       pair_task=meta.get("pair_task"))
    # The model's pad id is the data's; where positions count from it (RoBERTa), so does the
    # position table (run_plan.json records the result).
    model = archs.with_pad_id(cfg.model.to_dict(), int(meta["special_ids"]["pad"]))
    usable = model["max_position_embeddings"] - model["position_offset"]
    if seq_len > usable:
        raise UserError(f"the data has max_seq_length={seq_len} but the model has {usable} "
                        "positions; raise --config.model.max_position_embeddings")
    # A distillation run starts from its teacher (load/teacher.py), at the first start and on
    # every resume: its checkpoints leave the teacher out.
    teacher = getattr(objective, "teacher_path", "")
    init_parts = None
    if teacher:
        if cfg.init_from:
            raise UserError(f"--config.init_from={cfg.init_from} is not read by distillation: the "
                            "student starts from the teacher (distill.init=teacher) or at random "
                            "(distill.init=random); drop init_from")
        teacher_lib.check_vocabulary(teacher, ident)
        init_parts = teacher_lib.init_parts(objective, workdir)
    plan = RunPlan.from_config(cfg, task_model=objective.model_task, model=model,
                               init_from=teacher or str(cfg.init_from))
    model_cfg = plan.model_config()
    masking = cfg.data.masking or None

    def make_train(shard, num_shards, local_batch, state):
        if text is not None:
            return text.input(batch_size=local_batch, process_index=shard,
                              process_count=num_shards, state=state,
                              shuffle_buffer=int(cfg.data.shuffle_buffer),
                              prefetch=int(cfg.data.prefetch), validate=False)
        return pipeline.make_pretrain_input(
            cfg.data.train_dir, batch_size=local_batch, process_index=shard,
            process_count=num_shards, seed=int(cfg.train.seed), shuffle=True,
            shuffle_buffer=int(cfg.data.shuffle_buffer), repeat=True, masking=masking,
            prefetch=int(cfg.data.prefetch), start_batch=int(state["batches"]) if state else 0)

    evaluate = None
    if cfg.data.eval_dir:
        def evaluate(steps, params, mesh):
            shard, num_shards, local_batch = mesh_lib.host_batch_slice(mesh, cfg.train.batch_size)

            def make_iter():
                # One pass, fixed masks, at most train.eval_steps batches (every host the same count).
                it = pipeline.make_pretrain_input(
                    cfg.data.eval_dir, batch_size=local_batch, process_index=shard,
                    process_count=num_shards, seed=int(cfg.train.seed), shuffle=False,
                    repeat=False, masking=masking)
                yield from itertools.islice(it, int(cfg.train.eval_steps))
                it.close()

            return loop.iterate_eval(make_iter, steps, params, mesh)

    inputs = loop.Inputs(make_train=make_train, evaluate=evaluate, seq_len=seq_len,
                         predictions_per_seq=preds)
    return loop.train(cfg, plan, objective,
                      lambda: objective.build(plan.task_model, model_cfg, seed=plan.seed),
                      inputs, workdir, on_ready=write_workdir_files, init_parts=init_parts)


if __name__ == "__main__":
    cli.run(main, define_flags)
