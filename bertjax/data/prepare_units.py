"""The units of work of `bertjax prepare` that both runners run, and what they share.

prepare.py plans a run (Plan: the inputs, every shard with its parameters, the pending units) and
finishes it; a runner (prepare.py's process pool, or prepare_beam.py's Apache Beam pipeline) runs
each unit through run_source: one input file, its pending duplication passes, one shard per pass
with its SHARD.done. This module imports neither runner, so both import it:

    prepare -> prepare_units <- prepare_beam,   prepare -> prepare_beam

Options and the unit functions are pickled by this module's name for worker processes (the local
pool's and Beam's), so a worker imports only this module and what it needs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import socket
import tempfile
import time
from array import array

import numpy as np

from bertjax.data import corpus, instances, masking, records, storage
from bertjax.errors import UserError
from bertjax.text import load_tokenizer

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
    masking_ngram: int = 1  # spans of 1..N words, p(n) proportional to 1/n (ALBERT); 1 = words
    mask_budget: str = "sequence"  # masking.BUDGETS: "sequence" is the original's rule
    nsp: bool = True  # sentence pairs with labels (NSP or SOP); False = packed, no pairs
    pair_task: str = ""  # nsp | sop | none; "" = as `nsp` says (prepare.plan resolves it)
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


def shard_name(index: int, dupe_pass: int) -> str:
    return f"part-{index:05d}-pass-{dupe_pass:03d}{records.SHARD_SUFFIX}"


@dataclasses.dataclass
class Plan:
    """What a run must do, worked out in the main process before any runner starts: the inputs,
    every shard with the parameters its .done must hold, and the units of work (one per input
    file with its pending passes) that either runner hands to run_source."""

    options: Options
    tokenizer: object
    sources: list
    identities: list  # prepare._source_identity of each source
    dtype: np.dtype
    common: dict
    shards: list  # (path, params) for every shard of the finished data
    jobs: list  # run_source arguments, one per input with pending passes

    @property
    def pending(self) -> int:
        return sum(len(job[4]) for job in self.jobs)


def mask_spec(o: Options, tok) -> masking.MaskSpec:
    return masking.spec_from_tokenizer(tok, max_predictions=o.max_predictions_per_seq,
                                       rate=o.masked_lm_prob, whole_word=o.whole_word_masking,
                                       ngram=o.masking_ngram,
                                       budget=o.mask_budget)


def record_dtype(o: Options, tok) -> np.dtype:
    return records.record_dtype(o.max_seq_length, o.max_predictions_per_seq,
                                records.token_dtype_name(tok.vocab_size), o.masking == "static")


# ------------------------------------------------------------------------------ worker process

_TOKENIZERS: dict = {}


def cached_tokenizer(vocab: str):
    if vocab not in _TOKENIZERS:
        _TOKENIZERS[vocab] = load_tokenizer(vocab)
    return _TOKENIZERS[vocab]


def _documents(o: Options, source: str):
    return corpus.iter_documents(source, o.format, text_field=o.text_field, doc_unit=o.doc_unit,
                                 data_dir=o.tfds_data_dir, split=o.tfds_split)


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


def source_stats(job) -> dict:
    o, source = job
    return corpus.corpus_stats(_documents(o, source))


def merge_stats(parts: list[dict]) -> dict:
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


def instance_stream(o: Options, tok, index: int, dupe_pass: int, docs, seeds,
                    counts: instances.BuildCounts):
    """The instances of input `index` for one duplication pass (or, streamed, one epoch): the
    pass's random draws all come from (seed, index, pass). prepare's shards and the text stream
    (stream_units.py) both build from here."""
    rng = np.random.default_rng([o.seed, index, dupe_pass])
    common = dict(max_seq_length=o.max_seq_length, short_seq_prob=o.short_seq_prob,
                  cls_id=tok.cls_id, sep_id=tok.sep_id, rng=rng, counts=counts)
    if o.nsp:
        return instances.pair_instances(docs, pool_size=o.partner_pool, seed_documents=seeds,
                                        pair_task=o.pair_task or "nsp", **common)
    return instances.packed_instances(docs, **common)


def first_example_id(index: int, dupe_pass: int) -> int:
    """Example ids: input index, pass (8 bits) and instance number (32 bits); see records.py."""
    return (index << 40) | ((dupe_pass & 0xFF) << 32)


def partner_seeds(o: Options, tok, neighbour) -> list:
    """Random-next partners from the neighbouring input, for NSP only (SOP and packed data
    draw none)."""
    if o.nsp and o.pair_task != "sop" and neighbour is not None:
        return _seed_documents(o, tok, *neighbour)
    return []


def _build_shard(o: Options, tok, spec, dtype, index: int, dupe_pass: int, docs, seeds,
                 path: str, params: dict) -> dict:
    stats = dict.fromkeys(("instances", "random_next", "tokens", "short_target", "candidates",
                           "masked", "capped", "mask_token", "kept"), 0)
    counts = instances.BuildCounts()
    stream = instance_stream(o, tok, index, dupe_pass, docs, seeds, counts)
    first_id = first_example_id(index, dupe_pass)
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


def run_source(job) -> list[tuple[str, dict]]:
    """Builds the pending passes of one source. Runs in a worker process (or in-process)."""
    o, index, source, neighbour, pending, params_by_pass = job
    tok = cached_tokenizer(o.vocab)
    spec = mask_spec(o, tok)
    dtype = record_dtype(o, tok)
    seeds = partner_seeds(o, tok, neighbour)
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


def load_done(path: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(path + ".done").decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------ progress lines


def echo(message: str) -> None:
    print(message, flush=True)


def announce(pl: Plan, workers: str) -> None:
    skipped = len(pl.shards) - pl.pending
    echo(f"{len(pl.shards)} shard(s) from {len(pl.sources)} input(s): {skipped} already "
         f"complete, {pl.pending} to build with {workers}")


def print_shard(name: str, done: dict) -> None:
    st = done["stats"]
    echo(f"{name}: {done['records']} instances, {st['documents']} documents, "
         f"{st.get('wall_seconds', st['seconds']):.1f}s")
