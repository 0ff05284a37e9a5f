"""Pretraining straight from raw text (data.source=text): tf.data builds the document-level pairs
on the fly, on every host, with fresh pairs each epoch and an exact resume position.

    bertjax pretrain --config=configs/bert_tiny.py --workdir=DIR --config.data.source=text \\
        --config.data.text_files='gs://B/corpus/*.txt' --config.data.vocab=vocab.txt

What a unit of work is, and why processes: one input file for one epoch (stream_units.build_unit),
built with prepare's code (tokenizer, pair algorithm, partner seeds from the neighbouring file), in
a pool of `workers` spawned processes. The pair algorithm is Python and holds the GIL, so tf.data's
own threads (py_function, parallel interleave) would run it on one core; the pool hands the units
out in order (imap), so the stream stays deterministic whatever the number of workers. The rest is
one tf.data pipeline: per epoch, the units' rows -> a shuffle buffer seeded from (seed, epoch) ->
batches -> masks in TensorFlow (masking.mask_batch_tf) -> prefetch.

Per host: the sorted files are dealt out, host h of n taking files h, h + n, ...; each epoch a host
reads its files in an order shuffled from (seed, epoch). Epoch e builds file i's instances from
the random draws (seed, i, e) (or (seed, i, 0) every epoch with keep_epoch0_pairs): epoch e is
prepare's pass e of the same corpus and seed. Static masks are drawn from (seed, pair epoch,
example id) as prepare draws them; dynamic ones from (seed, epoch, example id) as the prepared
pipeline does.

Position: {"batches": n, "epoch_sizes": {host: [instances of each finished epoch]}}. An epoch's
size is known only once it is built, so the host counts its rows as it hands them out (each row
carries its epoch) and the sizes travel with the checkpoint (gathered from every process when
there are several). A restore starts at the first unfinished epoch and skips the rows already
used in it (rebuilding that one epoch up to there). A position without this host's sizes (another
process layout, or a checkpoint of prepared data) is located by rebuilding the epochs before it
and counting: slower, the same batches.
"""
from __future__ import annotations

import collections
import dataclasses
import gc
import itertools
import multiprocessing
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from bertjax.data import corpus, masking, prepare, storage, stream_units
from bertjax.data import prepare_units as units
from bertjax.data.tf_runtime import marked_error, tf
from bertjax.errors import UserError

_MARK = "BERTJAX_BAD_TEXT: "
PAIR_TASKS = ("nsp", "sop", "none")


def options_from_config(data, seed: int) -> units.Options:
    """prepare's Options from the config's data section, checked by prepare's own checks."""
    task = data.pair_task
    o = units.Options(
        input=data.text_files, vocab=data.vocab, output_dir="(stream)",
        max_seq_length=int(data.max_seq_length),
        max_predictions_per_seq=int(data.max_predictions_per_seq),
        masking=data.masking or "static", short_seq_prob=float(data.short_seq_prob),
        masked_lm_prob=float(data.masked_lm_prob), whole_word_masking=bool(data.whole_word_masking),
        masking_ngram=int(data.masking_ngram), mask_budget=data.mask_budget,
        nsp=task != "none", pair_task=task, seed=int(seed), format=data.format,
        partner_pool=int(data.partner_pool))
    if not o.input:
        raise UserError("data.source=text needs --config.data.text_files=GLOB[,GLOB] (local paths "
                        "or gs:// URLs)")
    if not o.vocab:
        raise UserError("data.source=text needs --config.data.vocab=PATH (a vocab.txt, a "
                        "SentencePiece .model or their directory, as prepare --vocab takes)")
    prepare._check_options(o)
    return dataclasses.replace(o, vocab=prepare._local_vocab(o.vocab))


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class TextSource:
    """The corpus, tokenizer and settings of a text stream, checked once per run; `input()` makes
    a host's iterator. `metadata` holds what pretrain reads from a prepared metadata.json."""

    def __init__(self, o: units.Options, *, keep_epoch0_pairs: bool = False, workers: int = 0):
        self.options = o
        self.keep_epoch0_pairs = bool(keep_epoch0_pairs)
        self.files = [p if storage.is_remote(p) else os.path.abspath(p)
                      for p in corpus.expand_inputs(o.input)]
        self.tokenizer = units.cached_tokenizer(o.vocab)
        tok = self.tokenizer
        self.spec = units.mask_spec(o, tok)
        self.workers = int(workers) if workers else default_workers()
        self.metadata = {
            "tokenizer": tok.identity(), "vocab_size": tok.vocab_size,
            "max_seq_length": o.max_seq_length,
            "max_predictions_per_seq": o.max_predictions_per_seq,
            "nsp": o.nsp, "pair_task": o.pair_task, "masking": o.masking,
            "special_ids": {"pad": tok.pad_id, "unk": tok.unk_id, "cls": tok.cls_id,
                            "sep": tok.sep_id, "mask": tok.mask_id},
        }

    @classmethod
    def from_config(cls, cfg) -> "TextSource":
        d = cfg.data
        return cls(options_from_config(d, int(cfg.train.seed)),
                   keep_epoch0_pairs=bool(d.keep_epoch0_pairs), workers=int(d.stream_workers))

    def validate(self, process_index: int, process_count: int) -> None:
        """Reads this host's files once, before training: bad bytes, an empty corpus or one that
        cannot make pairs end in prepare's one-line errors."""
        o, mine = self.options, self.host_files(process_index, process_count)
        pool = _pool(min(self.workers, len(mine)))
        try:
            jobs = [(o, self.files[i]) for i in mine]
            parts = list(pool.imap(units.source_stats, jobs) if pool else map(units.source_stats, jobs))
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        corpus.validate_for_pairs(units.merge_stats(parts), nsp=o.nsp, pair_task=o.pair_task)

    def host_files(self, process_index: int, process_count: int) -> list[int]:
        if len(self.files) < process_count:
            raise UserError(f"data.text_files match {len(self.files)} file(s), fewer than the "
                            f"{process_count} hosts that each read their own; split the corpus "
                            "into at least as many files (many more spread the work better)")
        return list(range(process_index, len(self.files), process_count))

    def neighbour(self, index: int):
        # prepare's neighbour: the next file in sorted order lends random-next partners.
        if len(self.files) < 2:
            return None
        j = (index + 1) % len(self.files)
        return j, self.files[j]

    def input(self, *, batch_size: int, process_index: int = 0, process_count: int = 1,
              state: dict | None = None, **kwargs) -> "TextInput":
        return TextInput(self, batch_size=batch_size, process_index=process_index,
                         process_count=process_count, state=state, **kwargs)


def _pool(workers: int):
    if workers <= 1:
        return None
    # Spawned: the parent holds TensorFlow's and JAX's threads, which fork would copy half-made.
    ctx = multiprocessing.get_context("spawn")
    return ctx.Pool(workers, initializer=stream_units.init_worker)


class TextInput:
    """A host's iterator of numpy batches of the batch contract, with a resumable position."""

    def __init__(self, source: TextSource, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1, state: dict | None = None, shuffle_buffer: int = 10000,
                 prefetch: int = 2, with_example_ids: bool = False, validate: bool = True,
                 workers: int | None = None):
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size}; use 1 or more (per host)")
        self.source = source
        self.batch_size = batch_size
        self.process_index = process_index
        self.process_count = process_count
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.prefetch = prefetch
        self.with_example_ids = with_example_ids
        self.mine = source.host_files(process_index, process_count)
        if validate:
            source.validate(process_index, process_count)
        self._workers = source.workers if workers is None else workers
        self._pool = _pool(min(self._workers, len(self.mine)))
        self._iterator = None
        try:
            self.restore(state or {"batches": 0})
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------------------- epochs

    def _epoch_files(self, epoch: int) -> list[int]:
        rng = np.random.default_rng([self.source.options.seed, epoch, 0x5F11E5])
        return [self.mine[k] for k in rng.permutation(len(self.mine))]

    def _pair_epoch(self, epoch: int) -> int:
        return 0 if self.source.keep_epoch0_pairs else epoch

    def _jobs(self, first_epoch: int):
        """(epoch, job) for every unit from first_epoch on, with (epoch, None) closing each."""
        src, o = self.source, self.source.options
        epoch = first_epoch
        while True:
            for i in self._epoch_files(epoch):
                yield epoch, (o, i, src.files[i], src.neighbour(i), self._pair_epoch(epoch))
            yield epoch, None
            epoch += 1

    def _units(self, epoch: int, producer=None):
        """This host's units of `epoch` in order. With a pool, `producer` keeps the workers a few
        units ahead, across the epoch's end too, so they never idle while a shuffle buffer
        drains; a bounded window, so memory does not grow with the epoch."""
        rows = 0
        try:
            units_of = self._one_epoch(epoch) if producer is None else producer.take(epoch)
            for unit in units_of:
                rows += len(unit["length"])
                if len(unit["length"]):
                    yield unit
        except UserError as e:
            raise ValueError(_MARK + str(e)) from None
        if rows == 0:
            # Every later epoch would be empty too: the stream would never yield a batch.
            raise ValueError(_MARK + f"host {self.process_index}'s files make no instances in "
                             f"epoch {epoch}; give it more text (or more files)")

    def _one_epoch(self, epoch: int):
        jobs = itertools.takewhile(lambda j: j is not None, (job for _, job in self._jobs(epoch)))
        if self._pool is not None:  # counting an epoch to locate a position: all workers
            yield from self._pool.imap(stream_units.build_unit, jobs)
        else:
            yield from map(stream_units.build_unit, jobs)

    def _count(self, epoch: int) -> int:
        return sum(len(u["length"]) for u in self._units(epoch))

    def _dataset(self, first_epoch: int, skip: int) -> tf.data.Dataset:
        o = self.source.options
        s = o.max_seq_length
        spec_of = {"tokens": tf.TensorSpec([None, s], tf.int32),
                   "length": tf.TensorSpec([None], tf.int32),
                   "segment_start": tf.TensorSpec([None], tf.int32),
                   "next_sentence_label": tf.TensorSpec([None], tf.int32),
                   "example_id": tf.TensorSpec([None], tf.int64)}
        seed = o.seed
        keep = self.source.keep_epoch0_pairs

        def plans():
            epoch = first_epoch
            while True:
                shuffle_seed = int(np.random.default_rng([seed, epoch, 0x5B0F]).integers(0, 2**63 - 1))
                yield epoch, shuffle_seed, skip if epoch == first_epoch else 0
                epoch += 1

        producer = _Producer(self._pool, self._jobs(first_epoch), 2 * self._workers) \
            if self._pool is not None else None

        def epoch_dataset(epoch, shuffle_seed, to_skip):
            ds = tf.data.Dataset.from_generator(
                lambda e: self._units(int(e), producer), args=(epoch,), output_signature=spec_of)
            ds = ds.unbatch()
            ds = ds.shuffle(self.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
            ds = ds.skip(to_skip)
            pair_epoch = tf.zeros_like(epoch) if keep else epoch
            return ds.map(lambda r: {**r, "epoch": epoch, "pair_epoch": pair_epoch})

        ds = tf.data.Dataset.from_generator(
            plans, output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64),
                                     tf.TensorSpec([], tf.int64)))
        ds = ds.flat_map(tf.autograph.experimental.do_not_convert(epoch_dataset))
        ds = ds.batch(self.batch_size, drop_remainder=True)
        ds = ds.map(self._batch_stage(), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.prefetch(self.prefetch)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options)

    def _batch_stage(self):
        o, spec = self.source.options, self.source.spec
        s, seed, static = o.max_seq_length, o.seed, o.masking == "static"

        def to_batch(r):
            pos = tf.range(s, dtype=tf.int32)[None, :]
            length = r["length"][:, None]
            out = {
                "segment_ids": tf.cast((pos >= r["segment_start"][:, None]) & (pos < length),
                                       tf.int32),
                "input_mask": tf.cast(pos < length, tf.int32),
                "next_sentence_labels": r["next_sentence_label"],
                "epoch": r["epoch"],
            }
            # Static: prepare's masks of pass `pair epoch`; dynamic: new ones every epoch.
            mask_epochs = r["pair_epoch"] if static else r["epoch"]
            out.update(masking.mask_batch_tf(r["tokens"], r["length"], r["example_id"],
                                             mask_epochs, seed, spec))
            if self.with_example_ids:
                out["example_id"] = r["example_id"]
            return out

        return tf.function(to_batch, autograph=False)

    # ---------------------------------------------------------------------------- position

    def _locate(self, batches: int, sizes: list[int] | None) -> tuple[int, int, list[int]]:
        """(epoch, rows to skip in it, sizes of the epochs before it) for `batches` batches."""
        offset = batches * self.batch_size
        known = list(sizes or [])
        epoch = 0
        while True:
            n = known[epoch] if epoch < len(known) else None
            if n is None and sizes is not None:
                return epoch, offset, known  # the current epoch: never finished when saved
            if n is None:
                n = self._count(epoch)
                if offset < n:
                    return epoch, offset, known[:epoch]
                known.append(n)
            elif offset < n:
                return epoch, offset, known[:epoch]
            offset -= n
            epoch += 1

    def state(self) -> dict:
        sizes = {str(self.process_index): list(self._sizes)}
        if jax.process_count() > 1:
            sizes = _gather_sizes(self.process_index, self._sizes)
        return {"batches": self._batches, "epoch_sizes": sizes}

    def restore(self, state: dict) -> None:
        batches = int(state["batches"])
        if batches < 0:
            raise UserError(f"data position {state} is negative; was it saved for other data?")
        saved = (state.get("epoch_sizes") or {}).get(str(self.process_index))
        if batches == 0:
            saved = []
        epoch, skip, sizes = self._locate(batches, saved)
        self._batches = batches
        self._sizes = sizes
        self._epoch, self._in_epoch = epoch, skip
        self._iterator = iter(self._dataset(epoch, skip).as_numpy_iterator())

    def close(self) -> None:
        self._iterator = None
        gc.collect()
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        try:
            batch = next(self._iterator)
        except tf.errors.OpError as e:
            refusal = marked_error(e, _MARK)
            if refusal is None:
                raise
            raise refusal from None
        epochs = batch["epoch"] if self.with_example_ids else batch.pop("epoch")
        for epoch, n in zip(*np.unique(epochs, return_counts=True)):
            while self._epoch < epoch:  # the rows run on into a later epoch: this one is whole
                self._sizes.append(self._in_epoch)
                self._epoch, self._in_epoch = self._epoch + 1, 0
            self._in_epoch += int(n)
        self._batches += 1
        return batch


class _Producer:
    """Units built by the pool in job order, at most `ahead` of them submitted at a time."""

    def __init__(self, pool, jobs, ahead: int):
        self.pool, self.jobs, self.ahead = pool, jobs, max(1, ahead)
        self.window: collections.deque = collections.deque()

    def _fill(self):
        while len(self.window) < self.ahead:
            epoch, job = next(self.jobs)
            self.window.append((epoch, None if job is None else
                                self.pool.apply_async(stream_units.build_unit, (job,))))

    def take(self, epoch: int):
        while True:
            self._fill()
            e, pending = self.window.popleft()
            if e != epoch:
                raise RuntimeError(f"unit of epoch {e} where epoch {epoch} was expected")
            if pending is None:
                return
            yield pending.get()


def _gather_sizes(index: int, sizes: list[int]) -> dict:
    """Every process's epoch sizes, so process 0's checkpoint holds all hosts' positions."""
    n = multihost_utils.process_allgather(np.array([index, len(sizes)], np.int32))
    width = int(np.max(n[:, 1])) if len(n) else 0
    row = np.zeros(width + 1, np.int32)
    row[0] = index
    row[1:1 + len(sizes)] = sizes
    rows = multihost_utils.process_allgather(row)
    return {str(int(r[0])): [int(x) for x in r[1:1 + int(k)]] for r, k in zip(rows, n[:, 1])}
