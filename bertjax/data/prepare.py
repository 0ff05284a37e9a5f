"""Corpus -> pretraining record shards + metadata.json, in parallel, streaming and resumable.

    bertjax prepare --input='corpus/*.txt' --vocab=vocab.txt --output_dir=data128 \\
        --max_seq_length=128 --max_predictions_per_seq=20 --masking=static --dupe_factor=10 \\
        --num_workers=8

Each input file (or a TFDS dataset, as one unit) is a unit of work (prepare_units.run_source) for
one worker. A worker streams its documents, tokenizes them, builds instances
(bertjax.data.instances) and writes one output shard per duplication pass: part-IIIII-pass-PPP.rec.
Memory per worker is bounded by the instance builder's document pool and a batch of records, never
by the corpus. With several passes the tokenized documents are spilled once to a temporary cache
file and re-read, rather than tokenized again.

A shard is written under a temporary name, renamed when complete, and only then marked by a
SHARD.done JSON (its parameters, record count, sha256, statistics). A re-run skips shards whose
.done matches the current parameters; anything else (a temporary file left by an interrupted run,
a shard without .done, changed parameters or input) is rebuilt. metadata.json is removed at the
start and written (atomically) only when every shard is complete, so a directory with a
metadata.json is always whole.

Two runners do the same units: --runner=local (default), a process pool on this machine, and
--runner=beam, an Apache Beam pipeline (prepare_beam.py) on DirectRunner or, given --beam_options,
Dataflow, Flink or Spark. Both run the same units (prepare_units.py) and write the same bytes.
Inputs and output_dir may be gs:// URLs (storage.py).

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
import sys
import tempfile
import time

import numpy as np
from absl import flags
from etils import epath

from bertjax.data import corpus, masking, prepare_beam, records, storage
from bertjax.data import prepare_units as units
from bertjax.data.prepare_units import Options, Plan, echo, shard_name
from bertjax.errors import UserError
from bertjax.text import identity_diffs

METADATA = "metadata.json"
CONTINUATION = "continuation.npy"
VOCAB_DIR = "vocab"
RUNNERS = ("local", "beam")
# none = no pairs: full sentences packed across documents (RoBERTa; `--no_nsp` is its alias).
PAIR_TASKS = ("nsp", "sop", "none")


def _check_options(o: Options) -> None:
    def need(ok, message):
        if not ok:
            raise UserError(message)

    need(o.input, "no --input given; pass a file, directory or glob of corpus text")
    need(o.vocab, "no --vocab given; pass a vocab.txt, a SentencePiece .model or their directory")
    need(o.output_dir, "no --output_dir given; pass the directory to write the shards into")
    need(o.masking in ("static", "dynamic"), f"--masking={o.masking!r}; use static or dynamic")
    need(o.pair_task in ("", *PAIR_TASKS),
         f"--pair_task={o.pair_task!r}; use one of {', '.join(PAIR_TASKS)}")
    need(o.nsp or o.pair_task in ("", "none"),
         f"--no_nsp means --pair_task=none; it cannot go with --pair_task={o.pair_task}")
    low = 5 if o.nsp else 3
    need(low <= o.max_seq_length < masking.MAX_SEQ_LENGTH,
         f"--max_seq_length={o.max_seq_length} is out of range; use {low} or more (128 and 512 are usual)")
    need(1 <= o.max_predictions_per_seq <= o.max_seq_length,
         f"--max_predictions_per_seq={o.max_predictions_per_seq} must be between 1 and "
         "--max_seq_length (20 at 128 and 80 at 512 are usual)")
    need(1 <= o.masking_ngram <= masking.MAX_NGRAM,
         f"--masking_ngram={o.masking_ngram} must be between 1 (single words) and "
         f"{masking.MAX_NGRAM} (ALBERT uses 3)")
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


def _source_identity(source: str, tfds_data_dir: str = "") -> dict:
    if source.startswith("tfds:"):
        return {"source": source, "data_dir": os.path.abspath(tfds_data_dir) if tfds_data_dir else ""}
    return storage.identity(source)


# ------------------------------------------------------------------------------ worker process

def _init_worker():
    # Workers only read text and write numpy records; keep their logs quiet and single-threaded.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ------------------------------------------------------------------------------- main process


def _common_params(o: Options, tok) -> dict:
    return {
        "format_version": records.VERSION,
        "tokenizer": tok.identity(),
        "max_seq_length": o.max_seq_length,
        "max_predictions_per_seq": o.max_predictions_per_seq,
        "masking": o.masking,
        "masked_lm_prob": o.masked_lm_prob,
        "whole_word_masking": o.whole_word_masking,
        # Only when set, like pair_task: data prepared before n-gram masking keeps its shards.
        **({"masking_ngram": o.masking_ngram} if o.masking_ngram > 1 else {}),
        "mask_budget": o.mask_budget,
        "nsp": o.nsp,
        # Only where it is not what `nsp` already says, so NSP and packed shards prepared before
        # pair_task existed keep their parameters and are not rebuilt.
        **({"pair_task": o.pair_task} if o.pair_task == "sop" else {}),
        "short_seq_prob": o.short_seq_prob,
        "seed": o.seed,
        "input_format": o.format,
        "text_field": o.text_field,
        "doc_unit": o.doc_unit,
        "tfds_split": o.tfds_split,
        "partner_pool": o.partner_pool,
    }


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
    done = units.load_done(path)
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


def _local_vocab(path: str) -> str:
    """A gs:// vocabulary (a file, or a directory holding vocab.txt, one .model, vocab.json +
    merges.txt or tokenizer.json, with its tokenizer_config.json) copied to a local directory; a
    local path as it is."""
    if not storage.is_remote(path):
        return path
    if storage.isfile(path):
        files = [path]
    else:
        files = [f for f in storage.glob_remote(path.rstrip("/") + "/*")
                 if storage.basename(f) in ("vocab.txt", "vocab.json", "merges.txt",
                                            "tokenizer.json") or f.endswith(".model")]
        if not files:
            raise UserError(f"tokenizer path {path} holds no vocab.txt and no .model file (nor "
                            "vocab.json + merges.txt, nor tokenizer.json); pass the vocabulary "
                            "file")
    local = tempfile.mkdtemp(prefix="bertjax-vocab-")
    config = storage.join(path.rsplit("/", 1)[0] if storage.isfile(path) else path,
                          "tokenizer_config.json")
    for f in files + ([config] if storage.isfile(config) else []):
        with open(os.path.join(local, storage.basename(f)), "wb") as out:
            out.write(storage.read_bytes(f))
    return os.path.join(local, storage.basename(files[0])) if len(files) == 1 else local


def _check_same_tokenizer(o: Options, tok, meta_path: str) -> None:
    """A directory holds data of one tokenizer: refuse to write another's shards (and vocab/)
    beside those of an earlier run, which metadata.json, or else a shard's .done, names."""
    earlier = None
    if storage.isfile(meta_path):
        try:
            earlier = json.loads(storage.read_bytes(meta_path)).get("tokenizer")
        except (ValueError, AttributeError):
            earlier = None
    if earlier is None:
        for name in sorted(storage.file_sizes(o.output_dir)):
            if name.endswith(records.SHARD_SUFFIX + ".done"):
                done = units.load_done(storage.join(o.output_dir, name[:-len(".done")]))
                earlier = ((done or {}).get("params") or {}).get("tokenizer")
                break
    if isinstance(earlier, dict) and earlier != tok.identity():
        raise UserError(f"--output_dir={o.output_dir} holds data prepared with another tokenizer "
                        f"(earlier vs --vocab: {'; '.join(identity_diffs(earlier, tok.identity()))}"
                        f"); pass a new --output_dir, or delete it to prepare it again with "
                        f"--vocab={o.vocab}")


def plan(o: Options) -> Plan:
    """Checks the options and the vocabulary, readies OUTPUT_DIR (no metadata.json, no temporary
    files) and finds the shards still to build."""
    _check_options(o)
    task = o.pair_task or ("nsp" if o.nsp else "none")
    o = dataclasses.replace(o, pair_task=task, nsp=task != "none")
    if not storage.is_remote(o.output_dir):
        o = dataclasses.replace(o, output_dir=os.path.abspath(o.output_dir))
    o = dataclasses.replace(o, vocab=_local_vocab(o.vocab))
    tok = units.cached_tokenizer(o.vocab)
    sources = _sources(o)
    storage.makedirs(o.output_dir)
    meta_path = storage.join(o.output_dir, METADATA)
    _check_same_tokenizer(o, tok, meta_path)
    storage.remove(meta_path)  # the directory is incomplete until this run finishes
    removed = _clean_temporaries(o.output_dir)
    if removed:
        echo(f"removed {removed} temporary file(s) left by an interrupted run")

    dtype = units.record_dtype(o, tok)
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
        per_source = list(mapper(units.source_stats, [(o, s) for s in sources]))
        stats = units.merge_stats(per_source)
        echo("corpus: " + json.dumps(stats) + f" ({time.perf_counter() - t0:.1f}s)")
        corpus.validate_for_pairs(stats, nsp=o.nsp, pair_task=o.pair_task)
        units.announce(pl, f"{max(workers, 1)} worker(s)")
        unordered = pool.imap_unordered if pool else map
        for built in unordered(units.run_source, jobs):
            for name, done in built:
                units.print_shard(name, done)
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
        "pair_task": o.pair_task,
        "masking_ngram": o.masking_ngram,
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
    echo("stats: " + json.dumps(metadata["stats"]))
    echo(f"wrote {metadata['stats']['instances']} instances in {len(dones)} shard(s) and "
         f"{meta_path}")
    return metadata


def prepare(o: Options) -> dict:
    """Runs prepare end to end and returns the metadata written to OUTPUT_DIR/metadata.json."""
    pl = plan(o)
    if pl.options.runner == "beam":
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
    echo(f"verified {summary['shards']} shard(s), {total} bytes in {seconds:.2f}s "
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
        masking_ngram=f.masking_ngram,
        mask_budget=f.mask_budget, nsp=not f.no_nsp, pair_task=f.pair_task,
        num_workers=f.num_workers, seed=f.seed, format=f.format,
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
    flags.DEFINE_integer("masking_ngram", 1, "Mask spans of 1..N words with p(n) proportional "
                         "to 1/n (ALBERT: 3, with --whole_word_masking); 1 = single words.")
    flags.DEFINE_string("mask_budget", d["mask_budget"].default,
                        "sequence: mask round(rate * tokens incl. [CLS]/[SEP]), the original's "
                        "count; candidates: round(rate * maskable tokens).")
    flags.DEFINE_bool("no_nsp", False, "No next-sentence pairs: pack full sentences (RoBERTa); "
                      "the same as --pair_task=none.")
    flags.DEFINE_string("pair_task", "", "nsp: [CLS] A [SEP] B [SEP] with B random half the time "
                        "(BERT); sop: A and B consecutive in one document, swapped half the time, "
                        "label 1 = swapped (ALBERT); none: packed full sentences. Empty = nsp, or "
                        "none with --no_nsp.")
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

    # Run the imported module, not __main__: worker processes unpickle what they run by its module
    # name (the pool's initializer here, the units in prepare_units), which must be importable.
    _module._define_flags()
    sys.exit(app.run(user_errors_exit(_module.main)))
