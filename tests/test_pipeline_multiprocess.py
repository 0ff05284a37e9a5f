"""Two real JAX processes (jax.distributed over gloo on this machine) each build the pretraining
input from jax.process_index()/process_count() and report the example ids they see: the slices
are disjoint and cover the data, with more shards than processes (shards split) and with fewer
(examples split), in training and in eval mode. Each process also feeds its batch into one global
jax.Array and sums it under jit, which must equal the sum of the local batches."""
import glob
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from bertjax.bench.data import synthetic_corpus
from bertjax.data import prepare, records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import json, os, sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, pid, out, dirs = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=pid, initialization_timeout=120)
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from bertjax.data import pipeline

result = {"process_index": jax.process_index(), "process_count": jax.process_count()}
mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
sharding = NamedSharding(mesh, P("data"))
for name, path in dirs.items():
    kw = dict(batch_size=4, process_index=jax.process_index(), process_count=jax.process_count(),
              seed=3, with_example_ids=True)
    it = pipeline.make_pretrain_input(path, **kw)
    want = it.examples_in_epoch(0)
    ids, epochs = [], []
    while len(ids) < want:
        b = next(it)
        ids += b["example_id"].tolist()
        epochs += b["epoch"].tolist()
    local = b["input_mask"]
    glob = jax.make_array_from_process_local_data(sharding, local, (8,) + local.shape[1:])
    total = int(jax.jit(lambda x: x.sum())(glob))
    ev = pipeline.make_pretrain_input(path, repeat=False, **kw)
    result[name] = {"split_files": it.split_files,
                    "train": [i for i, e in zip(ids, epochs) if e == 0],
                    "eval": [i for b in ev for i in b["example_id"].tolist()],
                    "eval_batches": ev.num_batches,
                    "local_sum": int(local.sum()), "global_sum": total}
with open(out, "w") as f:
    json.dump(result, f)
jax.distributed.shutdown()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def example_ids(path):
    with open(os.path.join(path, "metadata.json")) as f:
        meta = json.load(f)
    dtype = records.dtype_from_metadata(meta)
    return {int(e) for s in meta["shards"]
            for e in records.read_shard(os.path.join(path, s["file"]), dtype)["example_id"]}


@pytest.mark.slow
def test_two_processes_get_disjoint_covering_slices(tmp_path):
    corpus_glob, vocab = synthetic_corpus(str(tmp_path / "c"), files=3, docs_per_file=10, seed=2)
    dirs = {"many_shards": str(tmp_path / "many"), "one_shard": str(tmp_path / "one")}
    common = dict(vocab=vocab, max_seq_length=32, max_predictions_per_seq=5, masking="dynamic",
                  dupe_factor=1, num_workers=1)
    prepare.prepare(prepare.Options(input=corpus_glob, output_dir=dirs["many_shards"], **common))
    first = sorted(glob.glob(corpus_glob))[0]
    prepare.prepare(prepare.Options(input=first, output_dir=dirs["one_shard"], **common))

    port = free_port()
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    procs = []
    for pid in range(2):
        out = tmp_path / f"p{pid}.json"
        cmd = [sys.executable, "-c", WORKER, str(port), str(pid), str(out), json.dumps(dirs)]
        procs.append((subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True), out))
    results = []
    for proc, out in procs:
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, log[-3000:]
        results.append(json.loads(out.read_text()))

    assert sorted(r["process_index"] for r in results) == [0, 1]
    assert all(r["process_count"] == 2 for r in results)
    for name, path in dirs.items():
        everything = example_ids(path)
        a, b = (r[name] for r in results)
        assert a["split_files"] == b["split_files"] == (name == "many_shards")
        for mode in ("train", "eval"):
            ids_a, ids_b = a[mode], b[mode]
            assert ids_a and ids_b
            assert len(set(ids_a)) == len(ids_a) and len(set(ids_b)) == len(ids_b)
            assert not set(ids_a) & set(ids_b)
            if mode == "train":
                assert set(ids_a) | set(ids_b) == everything
            else:
                # Eval drops only each host's final partial batch, and both yield equally many.
                assert a["eval_batches"] == b["eval_batches"]
                assert len(everything) - len(ids_a) - len(ids_b) < 2 * 4
        assert a["global_sum"] == b["global_sum"] == a["local_sum"] + b["local_sum"]
    assert np.mean([len(r["one_shard"]["train"]) for r in results]) > 0
