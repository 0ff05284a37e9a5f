"""Corpus -> pretraining record shards + metadata.json, in parallel, streaming and resumable.

    bertjax prepare --input='corpus/*.txt' --vocab=vocab.txt --output_dir=data128 \\
        --max_seq_length=128 --max_predictions_per_seq=20 --masking=static --dupe_factor=10 \\
        --num_workers=8

Each input file (or a TFDS dataset, as one unit) is a unit of work (_run_source) for one worker.
A worker streams its documents, tokenizes them, builds instances (bertjax.data.instances) and
writes one output shard per duplication pass: part-IIIII-pass-PPP.rec. Memory per worker is bounded
by the instance builder's document pool and a batch of records, never by the corpus. With several passes
the tokenized documents are spilled once to a temporary cache file and re-read, rather than
tokenized again.

A shard is written under a temporary name, renamed when complete, and only then marked by a
SHARD.done JSON (its parameters, record count, sha256, statistics). A re-run skips shards whose
.done matches the current parameters; anything else (a temporary file left by an interrupted run,
a shard without .done, changed parameters or input) is rebuilt. metadata.json is removed at the
start and written (atomically) only when every shard is complete, so a directory with a
metadata.json is always whole.

Two runners do the same units: --runner=local (default), a process pool on this machine, and
--runner=beam, an Apache Beam pipeline (prepare_beam.py) on DirectRunner or, given --beam_options,
Dataflow, Flink or Spark. Both write the same bytes. Inputs and output_dir may be gs:// URLs
(storage.py).

Before anything is written the corpus is read once and validated (corpus_stats, validate_for_pairs):
a missing or empty input, bytes that are not UTF-8, a bad vocabulary, or a one-document corpus with
NSP end in one line on stderr and exit code 2.
"""
from __future__ import annotations

import dataclasses
import io
import json
import multiprocessing
import os
import pickle
import socket
import sys
import tempfile
import time
from array import array

import numpy as np
from absl import flags
from etils import epath

from bertjax.data import corpus, instances, masking, records, storage
from bertjax.errors import UserError
from bertjax.text import load_tokenizer

METADATA = "metadata.json"
CONTINUATION = "continuation.npy"
VOCAB_DIR = "vocab"
RUNNERS = ("local", "beam")
_BATCH = 512  # instances per numpy masking/writing batch


@dataclasses.dataclass(frozen=True)
class Options:
    input: str
    vocab: str
    output_dir: str
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    masking: str = "static"
    dupe_factor: int = 10
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.15
    whole_word_masking: bool = False
    mask_budget: str = "sequence"  # masking.BUDGETS: "sequence" is the original's rule
    nsp: bool = True
    num_workers: int = 1
    seed: int = 12345
    format: str = "auto"
    text_field: str = "text"
    doc_unit: str = "paragraph"
    tfds_data_dir: str = ""
    tfds_split: str = "train"
    partner_pool: int = 100  # documents random B is drawn from, per worker (instances.PartnerPool)
    runner: str = "local"  # local: a process pool here; beam: an Apache Beam pipeline
    beam_options: str = ""  # Beam pipeline options, as on a command line


def _check_options(o: Options) -> None:
    def need(ok, message):
        if not ok:
            raise UserError(message)

    need(o.input, "no --input given; pass a file, directory or glob of corpus text")
    need(o.vocab, "no --vocab given; pass a vocab.txt, a SentencePiece .model or their directory")
    need(o.output_dir, "no --output_dir given; pass the directory to write the shards into")
    need(o.masking in ("static", "dynamic"), f"--masking={o.masking!r}; use static or dynamic")
    low = 5 if o.nsp else 3
    need(low <= o.max_seq_length < masking.MAX_SEQ_LENGTH,
         f"--max_seq_length={o.max_seq_length} is out of range; use {low} or more (128 and 512 are usual)")
    need(1 <= o.max_predictions_per_seq <= o.max_seq_length,
         f"--max_predictions_per_seq={o.max_predictions_per_seq} must be between 1 and "
         "--max_seq_length (20 at 128 and 80 at 512 are usual)")
    need(1 <= o.dupe_factor <= 255, f"--dupe_factor={o.dupe_factor} must be between 1 and 255")
    need(0.0 <= o.short_seq_prob <= 1.0, f"--short_seq_prob={o.short_seq_prob} must be in [0, 1]")
    need(0.0 < o.masked_lm_prob <= 1.0, f"--masked_lm_prob={o.masked_lm_prob} must be in (0, 1]")
    need(o.mask_budget in masking.BUDGETS,
         f"--mask_budget={o.mask_budget!r}; use sequence (the original's) or candidates")
    need(o.num_workers >= 1, f"--num_workers={o.num_workers} must be at least 1")
    need(o.partner_pool >= 1, f"--partner_pool={o.partner_pool} must be at least 1")
    need(o.format in corpus.FORMATS, f"--format={o.format!r}; use one of {', '.join(corpus.FORMATS)}")
    need(o.runner in RUNNERS, f"--runner={o.runner!r}; use one of {', '.join(RUNNERS)}")
    need(not o.beam_options or o.runner == "beam", "--beam_options needs --runner=beam")


def _sources(o: Options) -> list[str]:
    if o.format == "tfds" or o.input.startswith("tfds:"):
        return [o.input if o.input.startswith("tfds:") else "tfds:" + o.input]
    # Absolute, so that workers started elsewhere (Beam's) open the same files.
    return [p if storage.is_remote(p) else os.path.abspath(p)
            for p in corpus.expand_inputs(o.input)]


def _documents(o: Options, source: str):
    return corpus.iter_documents(source, o.format, text_field=o.text_field, doc_unit=o.doc_unit,
                                 data_dir=o.tfds_data_dir, split=o.tfds_split)


def _source_identity(source: str, tfds_data_dir: str = "") -> dict:
    if source.startswith("tfds:"):
        return {"source": source, "data_dir": os.path.abspath(tfds_data_dir) if tfds_data_dir else ""}
    return storage.identity(source)


def shard_name(index: int, dupe_pass: int) -> str:
    return f"part-{index:05d}-pass-{dupe_pass:03d}{records.SHARD_SUFFIX}"


# ------------------------------------------------------------------------------ worker process

_TOKENIZERS: dict = {}


def _tokenizer(vocab: str):
    if vocab not in _TOKENIZERS:
        _TOKENIZERS[vocab] = load_tokenizer(vocab)
    return _TOKENIZERS[vocab]


def _encode(tok, sentences: list[str]) -> list[array]:
    # One encode per sentence: measured as fast as the tokenizers' batch call on one core, and it
    # leaves the other cores to the other workers.
    out = []
    for s in sentences:
        ids = tok.encode(s)
        if ids:
            out.append(array("i", ids))
    return out


def _tokenized(o: Options, tok, index: int, source: str):
    """(doc_id, sentences as array('i')) for one source; doc_id = (index << 32) | document number."""
    for number, sentences in enumerate(_documents(o, source)):
        yield (index << 32) | number, _encode(tok, sentences)


def _seed_documents(o: Options, tok, index: int, source: str) -> list:
    """The first documents of another input, as extra partners for random next sentences: at most
    partner_pool documents and 64 * max_seq_length tokens, so an input of books costs a few pages
    of tokenizing, not a book."""
    budget = 64 * o.max_seq_length
    seeds, total = [], 0
    for number, sentences in enumerate(_documents(o, source)):
        doc = []
        for sentence in sentences:
            ids = tok.encode(sentence)
            if ids:
                doc.append(array("i", ids))
                total += len(ids)
            if total >= budget:
                break
        if doc:
            seeds.append(((index << 32) | number, doc))
        if total >= budget or len(seeds) >= o.partner_pool:
            break
    return seeds


def _source_stats(job) -> dict:
    o, source = job
    return corpus.corpus_stats(_documents(o, source))


class _Cache:
    """Tokenized documents spilled to a temporary file, so later passes need not tokenize again."""

    def __init__(self, path: str, docs):
        self.path = path
        with open(path, "wb") as f:
            for item in docs:
                pickle.dump(item, f, protocol=pickle.HIGHEST_PROTOCOL)

    def __iter__(self):
        with open(self.path, "rb") as f:
            while True:
                try:
                    yield pickle.load(f)
                except EOFError:
                    return

    def remove(self):
        if os.path.exists(self.path):
            os.unlink(self.path)


def _to_records(batch: list, first_id: int, o: Options, tok, spec: masking.MaskSpec,
                dtype: np.dtype, dupe_pass: int, stats: dict) -> np.ndarray:
    n, s = len(batch), o.max_seq_length
    rec = np.zeros(n, dtype)
    tokens = np.full((n, s), tok.pad_id, np.int32)
    lengths = np.zeros(n, np.int32)
    for k, inst in enumerate(batch):
        tokens[k, :len(inst.tokens)] = inst.tokens
        lengths[k] = len(inst.tokens)
        rec["segment_start"][k] = inst.segment_start
        rec["next_sentence_label"][k] = inst.is_random_next
        rec["a_doc"][k] = inst.a_doc
        rec["b_doc"][k] = inst.b_doc
        stats["short_target"] += inst.short_target
    ids = first_id + np.arange(n, dtype=np.int64)
    rec["example_id"] = ids
    rec["length"] = lengths
    # Static masks are keyed by the pass as the epoch; dynamic data gets its epoch-0 masks counted
    # (not stored) so metadata reports the masked share either way.
    m = masking.mask_batch_np(tokens, lengths, ids, dupe_pass if o.masking == "static" else 0,
                              o.seed, spec)
    pos = np.arange(s)[None, :]
    cand = ((pos < lengths[:, None]) & (tokens != tok.cls_id) & (tokens != tok.sep_id)).sum(1)
    weights = m["masked_lm_weights"] > 0
    stats["instances"] += n
    stats["random_next"] += int(rec["next_sentence_label"].sum())
    stats["tokens"] += int(lengths.sum())
    stats["candidates"] += int(cand.sum())
    stats["masked"] += int(weights.sum())
    base = lengths if spec.budget == "sequence" else cand
    stats["capped"] += int((np.rint(base * o.masked_lm_prob) > o.max_predictions_per_seq).sum())
    chosen = np.take_along_axis(m["input_ids"], m["masked_lm_positions"], axis=1)
    stats["mask_token"] += int((weights & (chosen == tok.mask_id)).sum())
    stats["kept"] += int((weights & (chosen == m["masked_lm_ids"])).sum())
    if o.masking == "static":
        rec["tokens"] = m["input_ids"]
        rec["masked_positions"] = m["masked_lm_positions"]
        rec["masked_ids"] = m["masked_lm_ids"]
        rec["num_masked"] = weights.sum(1)
    else:
        rec["tokens"] = tokens
    return rec


def _build_shard(o: Options, tok, spec, dtype, index: int, dupe_pass: int, docs, seeds,
                 path: str, params: dict) -> dict:
    stats = dict.fromkeys(("instances", "random_next", "tokens", "short_target", "candidates",
                           "masked", "capped", "mask_token", "kept"), 0)
    counts = instances.BuildCounts()
    rng = np.random.default_rng([o.seed, index, dupe_pass])
    common = dict(max_seq_length=o.max_seq_length, short_seq_prob=o.short_seq_prob,
                  cls_id=tok.cls_id, sep_id=tok.sep_id, rng=rng, counts=counts)
    if o.nsp:
        stream = instances.pair_instances(docs, pool_size=o.partner_pool, seed_documents=seeds,
                                          **common)
    else:
        stream = instances.packed_instances(docs, **common)
    first_id = (index << 40) | (dupe_pass << 32)
    start, cpu_start = time.perf_counter(), time.process_time()
    with records.ShardWriter(path) as writer:

        def flush(batch):
            if writer.records + len(batch) > 1 << 32:
                # Example ids hold the instance number in 32 bits (see records.py).
                raise UserError(f"input {index} makes over 2**32 instances in one pass; split it "
                                "into smaller files")
            writer.write(_to_records(batch, first_id + writer.records, o, tok, spec, dtype,
                                     dupe_pass, stats))

        batch = []
        for inst in stream:
            batch.append(inst)
            if len(batch) == _BATCH:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    # Which machine and process built it: run-specific, like the timings, and kept out of the
    # shard and metadata.json for that reason.
    stats["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    stats.update(documents=counts.documents, sentences=counts.sentences,
                 dropped_chunks=counts.dropped_chunks, forced_random=counts.forced_random,
                 seconds=time.perf_counter() - start, cpu_seconds=time.process_time() - cpu_start)
    done = {"params": params, "records": writer.records, "bytes": writer.bytes,
            "sha256": writer.sha256, "stats": stats}
    storage.write_atomic(path + ".done", json.dumps(done, indent=1, sort_keys=True) + "\n")
    return done


def _run_source(job) -> list[tuple[str, dict]]:
    """Builds the pending passes of one source. Runs in a worker process (or in-process)."""
    o, index, source, neighbour, pending, params_by_pass = job
    tok = _tokenizer(o.vocab)
    spec = _mask_spec(o, tok)
    dtype = _record_dtype(o, tok)
    seeds = []
    if o.nsp and neighbour is not None:
        seeds = _seed_documents(o, tok, *neighbour)
    out = []
    cache = None
    try:
        if len(pending) > 1:
            # Next to the shards (the disk meant for them), or on the worker's disk for a bucket.
            where = tempfile.gettempdir() if storage.is_remote(o.output_dir) else o.output_dir
            cache_path = os.path.join(where, f".cache-{index:05d}.{os.getpid()}.tmp")
            cache = _Cache(cache_path, _tokenized(o, tok, index, source))
        for p in pending:
            docs = cache if cache is not None else _tokenized(o, tok, index, source)
            path = storage.join(o.output_dir, shard_name(index, p))
            t0 = time.perf_counter()
            done = _build_shard(o, tok, spec, dtype, index, p, docs, seeds, path, params_by_pass[p])
            done["stats"]["wall_seconds"] = time.perf_counter() - t0
            out.append((storage.basename(path), done))
    finally:
        if cache is not None:
            cache.remove()
    return out


def _init_worker():
    # Workers only read text and write numpy records; keep their logs quiet and single-threaded.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ------------------------------------------------------------------------------- main process


def _mask_spec(o: Options, tok) -> masking.MaskSpec:
    return masking.spec_from_tokenizer(tok, max_predictions=o.max_predictions_per_seq,
                                       rate=o.masked_lm_prob, whole_word=o.whole_word_masking,
                                       budget=o.mask_budget)


def _record_dtype(o: Options, tok) -> np.dtype:
    return records.record_dtype(o.max_seq_length, o.max_predictions_per_seq,
                                records.token_dtype_name(tok.vocab_size), o.masking == "static")


def _common_params(o: Options, tok) -> dict:
    return {
        "format_version": records.VERSION,
        "tokenizer": tok.identity(),
        "max_seq_length": o.max_seq_length,
        "max_predictions_per_seq": o.max_predictions_per_seq,
        "masking": o.masking,
        "masked_lm_prob": o.masked_lm_prob,
        "whole_word_masking": o.whole_word_masking,
        "mask_budget": o.mask_budget,
        "nsp": o.nsp,
        "short_seq_prob": o.short_seq_prob,
        "seed": o.seed,
        "input_format": o.format,
        "text_field": o.text_field,
        "doc_unit": o.doc_unit,
        "tfds_split": o.tfds_split,
        "partner_pool": o.partner_pool,
    }


def _load_done(path: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(path + ".done").decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _is_complete(path: str, params: dict, record_bytes: int,
                 sizes: dict | None = None) -> dict | None:
    """The shard's .done when the shard is complete for these parameters, else None. `sizes`
    (storage.file_sizes of the directory) saves a size request per shard on a bucket."""
    name = storage.basename(path)
    if sizes is not None:
        if name not in sizes or name + ".done" not in sizes:
            return None
        size = sizes[name]
    elif not storage.isfile(path) or not storage.isfile(path + ".done"):
        return None
    else:
        size = storage.size(path)
    done = _load_done(path)
    if not done or done.get("params") != params:
        return None
    if size != done["records"] * record_bytes:
        return None
    return done


def _clean_temporaries(output_dir: str) -> int:
    stale = storage.hidden_temporaries(output_dir)
    for path in stale:
        storage.remove(path)
    return len(stale)


def _merge_stats(parts: list[dict]) -> dict:
    total = corpus.corpus_stats(())
    if not parts:
        return total
    for key in ("documents", "sentences", "characters", "single_sentence_documents"):
        total[key] = sum(p[key] for p in parts)
    total["sentences_per_document_mean"] = (total["sentences"] / total["documents"]
                                            if total["documents"] else 0.0)
    nonempty = [p for p in parts if p["documents"]]
    total["sentences_per_document_min"] = min((p["sentences_per_document_min"] for p in nonempty),
                                              default=0)
    total["sentences_per_document_max"] = max(p["sentences_per_document_max"] for p in parts)
    return total


def _summary(dones: list[dict]) -> dict:
    keys = ("instances", "random_next", "tokens", "short_target", "candidates", "masked", "capped",
            "mask_token", "kept", "dropped_chunks", "forced_random")
    t = {k: sum(d["stats"][k] for d in dones) for k in keys}
    n = max(t["instances"], 1)
    masked = max(t["masked"], 1)
    return {
        "instances": t["instances"],
        "dropped_chunks": t["dropped_chunks"],
        "random_next_share": t["random_next"] / n,
        # One-sentence chunks are always random next; the coin decides only the others.
        "forced_random_share": t["forced_random"] / n,
        "mean_tokens_per_instance": t["tokens"] / n,
        "short_target_share": t["short_target"] / n,
        "masked_share_of_candidates": t["masked"] / max(t["candidates"], 1),
        "mean_masked_per_instance": t["masked"] / n,
        "capped_by_max_predictions_share": t["capped"] / n,
        "mask_token_share": t["mask_token"] / masked,
        "kept_share": t["kept"] / masked,
        "random_token_share": (t["masked"] - t["mask_token"] - t["kept"]) / masked,
    }


def _print(message: str) -> None:
    print(message, flush=True)


@dataclasses.dataclass
class Plan:
    """What a run must do, worked out in the main process before any runner starts: the inputs,
    every shard with the parameters its .done must hold, and the units of work (one per input
    file with its pending passes) that either runner hands to _run_source."""

    options: Options
    tokenizer: object
    sources: list
    identities: list  # _source_identity of each source
    dtype: np.dtype
    common: dict
    shards: list  # (path, params) for every shard of the finished data
    jobs: list  # _run_source arguments, one per input with pending passes

    @property
    def pending(self) -> int:
        return sum(len(job[4]) for job in self.jobs)


def _local_vocab(path: str) -> str:
    """A gs:// vocabulary (a file, or a directory holding vocab.txt or one .model, with its
    tokenizer_config.json) copied to a local directory; a local path as it is."""
    if not storage.is_remote(path):
        return path
    if storage.isfile(path):
        files = [path]
    else:
        files = [f for f in storage.glob_remote(path.rstrip("/") + "/*")
                 if storage.basename(f) == "vocab.txt" or f.endswith(".model")]
        if not files:
            raise UserError(f"tokenizer path {path} holds no vocab.txt and no .model file; pass "
                            "the vocabulary file")
    local = tempfile.mkdtemp(prefix="bertjax-vocab-")
    config = storage.join(path.rsplit("/", 1)[0] if storage.isfile(path) else path,
                          "tokenizer_config.json")
    for f in files + ([config] if storage.isfile(config) else []):
        with open(os.path.join(local, storage.basename(f)), "wb") as out:
            out.write(storage.read_bytes(f))
    return os.path.join(local, storage.basename(files[0])) if len(files) == 1 else local


def plan(o: Options) -> Plan:
    """Checks the options and the vocabulary, readies OUTPUT_DIR (no metadata.json, no temporary
    files) and finds the shards still to build."""
    _check_options(o)
    if not storage.is_remote(o.output_dir):
        o = dataclasses.replace(o, output_dir=os.path.abspath(o.output_dir))
    o = dataclasses.replace(o, vocab=_local_vocab(o.vocab))
    tok = _tokenizer(o.vocab)
    sources = _sources(o)
    storage.makedirs(o.output_dir)
    meta_path = storage.join(o.output_dir, METADATA)
    storage.remove(meta_path)  # the directory is incomplete until this run finishes
    removed = _clean_temporaries(o.output_dir)
    if removed:
        _print(f"removed {removed} temporary file(s) left by an interrupted run")

    dtype = _record_dtype(o, tok)
    common = _common_params(o, tok)
    jobs, shards = [], []
    sizes = storage.file_sizes(o.output_dir)
    identities = [_source_identity(s, o.tfds_data_dir) for s in sources]
    for index, source in enumerate(sources):
        neighbour = None
        if len(sources) > 1:
            n_index = (index + 1) % len(sources)
            neighbour = (n_index, sources[n_index])
        pending, params_by_pass = [], {}
        for p in range(o.dupe_factor):
            params = dict(common, input=identities[index], dupe_pass=p,
                          partners_from=identities[neighbour[0]] if neighbour else None)
            path = storage.join(o.output_dir, shard_name(index, p))
            shards.append((path, params))
            if _is_complete(path, params, dtype.itemsize, sizes) is None:
                pending.append(p)
                params_by_pass[p] = params
        if pending:
            jobs.append((o, index, source, neighbour, pending, params_by_pass))
    return Plan(o, tok, sources, identities, dtype, common, shards, jobs)


def _announce(pl: Plan, workers: str) -> None:
    skipped = len(pl.shards) - pl.pending
    _print(f"{len(pl.shards)} shard(s) from {len(pl.sources)} input(s): {skipped} already "
           f"complete, {pl.pending} to build with {workers}")


def _print_shard(name: str, done: dict) -> None:
    st = done["stats"]
    _print(f"{name}: {done['records']} instances, {st['documents']} documents, "
           f"{st.get('wall_seconds', st['seconds']):.1f}s")


def _run_local(pl: Plan) -> dict:
    """The process-pool runner: validation pass, then the pending units; returns corpus stats."""
    o, sources, jobs = pl.options, pl.sources, pl.jobs
    workers = min(o.num_workers, max(len(jobs), 1), len(sources))
    pool = None
    if workers > 1:
        ctx = multiprocessing.get_context("spawn")
        pool = ctx.Pool(workers, initializer=_init_worker)
    try:
        mapper = pool.imap if pool else map
        t0 = time.perf_counter()
        per_source = list(mapper(_source_stats, [(o, s) for s in sources]))
        stats = _merge_stats(per_source)
        _print("corpus: " + json.dumps(stats) + f" ({time.perf_counter() - t0:.1f}s)")
        corpus.validate_for_pairs(stats, nsp=o.nsp)
        _announce(pl, f"{max(workers, 1)} worker(s)")
        unordered = pool.imap_unordered if pool else map
        for built in unordered(_run_source, jobs):
            for name, done in built:
                _print_shard(name, done)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return stats


def finish(pl: Plan, stats: dict) -> dict:
    """Verifies every shard against its .done and, only then, writes the continuation table, the
    vocabulary and (last) metadata.json. Runner-independent: it reads only what the units wrote."""
    o, tok, dtype, common = pl.options, pl.tokenizer, pl.dtype, pl.common
    dones = []
    sizes = storage.file_sizes(o.output_dir)
    for path, params in pl.shards:
        done = _is_complete(path, params, dtype.itemsize, sizes)
        if done is None:
            raise UserError(f"shard {path} is missing or incomplete after the run; run prepare again")
        dones.append((storage.basename(path), params, done))

    table = io.BytesIO()
    np.save(table, masking.continuation_table(tok))
    storage.write_atomic(storage.join(o.output_dir, CONTINUATION), table.getvalue())
    # The vocabulary travels with the data, so runs (and their exports) can name their tokenizer.
    if storage.is_remote(o.output_dir):
        with tempfile.TemporaryDirectory(prefix="bertjax-vocab-") as local:
            tok.save(local)
            for name in sorted(os.listdir(local)):
                with open(os.path.join(local, name), "rb") as f:
                    storage.write_atomic(storage.join(o.output_dir, VOCAB_DIR, name), f.read())
    else:
        tok.save(os.path.join(o.output_dir, VOCAB_DIR))
    metadata = {
        "format": records.FORMAT,
        **common,
        "static_masks": o.masking == "static",
        "token_dtype": records.token_dtype_name(tok.vocab_size),
        "record_bytes": dtype.itemsize,
        "dupe_factor": o.dupe_factor,
        "special_ids": {"pad": tok.pad_id, "unk": tok.unk_id, "cls": tok.cls_id,
                        "sep": tok.sep_id, "mask": tok.mask_id},
        "vocab_size": tok.vocab_size,
        "continuation_table": CONTINUATION,
        "inputs": [ident["source"] for ident in pl.identities],
        "shards": [{"file": name, "records": d["records"], "input": params["input"]["source"],
                    "dupe_pass": params["dupe_pass"]} for name, params, d in dones],
        "corpus": stats,
        "stats": _summary([d for _, _, d in dones]),
    }
    meta_path = storage.join(o.output_dir, METADATA)
    storage.write_atomic(meta_path, json.dumps(metadata, indent=1) + "\n")
    _print("stats: " + json.dumps(metadata["stats"]))
    _print(f"wrote {metadata['stats']['instances']} instances in {len(dones)} shard(s) and "
           f"{meta_path}")
    return metadata


def prepare(o: Options) -> dict:
    """Runs prepare end to end and returns the metadata written to OUTPUT_DIR/metadata.json."""
    pl = plan(o)
    if pl.options.runner == "beam":
        from bertjax.data import prepare_beam  # builds on this module (an import cycle)

        stats = prepare_beam.run(pl)
    else:
        stats = _run_local(pl)
    return finish(pl, stats)


def verify(output_dir: str) -> dict:
    """`prepare --verify`: checks a prepared directory whole: metadata.json, and every shard it
    lists against its .done (record count, size, sha256) and the vocabulary (every token id).
    Raises UserError naming the first bad shard (and how many are bad); returns a summary."""
    meta_path = os.path.join(output_dir, METADATA)
    if not epath.Path(meta_path).exists():
        raise UserError(f"{output_dir} has no {METADATA}: not prepared data, or its prepare run "
                        "did not finish; run prepare (again: finished shards are kept)")
    try:
        meta = json.loads(epath.Path(meta_path).read_text())
    except ValueError as e:
        raise UserError(f"{meta_path} is not valid JSON ({e}); run prepare again") from None
    if meta.get("format") != records.FORMAT or meta.get("format_version") != records.VERSION:
        raise UserError(f"{meta_path} is not bertjax prepared data of format version "
                        f"{records.VERSION}; prepare it again with this version of bertjax")
    dtype = records.dtype_from_metadata(meta)
    t0 = time.perf_counter()
    total, bad = 0, []
    for shard in meta["shards"]:
        path = os.path.join(output_dir, shard["file"])
        try:
            total += records.verify_shard(path, shard["records"], dtype.itemsize,
                                          lambda p, m: epath.Path(p).open(m), dtype=dtype,
                                          vocab_size=int(meta["vocab_size"]))
        except (records.ShardError, FileNotFoundError) as e:
            bad.append(str(e) if isinstance(e, records.ShardError) else
                       f"shard {path} listed in {METADATA} is missing; copy the prepared "
                       "directory again or rerun prepare")
    seconds = time.perf_counter() - t0
    if bad:
        more = f" (and {len(bad) - 1} more bad shard(s))" if len(bad) > 1 else ""
        raise UserError(bad[0] + more)
    summary = {"shards": len(meta["shards"]), "bytes": total, "seconds": seconds,
               "mb_per_second": total / 1e6 / max(seconds, 1e-9)}
    _print(f"verified {summary['shards']} shard(s), {total} bytes in {seconds:.2f}s "
           f"({summary['mb_per_second']:.0f} MB/s): all match what prepare recorded")
    return summary


def main(argv):
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {' '.join(argv[1:])}; all options are --flags")
    f = flags.FLAGS
    if f.verify:
        if not f.output_dir:
            raise UserError("--verify needs --output_dir=DIR, the prepared directory to check")
        verify(f.output_dir)
        return
    prepare(Options(
        input=f.input, vocab=f.vocab, output_dir=f.output_dir, max_seq_length=f.max_seq_length,
        max_predictions_per_seq=f.max_predictions_per_seq, masking=f.masking,
        dupe_factor=f.dupe_factor, short_seq_prob=f.short_seq_prob,
        masked_lm_prob=f.masked_lm_prob, whole_word_masking=f.whole_word_masking,
        mask_budget=f.mask_budget, nsp=not f.no_nsp, num_workers=f.num_workers, seed=f.seed, format=f.format,
        text_field=f.text_field, doc_unit=f.doc_unit, tfds_data_dir=f.tfds_data_dir,
        tfds_split=f.tfds_split, partner_pool=f.partner_pool, runner=f.runner,
        beam_options=f.beam_options))


def _define_flags():
    d = Options.__dataclass_fields__
    flags.DEFINE_string("input", "", "Corpus files: a file, directory or glob (comma-separated "
                        "for several), or tfds:NAME.")
    flags.DEFINE_string("vocab", "", "vocab.txt, SentencePiece .model, or their directory.")
    flags.DEFINE_string("output_dir", "", "Directory for the shards and metadata.json.")
    flags.DEFINE_integer("max_seq_length", d["max_seq_length"].default, "S.")
    flags.DEFINE_integer("max_predictions_per_seq", d["max_predictions_per_seq"].default, "P.")
    flags.DEFINE_string("masking", "static", "static: masks written now (one per pass); dynamic: "
                        "unmasked sequences, masked anew each epoch by the pipeline.")
    flags.DEFINE_integer("dupe_factor", d["dupe_factor"].default, "Passes over the corpus.")
    flags.DEFINE_float("short_seq_prob", d["short_seq_prob"].default, "Share of short targets.")
    flags.DEFINE_float("masked_lm_prob", d["masked_lm_prob"].default, "Masking rate.")
    flags.DEFINE_bool("whole_word_masking", False, "Mask whole words.")
    flags.DEFINE_string("mask_budget", d["mask_budget"].default,
                        "sequence: mask round(rate * tokens incl. [CLS]/[SEP]), the original's "
                        "count; candidates: round(rate * maskable tokens).")
    flags.DEFINE_bool("no_nsp", False, "No next-sentence pairs: pack full sentences (RoBERTa).")
    flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Worker processes.")
    flags.DEFINE_integer("seed", d["seed"].default, "Seed of everything random.")
    flags.DEFINE_string("format", "auto", "auto | original | text | jsonl | tfds.")
    flags.DEFINE_string("text_field", "text", "JSONL / TFDS text field.")
    flags.DEFINE_string("doc_unit", "paragraph", "text format: paragraph | file per document.")
    flags.DEFINE_string("tfds_data_dir", "", "TFDS data_dir (never downloads).")
    flags.DEFINE_string("tfds_split", "train", "TFDS split.")
    flags.DEFINE_bool("verify", False, "Check --output_dir (prepared data) against what prepare "
                      "recorded: every shard's size, sha256 and token ids; writes nothing.")
    flags.DEFINE_integer("partner_pool", d["partner_pool"].default,
                         "Documents per worker that a random next sentence is drawn from.")
    flags.DEFINE_string("runner", "local", "local: worker processes on this machine; beam: an "
                        "Apache Beam pipeline (see docs/data.md).")
    flags.DEFINE_string("beam_options", "", "Beam pipeline options, e.g. \"--runner=DataflowRunner "
                        "--project=P --region=R --temp_location=gs://B/tmp\"; empty = DirectRunner "
                        "with --num_workers processes.")


if __name__ == "__main__":
    from absl import app

    from bertjax.data import prepare as _module
    from bertjax.errors import user_errors_exit

    # Run the imported module, not __main__: Beam pickles Options and the unit functions by their
    # module name, which a worker process can import only as bertjax.data.prepare.
    _module._define_flags()
    sys.exit(app.run(user_errors_exit(_module.main)))
