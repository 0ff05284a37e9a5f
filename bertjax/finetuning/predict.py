"""Model outputs for every row of an evaluation set, on every host.

Rows are padded with zero rows to whole global batches (one static shape, one compile); each host
feeds its slice of every global batch, and the outputs are gathered back so every host holds all
of them in row order and computes the same metrics. Padding rows are cut off before returning.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from bertjax.finetuning.batches import num_rows
from bertjax.train import mesh as mesh_lib

MODEL_INPUTS = ("input_ids", "segment_ids", "input_mask")

PredictFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


def _to_host(x: jax.Array) -> np.ndarray:
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def make_predict_fn(predict_step: Callable, params, mesh, global_batch: int) -> PredictFn:
    """predict_step: StepFns.predict, (params, global batch) -> dict of [B, ...] outputs."""
    shard, num_shards, local = mesh_lib.host_batch_slice(mesh, int(global_batch))

    def predict(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = num_rows(features)
        total = max(-(-n // global_batch), 1) * global_batch
        inputs = {}
        for k in MODEL_INPUTS:
            arr = np.asarray(features[k], np.int32)
            inputs[k] = np.concatenate([arr, np.zeros((total - n, *arr.shape[1:]), np.int32)])
        on_device: list[dict[str, jax.Array]] = []
        for start in range(0, total, global_batch):
            lo = start + shard * local
            local_rows = {k: v[lo:lo + local] for k, v in inputs.items()}
            # Dispatch every batch before fetching any, so the host never waits per batch.
            on_device.append(predict_step(params, mesh_lib.make_global_batch(local_rows, mesh)))
        return {k: np.concatenate([_to_host(out[k]) for out in on_device])[:n]
                for k in on_device[0]}

    return predict
