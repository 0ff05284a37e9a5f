"""The fine-tuning training iterator: in-memory numpy features, a fresh shuffle every epoch.

Every host holds all the features and draws the same permutation from (seed, epoch); global batch
i of an epoch is rows [i*G, (i+1)*G) of that permutation and host k feeds its k-th slice of it.
So the global batches depend only on (seed, batch number): not on how many hosts share the work,
and a run resumed from {"batches": n} sees exactly the batches an unbroken run would have seen.
The ragged tail of each epoch is dropped to keep one static batch shape.
"""
from __future__ import annotations

import numpy as np

from bertjax.errors import UserError


def num_rows(arrays: dict[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values())))


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    if num_examples < global_batch:
        raise UserError(f"the training set has {num_examples} rows (features), fewer than one batch "
                        f"of train.batch_size={global_batch}; lower --config.train.batch_size")
    return num_examples // global_batch


class EpochBatches:
    """Iterator of local (this host's) batches; `state()` is the JSON position to resume from."""

    def __init__(self, arrays: dict[str, np.ndarray], *, local_batch: int, shard: int,
                 num_shards: int, seed: int, start_batch: int = 0):
        self._arrays = arrays
        self._local = int(local_batch)
        self._global = self._local * int(num_shards)
        self._shard = int(shard)
        self._seed = int(seed)
        self._n = num_rows(arrays)
        self._per_epoch = steps_per_epoch(self._n, self._global)
        self._batches = int(start_batch)
        self._epoch = -1
        self._order = np.arange(0)

    def _order_for(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._order = np.random.default_rng([self._seed, epoch]).permutation(self._n)
            self._epoch = epoch
        return self._order

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        epoch, i = divmod(self._batches, self._per_epoch)
        start = i * self._global + self._shard * self._local
        rows = self._order_for(epoch)[start:start + self._local]
        # Sorted rows read memory in order; the batch's content (a set of rows) is unchanged.
        rows = np.sort(rows)
        self._batches += 1
        return {k: v[rows] for k, v in self._arrays.items()}

    def state(self) -> dict:
        return {"batches": self._batches}
