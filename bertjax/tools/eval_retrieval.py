"""Retrieval and STS evaluation of an embedding model.

bertjax eval-retrieval --checkpoint=CKPT --data=DIR [--split=test] [--pooling=mean]
bertjax eval-retrieval --checkpoint=CKPT --data=pairs.jsonl

CKPT is anything `embed` reads: a bertjax checkpoint (a fine-tuned embedding model keeps its
pooling, normalisation and prompts), a training workdir, a Hugging Face directory or a
sentence-transformers directory (its pooling, Normalize and prompts are used).

DIR is in BEIR's layout: corpus.jsonl ({"_id", "title", "text"}), queries.jsonl ({"_id",
"text"}) and qrels/<split>.tsv (query-id, corpus-id, score; a header line). Documents are
embedded as "title text" with the checkpoint's "document" prompt, queries with its "query"
prompt. Search is exact: the corpus embeddings sit on the devices of every process, split over
all of them by rows; each device scores a chunk of queries against its rows and keeps its top k,
and the devices' candidates are merged into the global top k. Started on several hosts (as
`pretrain` is: BERTJAX_COORDINATOR, BERTJAX_NUM_PROCESSES, BERTJAX_PROCESS_ID), each host embeds
only its share of the corpus, and process 0 prints the result. Printed: a progress line, a
table, then a last JSON line with ndcg@10, mrr@10, recall@1, recall@10 and recall@100.

A .jsonl of scored pairs ({"text_a", "text_b", "score"}) is scored as STS: the Spearman (and
Pearson) correlation of the cosine of the two embeddings with the score.
"""
from __future__ import annotations

import csv
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax.sharding import NamedSharding, PartitionSpec

from bertjax import cli
from bertjax.errors import UserError
from bertjax.evaluate import retrieval
from bertjax.finetuning.embedding_task import read_jsonl
from bertjax.tools import embed as embed_lib
from bertjax.train import distributed

QUERY_CHUNK = 256
PROGRESS_BLOCK = 512


def _read_jsonl(path: str, what: str) -> list[dict]:
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist; --data must hold {what}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {i} is not JSON ({e.msg})") from None
            if not isinstance(row, dict) or "_id" not in row or "text" not in row:
                raise UserError(f"{path} line {i}: every line needs \"_id\" and \"text\"")
            rows.append(row)
    if not rows:
        raise UserError(f"{path} is empty; {what} needs at least one line")
    return rows


def read_beir(directory: str, split: str = "test"):
    """(corpus ids, corpus texts, query ids, query texts, qrels {qid: {doc index: grade}})."""
    corpus = _read_jsonl(os.path.join(directory, "corpus.jsonl"), "corpus.jsonl (BEIR layout)")
    queries = _read_jsonl(os.path.join(directory, "queries.jsonl"), "queries.jsonl (BEIR layout)")
    doc_ids = [str(r["_id"]) for r in corpus]
    doc_at = {d: i for i, d in enumerate(doc_ids)}
    docs = [(str(r.get("title") or "") + " " + str(r["text"])).strip() for r in corpus]
    qids = {str(r["_id"]): str(r["text"]) for r in queries}
    path = os.path.join(directory, "qrels", f"{split}.tsv")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist; --data must hold qrels/{split}.tsv")
    qrels: dict[str, dict[int, float]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or (i == 1 and not _is_number(row[-1])):
                continue  # the header
            if len(row) < 3 or not _is_number(row[2]):
                raise UserError(f"{path} line {i}: want query-id, corpus-id, score")
            qid, did = row[0], row[1]
            if qid not in qids:
                raise UserError(f"{path} line {i} names query {qid!r}, which queries.jsonl lacks")
            if did not in doc_at:
                raise UserError(f"{path} line {i} names document {did!r}, which corpus.jsonl "
                                "lacks")
            qrels.setdefault(qid, {})[doc_at[did]] = float(row[2])
    if not qrels:
        raise UserError(f"{path} judges no query; write query-id, corpus-id, score lines")
    judged = sorted(qrels)
    return doc_ids, docs, judged, [qids[q] for q in judged], [qrels[q] for q in judged]


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def search_mesh() -> jax.sharding.Mesh:
    """Every device of every process on one axis: the corpus is split over it by rows."""
    return jax.sharding.Mesh(np.array(jax.devices()), ("rows",))


def _blocks(n_docs: int, mesh) -> tuple[int, list[int]]:
    """(rows per device, the mesh positions of this process's devices, in order)."""
    per = max(-(-n_docs // mesh.size), 1)
    me = jax.process_index()
    return per, [i for i, d in enumerate(mesh.devices.flat) if d.process_index == me]


def corpus_rows(n_docs: int, mesh=None) -> np.ndarray:
    """The corpus rows whose embeddings this process holds for `device_search`: the rows of its
    own devices, ascending (every row on one process). A host embeds only these."""
    per, mine = _blocks(n_docs, mesh or search_mesh())
    return np.concatenate([np.arange(b * per, min((b + 1) * per, n_docs)) for b in mine]
                          + [np.zeros(0, np.int64)]).astype(np.int64)


def device_search(queries: np.ndarray, corpus: np.ndarray, k: int = 100,
                  n_docs: int | None = None, mesh=None):
    """Exact inner-product top-k over a corpus split by rows over every device of every process.

    `queries` [Q, H] are the same on every process. `corpus` is this process's share, the rows
    `corpus_rows(n_docs)` in that order, when `n_docs` (the corpus size) is given; without it,
    `corpus` is the whole corpus and each process keeps its own rows of it. Each device scores
    its rows and keeps its top k; the devices' candidates are gathered and the top k of those
    returned to every process, so the answer does not depend on how many processes hold the
    corpus. Ties go to the lower row, as one global top-k would. Returns (indices [Q, k'],
    scores [Q, k']), k' = min(k, corpus size), best first."""
    mesh = mesh or search_mesh()
    dim = corpus.shape[1]
    if n_docs is None:
        n_docs = len(corpus)
        corpus = corpus[corpus_rows(n_docs, mesh)]
    per, mine = _blocks(n_docs, mesh)
    if len(corpus) != len(corpus_rows(n_docs, mesh)):
        raise ValueError(f"this process holds {len(corpus)} corpus rows; corpus_rows({n_docs}) "
                         f"says {len(corpus_rows(n_docs, mesh))}")
    k = min(k, n_docs)
    local = np.zeros((len(mine) * per, dim), np.float32)
    local[:len(corpus)] = corpus  # padding is the global tail, so every host's real rows come first
    at = {b: i * per for i, b in enumerate(mine)}
    c_dev = jax.make_array_from_callback(
        (mesh.size * per, dim), NamedSharding(mesh, PartitionSpec("rows")),
        lambda index: local[at[(index[0].start or 0) // per]:][:per])
    keep = min(k, per)

    def shard(q, c):
        first = jax.lax.axis_index("rows") * per
        s = q @ c.T
        s = jnp.where((first + jnp.arange(per) < n_docs)[None, :], s, -jnp.inf)
        sc, ix = jax.lax.top_k(s, keep)
        # The gather runs in mesh order, so among equal scores the lower global row comes first.
        sc = jax.lax.all_gather(sc, "rows", axis=1, tiled=True)
        ix = jax.lax.all_gather(ix + first, "rows", axis=1, tiled=True)
        sc, j = jax.lax.top_k(sc, k)
        return sc, jnp.take_along_axis(ix, j, axis=1)

    # The gathered candidates are the same on every device, but JAX cannot infer that through
    # all_gather, so the replication check is off.
    top = jax.jit(jax.shard_map(shard, mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec("rows")),
                                out_specs=(PartitionSpec(), PartitionSpec()), check_vma=False))
    replicated = NamedSharding(mesh, PartitionSpec())
    idx, sc = [], []
    for start in range(0, len(queries), QUERY_CHUNK):
        q = np.zeros((QUERY_CHUNK, dim), np.float32)
        part = queries[start:start + QUERY_CHUNK]
        q[:len(part)] = part
        q_dev = jax.make_array_from_callback(q.shape, replicated, lambda index, q=q: q[index])
        s, i = top(q_dev, c_dev)
        # Replicated: this process's first copy is the whole answer.
        idx.append(np.asarray(i.addressable_data(0))[:len(part)])
        sc.append(np.asarray(s.addressable_data(0))[:len(part)])
    return np.concatenate(idx), np.concatenate(sc)


class Embedder:
    """Texts -> embeddings with a checkpoint's own sentence settings."""

    def __init__(self, checkpoint: str, pooling: str = "", batch_size: int = 64,
                 max_seq_length: int = 0, adapter: str | None = None):
        # With LoRA adapters the sentence settings are the ones stored beside them.
        settings = adapter or checkpoint
        self.pooling, self.normalize, stored, _ = embed_lib.sentence_settings(settings, pooling)
        model, cfg, task = embed_lib.load_with_adapter(checkpoint, adapter)
        self.encoder = embed_lib.encoder_of(model, task)
        self.tokenizer = embed_lib.checkpoint_tokenizer(checkpoint, cfg.vocab_size)
        self.prompts = (embed_lib.st_interop.read_config(settings) or {}).get("prompts") or {}
        self.batch_size = batch_size
        self.max_len = max_seq_length or stored or min(cfg.max_length, 512)

    def __call__(self, texts: list[str], prompt: str = "", progress=None) -> np.ndarray:
        """progress(done, total) is called after every block of PROGRESS_BLOCK texts."""
        prefix = self.prompts.get(prompt, "") if prompt else ""
        out = []
        for start in range(0, len(texts), PROGRESS_BLOCK):
            block = [prefix + t for t in texts[start:start + PROGRESS_BLOCK]]
            out.append(embed_lib.embed_texts(self.encoder, self.tokenizer, block, self.pooling,
                                             self.batch_size, self.max_len, self.normalize))
            if progress:
                progress(start + len(block), len(texts))
        return np.concatenate(out)


def bar(what: str):
    """A progress bar on stderr: `what [#####.....] done/total`."""
    def show(done: int, total: int) -> None:
        filled = int(30 * done / max(total, 1))
        end = "\n" if done >= total else ""
        print(f"\r{what} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end=end,
              file=sys.stderr, flush=True)
    return show


def evaluate_beir(embed, directory: str, split: str = "test", log=print) -> dict:
    """With several processes, each embeds only the documents its devices hold (corpus_rows)
    and every one embeds all the queries."""
    _, docs, _, queries, qrels = read_beir(directory, split)
    rows = corpus_rows(len(docs))
    log(f"embedding {len(rows)} of {len(docs)} documents and {len(queries)} queries ...")
    c = embed([docs[i] for i in rows], "document", progress=bar("documents"))
    q = embed(queries, "query", progress=bar("queries  "))
    ranked, _ = device_search(q, c, k=100, n_docs=len(docs))
    return retrieval.retrieval_metrics(ranked, qrels)


def read_pairs(path: str) -> tuple[list[str], list[str], np.ndarray]:
    kind, rows = read_jsonl(path)
    if kind != "scored":
        raise UserError(f"{path} holds {kind} rows; STS needs text_a, text_b, score")
    return ([r["text_a"] for r in rows], [r["text_b"] for r in rows],
            np.array([float(r["score"]) for r in rows]))


def evaluate_sts(embed, path: str) -> dict:
    a, b, gold = read_pairs(path)
    cos = retrieval.cosine_rows(embed(a, "query"), embed(b, "query"))
    return {"spearman": retrieval.spearman(cos, gold), "pearson": retrieval.pearson(cos, gold),
            "pairs": float(len(gold))}


def table(metrics: dict) -> str:
    keys = [k for k in metrics if k not in ("queries", "pairs")]
    head = " | ".join(f"{k:>10}" for k in keys)
    row = " | ".join(f"{metrics[k]:>10.4f}" for k in keys)
    return f"{head}\n{'-' * len(head)}\n{row}"


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "Anything `bertjax embed` reads.")
    flags.DEFINE_string("adapter", None, "LoRA adapters to run over --checkpoint (as `bertjax "
                        "embed --adapter`).")
    flags.DEFINE_string("data", None, "A BEIR directory (corpus.jsonl, queries.jsonl, "
                        "qrels/SPLIT.tsv) or a .jsonl of scored pairs (STS).")
    flags.DEFINE_string("split", "test", "Which qrels/SPLIT.tsv to score.")
    flags.DEFINE_enum("pooling", "", ["", *embed_lib.POOLINGS],
                      "\"\" = the checkpoint's own (see bertjax embed).")
    flags.DEFINE_integer("batch_size", 64, "Texts per forward pass.")
    flags.DEFINE_integer("max_seq_length", 0, "0 = the checkpoint's (else the model's limit).")


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])}")
    FLAGS = flags.FLAGS
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    for name in ("checkpoint", "data"):
        if not getattr(FLAGS, name):
            raise UserError(f"--{name} is required: bertjax eval-retrieval --checkpoint=CKPT "
                            "--data=DIR")
    data = FLAGS.data
    sts = os.path.isfile(data) and data.endswith(".jsonl")
    if not sts and not os.path.isdir(data):
        raise UserError(f"--data={data} is neither a BEIR directory nor a .jsonl of pairs")
    if sts:
        read_pairs(data)  # bad input fails before the model loads
    else:
        read_beir(data, FLAGS.split)
    # After the input checks (no JAX in them), so bad input ends in its one line; before any
    # JAX call. Started on every host (BERTJAX_COORDINATOR, BERTJAX_NUM_PROCESSES,
    # BERTJAX_PROCESS_ID, or a TPU slice), the corpus is split over all of their devices.
    topo = distributed.initialize(None, log=log)
    embed = Embedder(FLAGS.checkpoint, FLAGS.pooling, FLAGS.batch_size, FLAGS.max_seq_length,
                     FLAGS.adapter)
    metrics = evaluate_sts(embed, data) if sts else evaluate_beir(embed, data, FLAGS.split, log)
    if topo.process_index == 0:  # every process holds the same answer
        print(table(metrics))
        print(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    cli.run(main, define_flags)
