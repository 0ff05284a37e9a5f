"""tf.data input for pretraining: prepared shards -> this host's slice -> shuffle -> batch -> mask
-> numpy batches of the batch contract (design.md): input_ids, segment_ids, input_mask [B, S],
masked_lm_positions, masked_lm_ids [B, P] int32, masked_lm_weights [B, P] float32,
next_sentence_labels [B] int32.

Per host. With at least as many shards as processes, each epoch's shard order is shuffled from
(seed, epoch) and host h reads shards h, h + n, ...; with fewer, every host reads all shards and
keeps examples h, h + n, ... of the interleaved stream. Either way the hosts' slices are disjoint
and together cover the data each epoch.

Deterministic: the shard order and the shuffle buffer are seeded from (seed, epoch), dynamic masks
from (seed, epoch, example id) (bertjax.data.masking). Batches run on across epoch boundaries
(nothing is dropped in training). The position is one number, the batches handed out so far, the
same on every host because all hosts step together: `state()` returns {"batches": n}, and
`restore(state)` (or start_batch) rebuilds the stream at that point by working out, from the shard
record counts in metadata.json, which epoch and offset this host is at, and skipping there before
the masking stages (restoring deep into an epoch reads its records once more, but decodes and masks
none of them).

Eval mode (repeat=False): one pass, no shuffle (whatever `shuffle` says), masks of epoch 0 (the
same every time), example-level slicing on every host (balanced to one example), and the final
partial batch dropped, so every host yields exactly `num_batches` batches and none waits on another
in a collective. Dropped: fewer than batch_size examples per host.
"""
from __future__ import annotations

import gc
import json
import os
import re

import numpy as np

from bertjax.data import masking, records
from bertjax.data.tf_runtime import marked_error, tf
from bertjax.errors import UserError
from bertjax.text import check_identity


_BATCH_FUNCTIONS: dict = {}
# Shards this process has checked against their .done (path -> bytes). Each shard is hashed
# once per process, when the input first opens it; restores and eval passes reuse the result.
_VERIFIED: dict[str, int] = {}
_BAD_SHARD = "BERTJAX_BAD_DATA: "
BATCH_KEYS = ("input_ids", "segment_ids", "input_mask", "masked_lm_positions", "masked_lm_ids",
              "masked_lm_weights", "next_sentence_labels")


def read_metadata(data_dir: str) -> dict:
    path = os.path.join(data_dir, "metadata.json")
    if not tf.io.gfile.exists(path):
        if tf.io.gfile.isdir(data_dir):
            raise UserError(f"{data_dir} has no metadata.json: it is not prepared data, or its "
                            "prepare run did not finish; run `bertjax prepare` "
                            f"--output_dir={data_dir} (again: finished shards are kept)")
        raise UserError(f"data directory {data_dir} does not exist; pass the --output_dir of "
                        "`bertjax prepare`")
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg}); run prepare again") from None
    if meta.get("format") != records.FORMAT or meta.get("format_version") != records.VERSION:
        raise UserError(f"{path} is not bertjax prepared data of format version {records.VERSION}; "
                        "prepare it again with this version of bertjax")
    return meta


def check_tokenizer(metadata: dict, identity: dict) -> None:
    """Raises UserError when the data were tokenized with another vocabulary or casing."""
    check_identity(metadata["tokenizer"], identity, "the prepared data")


class PretrainInput:
    """An iterator of numpy batches with a resumable position. See the module docstring."""

    def __init__(self, data_dir: str, *, batch_size: int, process_index: int = 0,
                 process_count: int = 1, seed: int = 0, shuffle: bool = True,
                 shuffle_buffer: int = 10000, repeat: bool = True,
                 max_seq_length: int | None = None, max_predictions_per_seq: int | None = None,
                 masking: str | None = None, cycle_length: int = 16, prefetch: int = 2,
                 with_example_ids: bool = False, start_batch: int = 0):
        meta = read_metadata(data_dir)
        self.metadata = meta
        self.data_dir = data_dir
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size}; use 1 or more (per host)")
        if not 0 <= process_index < process_count:
            raise UserError(f"process_index={process_index} is outside 0..{process_count - 1}")
        self.batch_size = batch_size
        self.process_index = process_index
        self.process_count = process_count
        self.seed = int(seed)
        self.repeat = repeat
        self.shuffle = shuffle and repeat
        self.shuffle_buffer = max(1, int(shuffle_buffer))
        self.cycle_length = cycle_length
        self.prefetch = prefetch
        self.with_example_ids = with_example_ids
        self._resolve_shapes(max_seq_length, max_predictions_per_seq, masking)

        shards = [s for s in meta["shards"] if s["records"] > 0]
        if not shards:
            raise UserError(f"the prepared data in {data_dir} hold no instances; prepare a larger "
                            "corpus")
        self._files = [os.path.join(data_dir, s["file"]) for s in shards]
        self._counts = np.array([s["records"] for s in shards], dtype=np.int64)
        self._check_files()
        self.split_files = repeat and len(self._files) >= process_count
        total = int(self._counts.sum())
        if not self.split_files and total < process_count:
            raise UserError(f"the prepared data hold {total} instances, fewer than the "
                            f"{process_count} processes; prepare more data")
        self.num_batches = None
        if not repeat:
            per_host = min(self._example_share(total, h) for h in range(process_count))
            self.num_batches = per_host // batch_size
            if self.num_batches == 0:
                raise UserError(f"eval data in {data_dir} give each of the {process_count} hosts "
                                f"{per_host} instances, fewer than batch_size={batch_size}; lower "
                                "the batch size or prepare more data")
        self.restore({"batches": start_batch})

    # ---------------------------------------------------------------------------- set-up checks

    def _resolve_shapes(self, s, p, mode) -> None:
        meta = self.metadata
        self.data_seq_length = meta["max_seq_length"]
        self.data_predictions = meta["max_predictions_per_seq"]
        self.seq_length = self.data_seq_length if not s else int(s)
        if self.seq_length < self.data_seq_length:
            raise UserError(f"max_seq_length={self.seq_length} is shorter than the "
                            f"{self.data_seq_length} the data were prepared with; use "
                            f"{self.data_seq_length} or prepare the data again")
        prepared = "static" if meta["static_masks"] else "dynamic"
        self.masking = mode or prepared
        if self.masking not in masking.MODES:
            raise UserError(f"masking={self.masking!r}; use static, dynamic or '' (as prepared)")
        if prepared == "static" and self.masking == "dynamic":
            raise UserError("the data were prepared with static masks (tokens already masked), so "
                            "they cannot be masked dynamically; prepare with --masking=dynamic")
        self.predictions = self.data_predictions if not p else int(p)
        if prepared == "static" and self.predictions < self.data_predictions:
            raise UserError(f"max_predictions_per_seq={self.predictions} is below the "
                            f"{self.data_predictions} the data were masked with (bert #516); use "
                            f"{self.data_predictions} or prepare the data again")
        if not 1 <= self.predictions <= self.seq_length:
            raise UserError(f"max_predictions_per_seq={self.predictions} must be between 1 and "
                            f"max_seq_length={self.seq_length}")
        self._spec = None
        if prepared == "dynamic":
            ids = meta["special_ids"]
            table = None
            if meta["whole_word_masking"]:
                path = os.path.join(self.data_dir, meta["continuation_table"])
                with tf.io.gfile.GFile(path, "rb") as f:
                    table = np.load(f)
            self._spec = masking.MaskSpec(
                max_predictions=self.predictions, rate=meta["masked_lm_prob"],
                whole_word=meta["whole_word_masking"], cls_id=ids["cls"], sep_id=ids["sep"],
                mask_id=ids["mask"],
                replacement_ids=masking.replacement_ids(meta["vocab_size"], ids.values()),
                is_continuation=table,
                # Data prepared before the budget was recorded were counted on the candidates.
                budget=meta.get("mask_budget", "candidates"),
                ngram=int(meta.get("masking_ngram", 1)))

    def _check_files(self) -> None:
        size = self.metadata["record_bytes"]
        for path, count in zip(self._files, self._counts):
            try:
                exists = tf.io.gfile.exists(path)
                actual = tf.io.gfile.stat(path).length if exists else None
            except tf.errors.OpError as e:  # what TensorFlow's GCS retries left: the store failing
                text = " ".join(str(getattr(e, "message", e)).split())[:240]
                raise UserError(f"shard {path} cannot be checked ({type(e).__name__}: {text}); "
                                "check the storage and your access to it, then rerun") from None
            if not exists:
                raise UserError(f"shard {path} listed in metadata.json is missing; copy the whole "
                                "prepared directory or run prepare again")
            if actual != count * size:
                raise UserError(f"shard {path} has {actual} bytes, not the {count * size} of its "
                                f"{count} records: it is truncated or from another run; run prepare "
                                "again")

    # ------------------------------------------------------------------------- host arithmetic

    def _example_share(self, total: int, host: int) -> int:
        n = self.process_count
        return (total - host + n - 1) // n

    def _epoch_files(self, epoch: int) -> np.ndarray:
        """Indices of the shards this host reads in `epoch`, in reading order."""
        order = np.arange(len(self._files))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 0x5F11E5]).permutation(order)
        if self.split_files:
            order = order[self.process_index::self.process_count]
        return order

    def examples_in_epoch(self, epoch: int) -> int:
        """How many examples this host sees in `epoch`."""
        files = self._epoch_files(epoch)
        if self.split_files:
            return int(self._counts[files].sum())
        return self._example_share(int(self._counts.sum()), self.process_index)

    def _locate(self, batches: int) -> tuple[int, int]:
        """(epoch, examples to skip in it) for the first example after `batches` batches."""
        offset = batches * self.batch_size
        if not self.repeat:
            return 0, offset
        epoch = 0
        while True:
            n = self.examples_in_epoch(epoch)
            if offset < n:
                return epoch, offset
            offset -= n
            epoch += 1

    # -------------------------------------------------------------------------------- dataset

    def _epoch_plans(self, first_epoch: int, skip: int):
        epoch = first_epoch
        while True:
            files = [self._files[i] for i in self._epoch_files(epoch)]
            # A per-epoch shuffle seed from (seed, epoch); 63 bits so it fits tf.int64.
            shuffle_seed = int(np.random.default_rng([self.seed, epoch, 0x5B0F]).integers(0, 2**63 - 1))
            yield epoch, np.array(files, dtype=object), shuffle_seed, skip if epoch == first_epoch else 0
            if not self.repeat:
                return
            epoch += 1

    def _dataset(self, first_epoch: int, skip: int) -> tf.data.Dataset:
        size = self.metadata["record_bytes"]
        cycle = max(1, min(self.cycle_length, len(self._files)))
        n, h = self.process_count, self.process_index
        split_files = self.split_files
        shuffle, buffer = self.shuffle, self.shuffle_buffer

        verify = self._verify_shard

        def epoch_dataset(epoch, files, shuffle_seed, to_skip):
            ds = tf.data.Dataset.from_tensor_slices(files)
            # Each file name passes the check before interleave opens the file, so no record of a
            # shard that differs from what prepare recorded is ever read into a batch.
            ds = ds.map(lambda f: tf.py_function(verify, [f], tf.string))
            ds = ds.interleave(
                lambda f: tf.data.FixedLengthRecordDataset(f, size, buffer_size=1 << 18),
                cycle_length=cycle, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
            if not split_files:
                ds = ds.shard(n, h)
            if shuffle:
                ds = ds.shuffle(buffer, seed=shuffle_seed, reshuffle_each_iteration=False)
            ds = ds.skip(to_skip)
            return ds.map(lambda r: (r, epoch))

        plans = tf.data.Dataset.from_generator(
            lambda: self._epoch_plans(first_epoch, skip),
            output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.string),
                              tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)))
        ds = plans.flat_map(tf.autograph.experimental.do_not_convert(epoch_dataset))
        if not self.repeat:
            ds = ds.take(self.num_batches * self.batch_size - skip)
        ds = ds.batch(self.batch_size, drop_remainder=True)
        ds = ds.map(self._batch_function(), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
        ds = ds.prefetch(self.prefetch)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options)

    def _verify_shard(self, path_tensor):
        path = path_tensor.numpy().decode()
        if path not in _VERIFIED:
            count = dict(zip(self._files, self._counts.tolist()))[path]
            try:
                _VERIFIED[path] = records.verify_shard(path, count, self.metadata["record_bytes"],
                                                       tf.io.gfile.GFile)
            except records.ShardError as e:
                raise ValueError(_BAD_SHARD + str(e)) from None
        return path_tensor

    def _batch_function(self):
        """The batch stage as a tf.function, traced once per configuration and process: every
        restore and every input over the same data and settings reuses the graph instead of
        tracing the masking ops again (about half a second each on a busy CPU)."""
        key = (json.dumps(records.layout(self.metadata), sort_keys=True),
               json.dumps(self.metadata["tokenizer"], sort_keys=True), self.data_dir,
               self.metadata["whole_word_masking"], self.metadata["masked_lm_prob"],
               self.metadata.get("mask_budget", "candidates"),
               self.metadata.get("masking_ngram", 1),
               self.seq_length, self.predictions, self.masking, self.repeat, self.seed,
               self.with_example_ids)
        if key not in _BATCH_FUNCTIONS:
            fn = _batch_stage(self.metadata, self.seq_length, self.predictions, self._spec,
                              self.masking == "dynamic" and self.repeat, self.seed,
                              self.with_example_ids)
            _BATCH_FUNCTIONS[key] = tf.function(
                fn, input_signature=(tf.TensorSpec([None], tf.string),
                                     tf.TensorSpec([None], tf.int64)), autograph=False)
        return _BATCH_FUNCTIONS[key]

    # ------------------------------------------------------------------------------- iteration

    def state(self) -> dict:
        return {"batches": self._batches}

    def restore(self, state: dict) -> None:
        batches = int(state["batches"])
        if batches < 0 or (self.num_batches is not None and batches > self.num_batches):
            raise UserError(f"data position {state} is outside this input "
                            f"({self.num_batches} batches); was it saved for other data?")
        self._batches = batches
        epoch, skip = self._locate(batches)
        self._iterator = iter(self._dataset(epoch, skip).as_numpy_iterator())

    def close(self) -> None:
        """Drops the tf.data iterator now: finalised at interpreter exit instead, its Python
        generator stage logs a spurious FAILED_PRECONDITION error."""
        self._iterator = None
        gc.collect()

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        try:
            batch = next(self._iterator)
        except tf.errors.OpError as e:
            refusal = marked_error(e, _BAD_SHARD)
            if refusal is not None:
                raise refusal from None
            text = e.message if hasattr(e, "message") else str(e)
            # What is left after TensorFlow's own retries (its GCS filesystem backs off and
            # retries): a storage outage, or a file removed under a running job.
            first = " ".join(re.sub(r"\{\{[^}]*\}\}", "", text).split())[:300]
            raise UserError(f"reading the prepared data in {self.data_dir} failed "
                            f"({type(e).__name__}: {first}); check the storage and rerun: "
                            "training resumes from the last committed checkpoint") from None
        self._batches += 1
        return batch


def _batch_stage(meta: dict, seq_length: int, predictions: int, spec, epoch_masks: bool,
                 seed: int, with_example_ids: bool):
    """raw records [B] + their epochs [B] -> a batch of the contract. spec is None for static
    data; epoch_masks False masks every epoch as epoch 0 (eval, and masking="static" over
    dynamic data)."""
    data_seq_length = meta["max_seq_length"]
    data_predictions = meta["max_predictions_per_seq"]
    pad_id = meta["special_ids"]["pad"]

    vocab_size = int(meta["vocab_size"])

    def to_batch(raw, epochs):
        f = records.decode_batch_tf(raw, meta)
        s, p = seq_length, predictions
        tokens = f["tokens"]
        # One max per batch, against data whose bytes were changed along with their .done (the
        # hash cannot see that): an id past the vocabulary would index outside the embedding.
        top = tf.reduce_max(tokens)
        with tf.control_dependencies([tf.debugging.assert_less(
                top, vocab_size, message=f"{_BAD_SHARD}a token id in the prepared data is outside "
                f"the vocabulary of {vocab_size}; run `bertjax prepare --verify "
                "--output_dir=DATA` to find the shard, and prepare it again|")]):
            tokens = tf.identity(tokens)
        if s > data_seq_length:
            tokens = tf.pad(tokens, [[0, 0], [0, s - data_seq_length]], constant_values=pad_id)
        pos = tf.range(s, dtype=tf.int32)[None, :]
        length = f["length"][:, None]
        out = {
            "segment_ids": tf.cast((pos >= f["segment_start"][:, None]) & (pos < length), tf.int32),
            "input_mask": tf.cast(pos < length, tf.int32),
            "next_sentence_labels": f["next_sentence_label"],
        }
        if spec is not None:
            mask_epochs = epochs if epoch_masks else tf.zeros_like(epochs)
            out.update(masking.mask_batch_tf(tokens, f["length"], f["example_id"], mask_epochs,
                                             seed, spec))
        else:
            extra = p - data_predictions
            positions, ids = f["masked_positions"], f["masked_ids"]
            if extra:
                positions = tf.pad(positions, [[0, 0], [0, extra]])
                ids = tf.pad(ids, [[0, 0], [0, extra]])
            weights = tf.range(p, dtype=tf.int32)[None, :] < f["num_masked"][:, None]
            out.update(input_ids=tokens, masked_lm_positions=positions, masked_lm_ids=ids,
                       masked_lm_weights=tf.cast(weights, tf.float32))
        if with_example_ids:
            out["example_id"] = f["example_id"]
            out["epoch"] = epochs
        return out

    return to_batch


def make_pretrain_input(data_dir: str, **kwargs) -> PretrainInput:
    """See PretrainInput. batch_size is per host; pass jax.process_index()/process_count()."""
    return PretrainInput(data_dir, **kwargs)
