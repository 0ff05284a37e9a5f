"""prepare's Beam runner: the units of work of prepare_units.py as an Apache Beam pipeline.

    bertjax prepare --runner=beam --input='gs://B/corpus/*.txt' --vocab=vocab.txt \\
        --output_dir=gs://B/data128 [--beam_options="--runner=DataflowRunner --project=P ..."]

The main process plans (prepare.plan: options, vocabulary, the shards still to build) and finishes
(prepare.finish: verifies every shard, writes metadata.json last); only the per-file work runs in
the pipeline, through the very functions the local runner calls (prepare_units.py):

    inputs -> reshuffle -> corpus_stats per file --\\
                                                   +-> merge, validate (one element) --(side input)
    units (one per file with pending passes) -> reshuffle -> _run_source(unit) <-------------/

The build stage takes the validated statistics as a side input, so no shard is started before the
whole corpus has been read and accepted, as in the local runner. Nothing here depends on the Beam
runner: without --beam_options it is DirectRunner with --num_workers processes; Dataflow, Flink and
Spark take their own options.

Results come back to the main process through files only, as they must on a cluster: the .done of
every shard and a hidden .corpus-stats.tmp in OUTPUT_DIR. A UserError in a worker reaches the main
process inside Beam's own exception, as text; it is marked on the way out and unwrapped here, so
the command ends with the same one line as the local runner.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile

from bertjax.data import corpus, storage
from bertjax.data import prepare_units as units
from bertjax.errors import UserError
from bertjax.store.files import write_atomic
from bertjax.text import resolve_tokenizer_file, tokenizer_files

STATS_FILE = ".corpus-stats.tmp"
_MARK = "[bertjax-user-error]"


@dataclasses.dataclass(frozen=True)
class VocabFiles:
    """The vocabulary by content (its file and tokenizer_config.json), so a worker on any machine
    loads the tokenizer the main process checked, without a path that exists only here."""

    files: tuple  # (name, bytes) pairs
    main: str

    @classmethod
    def read(cls, path: str) -> VocabFiles:
        _, file = resolve_tokenizer_file(path)
        names = tokenizer_files(path)  # merges.txt beside vocab.json, tokenizer_config.json
        files = []
        for name in names:
            with open(name, "rb") as f:
                files.append((os.path.basename(name), f.read()))
        return cls(tuple(files), os.path.basename(file))

    def local(self) -> str:
        """Writes the files once per machine (named by their hash) and returns the vocab path."""
        h = hashlib.sha256()
        for name, data in self.files:
            h.update(name.encode() + b"\0" + data)
        directory = os.path.join(tempfile.gettempdir(), f"bertjax-vocab-{h.hexdigest()[:16]}")
        os.makedirs(directory, exist_ok=True)
        for name, data in self.files:
            target = os.path.join(directory, name)
            if not os.path.isfile(target) or os.path.getsize(target) != len(data):
                write_atomic(target, data)
        return os.path.join(directory, self.main)


@contextlib.contextmanager
def _marked():
    try:
        yield
    except UserError as e:
        raise UserError(f"{_MARK}{e}{_MARK}") from None


def _unit_stats(item):
    index, o, source = item
    with _marked():
        return index, units.source_stats((o, source))


def _validate(per_source, o, stats_path):
    with _marked():
        stats = units.merge_stats([s for _, s in sorted(per_source, key=lambda x: x[0])])
        # Warnings are printed once, by the main process; a refusal raises here.
        with contextlib.redirect_stderr(io.StringIO()):
            corpus.validate_for_pairs(stats, nsp=o.nsp, pair_task=o.pair_task)
        storage.write_atomic(stats_path, json.dumps(stats))
    return len(per_source)


def _unit_build(job, vocab: VocabFiles, identity: dict, validated: int):
    del validated  # only orders this stage after validation
    with _marked():
        o = dataclasses.replace(job[0], vocab=vocab.local())
        tok = units.cached_tokenizer(o.vocab)
        if tok.identity() != identity:
            raise UserError("the vocabulary a worker loaded differs from the one checked at the "
                            "start; do not change the vocabulary while prepare runs")
        return [name for name, _ in units.run_source((o, *job[1:]))]


def _user_message(error: BaseException) -> str | None:
    """Our one line from inside a runner's exception (any depth of wrapping), or None."""
    seen = set()
    e = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        start = text.find(_MARK)
        if start >= 0:
            end = text.find(_MARK, start + len(_MARK))
            if end > start:
                return text[start + len(_MARK):end]
        if isinstance(e, UserError):
            return text
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def _stderr_to(path: str):
    """Sends file descriptor 2, and with it Beam's logging and its worker processes', to PATH:
    a failed run must end with our one line on stderr, not pages of runner log."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def pipeline_args(pl: units.Plan) -> list[str]:
    o = pl.options
    if o.beam_options:
        return shlex.split(o.beam_options)
    workers = min(o.num_workers, max(len(pl.jobs), 1), len(pl.sources))
    return ["--runner=DirectRunner", f"--direct_num_workers={workers}",
            "--direct_running_mode=multi_processing"]


def run(pl: units.Plan) -> dict:
    """Runs the validation pass and the pending units on Beam; returns the corpus statistics."""
    o = pl.options
    args = pipeline_args(pl)
    runner = next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), "DirectRunner")
    units.announce(pl, f"Beam {runner} ({' '.join(args)})")
    vocab = VocabFiles.read(o.vocab)
    stats_path = storage.join(o.output_dir, STATS_FILE)
    # One scratch directory for the run, as TMPDIR of this process and of the workers it starts
    # here: Beam's job service leaves empty temporary directories behind, and the workers' spool
    # and vocabulary files land there too; all of it goes when the run ends.
    scratch = tempfile.mkdtemp(prefix="bertjax-beam-")
    log_path = os.path.join(scratch, "beam.log")
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = scratch
    keep = False
    try:
        with _stderr_to(log_path):
            try:
                _run_pipeline(pl, args, vocab, stats_path)
            finally:
                # Runner threads may still log on their way down; not to the user's terminal.
                logging.getLogger("apache_beam").setLevel(logging.CRITICAL + 1)
    except Exception as e:  # Beam wraps worker errors in its own types (RuntimeError and others)
        message = _user_message(e)
        if message is not None:
            raise UserError(message) from None  # the one line says it all
        keep = True
        units.echo(f"Beam failed; its log is {log_path}")
        raise
    finally:
        if saved[0] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[0]
        tempfile.tempdir = saved[1]
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)
    if not storage.isfile(stats_path):
        raise UserError("the Beam pipeline finished without its corpus statistics; with a runner "
                        "on other machines, --output_dir must be on storage they share (gs://)")
    stats = json.loads(storage.read_bytes(stats_path))
    storage.remove(stats_path)
    _print_built(pl)
    units.echo("corpus: " + json.dumps(stats))
    corpus.validate_for_pairs(stats, nsp=o.nsp, pair_task=o.pair_task)  # its warnings, on this terminal
    return stats


def _run_pipeline(pl: units.Plan, args: list[str], vocab: VocabFiles, stats_path: str) -> None:
    # Beam takes seconds to import and only --runner=beam needs it; this module's helpers are
    # imported by the workers without it.
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    o = pl.options
    try:
        options = PipelineOptions(args)
        p = beam.Pipeline(options=options)
    except Exception as e:  # unknown runners and malformed options
        raise UserError(f"Beam cannot start with --beam_options={' '.join(args)!r} "
                        f"({type(e).__name__}: {e}); check the options") from None
    inputs = [(i, o, s) for i, s in enumerate(pl.sources)]
    validated = (
        p
        | "inputs" >> beam.Create(inputs)
        | "spread inputs" >> beam.Reshuffle()
        | "corpus stats" >> beam.Map(_unit_stats)
        | "gather" >> beam.combiners.ToList()
        | "validate" >> beam.Map(_validate, o, stats_path))
    _ = (
        p
        | "units" >> beam.Create(pl.jobs)
        | "spread units" >> beam.Reshuffle()
        | "build shards" >> beam.Map(_unit_build, vocab, pl.tokenizer.identity(),
                                     beam.pvalue.AsSingleton(validated)))
    p.run().wait_until_finish()


def _print_built(pl: units.Plan) -> None:
    for job in pl.jobs:
        for p in job[4]:
            path = storage.join(pl.options.output_dir, units.shard_name(job[1], p))
            done = units.load_done(path)
            if done is not None:
                units.print_shard(storage.basename(path), done)
